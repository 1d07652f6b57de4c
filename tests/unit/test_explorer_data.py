"""The explorer's helpers without HTTP: the deterministic 2-D projection, cluster membership, the word-level diff,
what made a version, the Markdown renderer and the reports directory's path checks."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from _explorer_helpers import make_reports
from hypothesis import given, settings
from hypothesis import strategies as st

from personalens.embed.testing import HashEmbedder
from personalens.service.explorer_data import (
    DiffOp,
    assign_clusters,
    behaviour_map,
    fit_projection,
    persona_set_word_diff,
    timeline_entry,
    version_kind,
    word_diff,
)
from personalens.service.reports import ReportLibrary, ReportNotFound, render_inline, render_markdown
from personalens.service.tenantdb import BehaviourRow
from personalens.store import Persona, PersonaSet

PROPERTIES = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def _set(
    *personas: Persona, version: int = 1, creator: str = "personax-build", embedder: str = "hash-bow-8"
) -> PersonaSet:
    return PersonaSet("u", version, None, creator, "summarize", "h", {}, 0.0, personas, embedder)


def _persona(cluster: int, centroid: list[float], text: str = "t", selected: tuple[str, ...] = ()) -> Persona:
    return Persona(cluster, text, np.asarray(centroid, dtype=np.float32), selected, len(selected), len(selected))


# ---------------------------------------------------------------- projection


def test_projection_is_deterministic_and_sign_fixed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 8))
    a, b = fit_projection(x), fit_projection(x.copy())
    assert np.array_equal(a.points, b.points)
    for row in a.components:
        assert row[np.argmax(np.abs(row))] > 0
    flipped = fit_projection(-x)  # the mirror image gives the same axes, the points mirrored
    assert np.allclose(flipped.components, a.components) and np.allclose(flipped.points, -a.points)
    assert 0 <= a.explained[1] <= a.explained[0] and sum(a.explained) <= 1 + 1e-9
    assert np.allclose(a.apply(x[:3]), a.points[:3])


def test_projection_of_one_row_and_no_rows():
    one = fit_projection(np.ones((1, 4)))
    assert one.points.shape == (1, 2) and np.all(one.points == 0) and one.explained == (0.0, 0.0)
    with pytest.raises(ValueError):
        fit_projection(np.zeros((0, 4)))


# ---------------------------------------------------------------- membership


def test_selected_items_stay_in_their_cluster_others_go_to_the_nearest_centroid():
    personas = _set(_persona(0, [1, 0], selected=("a",)), _persona(5, [0, 1], selected=("b",)))
    vectors = np.array([[0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [0.0, 0.0]])  # "a" sits next to cluster 5's centroid
    got = assign_clusters(["a", "b", "c", "zero"], vectors, personas)
    assert [(g.cluster, g.by) for g in got] == [(0, "selected"), (5, "selected"), (5, "nearest"), (0, "nearest")]
    assert got[0].similarity == pytest.approx(0.0) and got[2].similarity == pytest.approx(0.995, abs=1e-3)
    blind = assign_clusters(["a", "c"], None, personas)  # another embedding space: only the selection is known
    assert [(g.cluster, g.by, g.similarity) for g in blind] == [(0, "selected", None), (None, "none", None)]


def test_map_keeps_the_latest_behaviour_per_item_and_flags_likes():
    embedder = HashEmbedder(8)
    rows = [
        BehaviourRow("u", "1", "i1", "Alpha", {"genres": "x"}, None, 2.0, None, 1.0),
        BehaviourRow("u", "2", "i2", "Beta", {"genres": "y"}, None, 5.0, None, 2.0),
        BehaviourRow("u", "3", "i1", "Alpha", {"genres": "x"}, None, 4.0, None, 3.0),
        BehaviourRow("u", "4", "i3", "Gamma", {"genres": "y"}, None, None, False, 4.0),
    ]
    vectors = embedder.embed(["Alpha; genres: x", "Beta; genres: y"])
    personas = (
        Persona(0, "likes x", vectors[0], ("i1",), 1, 1),
        Persona(1, "likes y", vectors[1], ("i2",), 1, 1),
    )
    persona_set = PersonaSet(
        "u", 1, None, "personax-build", "summarize", "h", {"build": {"like_above": 3.0}}, 0.0, personas, "hash-bow-8"
    )
    out = behaviour_map(persona_set, rows, embedder, target="Beta; genres: y")
    assert [(p["item_id"], p["rating"], p["behaviours"], p["liked"]) for p in out["points"]] == [
        ("i2", 5.0, 1, True),
        ("i1", 4.0, 2, True),
        ("i3", None, 1, False),
    ]
    assert out["target"]["cluster"] == 1 and out["same_space"]
    assert out["target"]["similarities"][1]["score"] == pytest.approx(1.0, abs=1e-4)
    assert out["item_fields"] == ["genres"]
    only_centroids = behaviour_map(persona_set, [], embedder)
    assert only_centroids["points"] == [] and all(c["centroid"] is not None for c in only_centroids["clusters"])


# ---------------------------------------------------------------- word diff


def test_word_diff_marks_inserted_and_deleted_words():
    ops = word_diff("Likes quiet space operas and jazz.", "Likes loud space operas,  and  jazz. New line")
    assert [(o.op, o.text) for o in ops] == [
        ("equal", "Likes "),
        ("delete", "quiet "),
        ("insert", "loud "),
        ("equal", "space "),
        ("delete", "operas "),
        ("insert", "operas,  "),
        ("equal", "and  jazz. "),
        ("insert", "New line"),
    ]
    assert word_diff("same\nwords here", "same words   here") == [DiffOp("equal", "same words   here")]
    assert word_diff("", "") == [] and [o.op for o in word_diff("", "new text")] == ["insert"]


words = st.lists(st.sampled_from(["a", "b", "c", "space", "opera", "jazz", "ünï", "x.", ","]), max_size=25)
spaces = st.sampled_from([" ", "  ", "\n", " \t"])


@PROPERTIES
@given(old=words, new=words, gap=spaces)
def test_word_diff_rebuilds_both_texts(old, new, gap):
    before, after = gap.join(old), " ".join(new)
    ops = word_diff(before, after)
    assert "".join(o.text for o in ops if o.op != "delete").split() == after.split()
    assert " ".join(o.text for o in ops if o.op != "insert").split() == before.split()
    assert all(a.op != b.op for a, b in zip(ops, ops[1:], strict=False))  # runs are merged


def test_persona_set_word_diff_covers_added_removed_and_unchanged_clusters():
    old = _set(_persona(0, [1, 0], "keep this"), _persona(1, [0, 1], "old words gone"), version=1)
    new = _set(_persona(0, [1, 0], "keep this"), _persona(2, [1, 1], "brand new"), version=2, creator="manual-edit")
    out = persona_set_word_diff(old, new)
    assert [(c["cluster"], c["status"], c["inserted_words"], c["deleted_words"]) for c in out["clusters"]] == [
        (0, "unchanged", 0, 0),
        (1, "removed", 0, 3),
        (2, "added", 2, 0),
    ]
    assert (out["inserted_words"], out["deleted_words"]) == (2, 3)
    assert out["from"]["kind"] == "build" and out["to"]["kind"] == "manual"


# ---------------------------------------------------------------- timeline


@pytest.mark.parametrize(
    ("creator", "method", "note", "kind"),
    [
        ("personax-build", "summarize", "", "build"),
        ("personax-build", "reflect", "", "build"),
        ("deeper-refine", "deeper:verified-refine", "round 2: ...", "refinement"),
        ("rollback", "summarize", "rollback to version 1", "rollback"),
        ("service-rollback", "deeper:refine", "", "rollback"),
        ("agent-alignment", "test-time", "", "alignment"),
        ("personaagent", "align:dpo-free", "", "alignment"),
        ("personaagent", "agent-align", "alignment iteration 1: ...", "alignment"),
        ("personaagent", "agent-init", "", "build"),
        ("manual-edit", "summarize", "", "manual"),
        ("someone", "other", "", "other"),
    ],
)
def test_version_kind(creator, method, note, kind):
    assert version_kind(creator, method, note) == kind


def test_timeline_entry_of_an_agent_alignment_step():
    meta = {"iteration": 2, "error": None, "feedback": ["too vague"], "words_before": 40, "words_after": 44}
    persona = Persona(0, "a b", np.ones(4, dtype=np.float32), (), 1, 0, meta=meta)
    persona_set = PersonaSet("u", 4, 3, "personaagent", "agent-align", "h", {}, 0.0, (persona,), "e", "alignment")
    out = timeline_entry(persona_set, is_current=True)
    assert (out["kind"], out["label"], out["errors"]) == ("alignment", "alignment iteration 2", None)
    assert out["step"] == {"iteration": 2, "error": None, "feedback": ["too vague"]}


def test_timeline_entry_of_a_refinement_round():
    meta = {
        "strategy": "refine",
        "round": 2,
        "window": 2,
        "committed": False,
        "mae_before": {"previous": 1.0, "current": 1.5, "future": None},
        "mae_after": {"previous": 0.75, "current": 1.25, "future": None},
        "rewards": {"r_total": 0.5, "r_prev": 0.25},
        "gate": {"committed": False, "chosen": 1, "reason": "no candidate lowered the error", "old_error": 2.5},
    }
    persona = Persona(0, "a b c", np.ones(4, dtype=np.float32), (), 3, 3, meta=meta)
    persona_set = PersonaSet(
        "u",
        3,
        2,
        "deeper-refine",
        "deeper:verified-refine",
        "h",
        {"refine": {"strategy": "refine"}},
        0.0,
        (persona,),
        "e",
    )
    out = timeline_entry(persona_set, is_current=False)
    assert out["kind"] == "refinement" and out["label"] == "round 2: refine" and out["words"] == 3
    assert out["errors"] == {
        "metric": "MAE",
        "before": {"previous": 1.0, "current": 1.5, "future": None},
        "after": {"previous": 0.75, "current": 1.25, "future": None},
    }
    assert out["step"]["committed"] is False and out["step"]["gate"]["reason"].startswith("no candidate")
    assert out["step"]["rewards"] == {"r_total": 0.5, "r_prev": 0.25}
    assert out["config"] == {"refine.strategy": "refine"}


# ---------------------------------------------------------------- Markdown

ALLOWED_TAGS = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "div", "ul", "ol", "li",
    "pre", "code", "strong", "em", "a", "span", "img", "hr", "blockquote",
}  # fmt: skip
ALLOWED_ATTRS = {"class", "alt", "data-report-file", "href", "rel", "target"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, attrs))


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.seen


def test_markdown_renders_the_report_forms():
    text = """# Title *one*

Intro with `code <b>`, **bold**, _em_, \\*not em\\*,
a [link](https://example.org/x?a=1&b=2) and [bad](javascript:alert(1)).

| Method | Value | Note |
|:---|---:|:---:|
| A \\| B | 1.5 | **best** |
| C | 2 |

- one
- two
  continued
1. first
2. second

```
<raw> & code
```

> quoted *text*

---
![fig](fig.png) ![gone](nope.png)
"""
    html = render_markdown(text, resolve_image=lambda src: src if src == "fig.png" else None)
    assert "<h1>Title <em>one</em></h1>" in html
    assert "<code>code &lt;b&gt;</code>" in html and "<strong>bold</strong>" in html and "<em>em</em>" in html
    assert "*not em*" in html
    assert '<a href="https://example.org/x?a=1&amp;b=2" rel="noopener noreferrer" target="_blank">link</a>' in html
    assert '<span class="link">bad</span>' in html and "javascript" not in html
    assert '<th class="al-l">Method</th><th class="al-r">Value</th><th class="al-c">Note</th>' in html
    assert '<td class="al-l">A | B</td>' in html and '<td class="al-c"></td>' in html  # short row padded
    assert "<ul><li>one</li><li>two continued</li></ul>" in html
    assert "<ol><li>first</li><li>second</li></ol>" in html
    assert "<pre><code>&lt;raw&gt; &amp; code</code></pre>" in html
    assert "<blockquote><p>quoted <em>text</em></p></blockquote>" in html and "<hr>" in html
    assert '<img class="report-img" alt="fig" data-report-file="fig.png">' in html
    assert '<span class="missing-image">[image: gone]</span>' in html


def test_markdown_renders_a_real_evaluation_report():
    report = Path(__file__).resolve().parents[2] / "benchmarks" / "personax" / "results" / "ml50" / "results.md"
    if not report.is_file():
        pytest.skip("the repository's ml50 report is not here")
    html = render_markdown(report.read_text(encoding="utf-8"), resolve_image=lambda src: src)
    assert html.count("<table>") >= 2 and "<h1>" in html and 'data-report-file="fig3_ratio' in html
    assert {tag for tag, _ in _tags(html)} <= ALLOWED_TAGS


hostile = st.text(
    alphabet=st.sampled_from(list("<>&\"'`*_[]()!|#-:/\\ \n=ajsvscript onerror=alert(1) http://x.y")), max_size=200
)


@PROPERTIES
@given(text=hostile)
def test_markdown_never_emits_markup_of_its_own_input(text):
    html = render_markdown(text, resolve_image=lambda src: "fig.png" if src == "fig.png" else None)
    for tag, attrs in _tags(html):
        assert tag in ALLOWED_TAGS, (tag, html)
        for name, value in attrs:
            assert name in ALLOWED_ATTRS, (name, html)
            if name == "href":
                assert value is not None and value.lower().startswith(("http://", "https://"))
                assert not any(c in value for c in "\"'<> ")
    assert "<script" not in html.lower()


def test_inline_escapes_quotes_in_attributes():
    html = render_inline('![a" onerror="x](fig.png)', resolve_image=lambda src: src)
    assert html == '<img class="report-img" alt="a&quot; onerror=&quot;x" data-report-file="fig.png">'


# ---------------------------------------------------------------- reports directory


def test_report_library_lists_reads_and_guards_paths(tmp_path):
    library = ReportLibrary(make_reports(tmp_path / "reports"))
    assert [r.name for r in library.list()] == ["nested/deeper", "toy"]
    info, html = library.read("toy")
    assert info.markdown == "results.md" and "<table>" in html
    path, content_type = library.file("toy", "fig3_ratio.png")
    assert path.name == "fig3_ratio.png" and content_type == "image/png"
    for name in ("../reports/toy", "toy/../toy", ".hidden", "", "toy/", "nested"):
        with pytest.raises(ReportNotFound):
            library.folder(name)
    for file in ("../secret.png", "rows.jsonl", "sub/../fig3_ratio.png"):
        with pytest.raises(ReportNotFound):
            library.file("toy", file)
    assert ReportLibrary(tmp_path / "absent").list() == []


def test_report_library_on_a_folder_that_is_itself_a_report(tmp_path):
    (tmp_path / "results.md").write_text("No heading here.\n", encoding="utf-8")
    library = ReportLibrary(tmp_path)
    (only,) = library.list()
    assert only.name == "." and only.title == "."
    assert "No heading" in library.read(".")[1]
