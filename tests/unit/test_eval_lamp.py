"""LaMP tasks for the agent (answer spaces, memories, alignment batches, official metrics) and the
``eval lamp`` runner end to end with the scripted double."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from personalens.cli import app
from personalens.data.lamp import LampExample, LampProfileEntry, load_lamp
from personalens.embed.testing import HashEmbedder
from personalens.errors import ConfigError, DataError
from personalens.evaluation.lamp import (
    AGENT_VARIANTS,
    LampEvaluation,
    parse_lamp_config,
    scaling_overrides,
    scaling_points,
    select_examples,
    write_lamp_report,
)
from personalens.evaluation.lamp_tasks import LAMP2M_TAGS, get_task, lamp_metrics, official_rating, task_number
from personalens.llm.base import ChatRequest
from personalens.llm.testing import ScriptedChatModel
from personalens.store import PersonaStore

DAY = 86400


def _write_lamp3(tmp_path: Path, users: int = 4, entries: int = 6) -> tuple[Path, Path]:
    questions, golds = [], []
    for u in range(users):
        profile = [
            {
                "id": f"{u}-{i}",
                "text": f"review {i} of user {u}: " + ("great value loved it" if i % 2 else "broke quickly, poor"),
                "score": "5" if i % 2 else "2",
                "date": f"2020-01-{i + 1:02d}",
            }
            for i in range(entries)
        ]
        questions.append(
            {
                "id": f"q{u}",
                "input": f"What score from 1 to 5 does this review give? review: loved it, great value {u}",
                "profile": profile,
            }
        )
        golds.append({"id": f"q{u}", "output": "5" if u % 2 else "4"})
    q, o = tmp_path / "questions.json", tmp_path / "outputs.json"
    q.write_text(json.dumps(questions))
    o.write_text(json.dumps({"task": "LaMP_3", "golds": golds}))
    return q, o


def _responder(request: ChatRequest) -> str:
    head = request.messages[0].content
    if head.startswith("You study"):
        return "- Gives five stars to good value.\n- Punishes products that break quickly."
    if head.startswith("You review"):
        return "The user rewards value with high scores."
    if head.startswith("You maintain"):
        return "- Gives five stars to good value.\n- Punishes products that break quickly.\n- Praise means 5."
    if "Action:" in head:  # an agent with the text protocol
        if any(m.content.startswith("Observation:") for m in request.messages if m.role == "user"):
            return "Thought: enough\nFinal Answer: 5"
        return "Thought: check past reviews\nAction: memory_search: great value"
    return "5"


def _model() -> ScriptedChatModel:
    return ScriptedChatModel(_responder, next_tokens=lambda r: {"5": 0.6, "4": 0.3, "2": 0.1})


class Wiki:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def summary(self, topic: str) -> Any:
        self.topics.append(topic)
        return None


def _report_run(tmp_path: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Path]:
    """Write hand-made rows and a config as a finished run and build its report."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "config.json").write_text(json.dumps(config))
    return write_lamp_report(out)


# ---------------------------------------------------------------- tasks


def test_task_numbers_and_answer_spaces() -> None:
    assert task_number("LaMP_2M") == "2M" and task_number("lamp-2") == "2M" and task_number("3") == "3"
    with pytest.raises(DataError):
        task_number("LaMP_4")
    with pytest.raises(DataError):
        task_number(None)
    t2 = get_task("LaMP_2M")
    ex = LampExample("1", "Which tag? tags: [sci-fi, comedy, true story] description: a film", ())
    assert t2.space(ex).labels == ("sci-fi", "comedy", "true story")
    assert t2.space(LampExample("2", "no list here", ())).labels == LAMP2M_TAGS
    assert t2.search_query(ex.input) == "a film"
    assert get_task("LaMP_3").space().choices == ("1", "2", "3", "4", "5")
    t1 = get_task("LaMP_1")
    assert t1.search_query('the paper with the title "Deep nets" which reference') == "Deep nets"


def test_memories_and_alignment_batches_keep_time_order() -> None:
    from datetime import UTC, datetime

    entries = tuple(
        LampProfileEntry(f"e{i}", {"text": f"t{i}", "score": str(i % 5 + 1)}, datetime(2020, 1, 10 - i, tzinfo=UTC))
        for i in range(5)
    )
    task = get_task("LaMP_3")
    records = task.memory_records(LampExample("q", "review: x", entries))
    assert [r.memory_id for r in records] == ["e0", "e1", "e2", "e3", "e4"]
    batch = task.alignment_batch(records, 3)
    assert [b.memory_id for b in batch] == ["e2", "e1", "e0"]  # the latest three, oldest first
    assert batch[-1].truth == "1" and "review: t0" in batch[-1].question
    bad = LampExample("q", "x", (LampProfileEntry("e", {"text": "t"}),))
    with pytest.raises(DataError, match="score"):
        task.memory_records(bad)


def test_lamp1_alignment_builds_citation_choices() -> None:
    task = get_task("LaMP_1")
    entries = tuple(LampProfileEntry(f"p{i}", {"title": f"Title {i}", "abstract": "abs"}) for i in range(3))
    records = task.memory_records(LampExample("q", "x", entries))
    batch = task.alignment_batch(records, 2, other_titles=["Foreign title"])
    assert len(batch) == 2 and {b.truth for b in batch} == {"[1]", "[2]"}
    assert all("Foreign title" in b.question for b in batch)
    assert task.alignment_batch(records, 2) == []  # no negatives available


def test_history_reference_takes_the_most_frequent_earlier_answer_and_the_latest_on_a_tie() -> None:
    from personalens.agent.baselines import history_majority
    from personalens.store.models import MemoryRecord

    tags = get_task("LaMP_2M").space(LampExample("q", "Which tag?", ()))
    records = [  # listed out of time order on purpose
        MemoryRecord("a", "m1", "comedy", 300.0),
        MemoryRecord("b", "m2", "sci-fi", 100.0),
        MemoryRecord("c", "m3", "Sci-Fi", 200.0),  # matched case-insensitively
        MemoryRecord("d", "m4", "comedy", 50.0),
        MemoryRecord("e", "m5", "not a tag", 400.0),  # outside the label set: ignored
    ]
    answer = history_majority(records, tags)
    assert answer.answer == "comedy" and answer.parsed  # 2 comedy vs 2 sci-fi: comedy was given last (t = 300)
    assert answer.scores == {"comedy": 0.5, "sci-fi": 0.5} and answer.usage.calls == 0
    assert history_majority(records[1:], tags).answer == "sci-fi"
    assert not history_majority(records[4:], tags).parsed  # nothing usable: unreadable, not a guess
    ratings = get_task("LaMP_3").space(LampExample("q", "Score?", ()))
    rated = [MemoryRecord(str(i), "r", v, float(i)) for i, v in enumerate(["5", "4", "5", "1"])]
    answer = history_majority(rated, ratings)
    assert answer.answer == "5" and answer.expectation == pytest.approx(15 / 4)
    with pytest.raises(ValueError, match="closed answer space"):
        from personalens.agent.loop import AnswerSpace

        history_majority(rated, AnswerSpace("free"))


def test_history_reference_runs_without_the_model_and_is_refused_on_lamp1(tmp_path: Path) -> None:
    q, o = _write_lamp3(tmp_path, users=2)  # profiles alternate 2 and 5, three each; the last one is a 5
    config = parse_lamp_config({"data": {"questions": str(q), "outputs": str(o)}, "methods": ["history"]})
    model = _model()
    summary = LampEvaluation(config, tmp_path / "run", model=model, embedder=HashEmbedder()).run()
    assert summary.rows_written == 2 and not model.calls
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert [(r["pred"], r["expectation"], r["requests"]) for r in rows] == [("5", 3.5, 0), ("5", 3.5, 0)]
    report = write_lamp_report(tmp_path / "run")["markdown"].read_text()
    assert "| Metric | History (no LLM) |" in report and "| MAE ↓ | 0.500 |" in report  # golds 4 and 5
    lamp1 = tmp_path / "lamp1.json"
    lamp1.write_text(
        json.dumps(
            [
                {
                    "id": "c0",
                    "input": 'For an author who has written the paper with the title "A", which reference is related? '
                    'Just answer with [1] or [2] without explanation. [1]: "B" [2]: "C"',
                    "profile": [{"id": f"p{i}", "title": f"T{i}", "abstract": "x"} for i in range(5)],
                }
            ]
        )
    )
    (tmp_path / "lamp1-out.json").write_text(json.dumps({"task": "LaMP_1", "golds": [{"id": "c0", "output": "[1]"}]}))
    config = parse_lamp_config(
        {"data": {"questions": str(lamp1), "outputs": str(tmp_path / "lamp1-out.json")}, "methods": ["history"]}
    )
    with pytest.raises(ConfigError, match="LaMP-1"):
        LampEvaluation(config, tmp_path / "run1", model=model, embedder=HashEmbedder()).run()


def test_official_metrics() -> None:
    assert official_rating("4", 5.0) == 4.0
    assert official_rating("five", 5.0) == 1.0 and official_rating(None, 1.0) == 5.0
    task3 = get_task("LaMP_3")
    m = lamp_metrics(task3, ["5", "1"], ["4", None])
    assert m["mae"] == pytest.approx((1 + 4) / 2) and m["unparsable"] == 0.5
    m = lamp_metrics(task3, ["5", "1"], ["4", None], unparsable="drop", expectations=[4.5, 1.5])
    assert m["mae"] == pytest.approx(1.0) and m["mae_expected"] == pytest.approx(0.5)
    task2 = get_task("LaMP_2M")
    m = lamp_metrics(task2, ["comedy", "action"], ["comedy", None], labels=["comedy", "action", "romance"])
    assert m["accuracy"] == 0.5 and m["f1"] == pytest.approx((1.0 + 0 + 0) / 3)


# ---------------------------------------------------------------- config


def test_config_parsing(tmp_path: Path) -> None:
    raw = {
        "data": {"questions": "q.json", "outputs": "o.json", "max_examples": 3},
        "methods": ["prompt", "rag-2", "personaagent"],
        "agent": {"batch_size": 2},
        "scaling": {"batch_sizes": [1, 5], "k": [8]},
    }
    config = parse_lamp_config(raw, source="x.toml", base=tmp_path)
    assert config.questions == str(tmp_path / "q.json")
    assert config.all_methods() == [
        "prompt",
        "rag-2",
        "personaagent",
        "personaagent[n=1]",
        "personaagent[n=5]",
        "personaagent[k=8]",
    ]
    assert scaling_overrides("n=5,E=2,k=8") == {"batch_size": 5, "iterations": 2, "k": 8}
    for bad in (
        {"data": {}},
        {"data": {"questions": "q"}, "methods": ["telepathy"]},
        {"data": {"questions": "q"}, "agent": {"iterations": 0}},
        {"data": {"questions": "q"}, "agent": {"colour": 1}},
        {"data": {"questions": "q", "sample": "best"}},
    ):
        with pytest.raises(ConfigError):
            parse_lamp_config(bad, source="x.toml")


def test_example_selection_is_stable(tmp_path: Path) -> None:
    q, o = _write_lamp3(tmp_path, users=6)
    examples = load_lamp(q, o)
    config = parse_lamp_config({"data": {"questions": str(q), "max_examples": 3, "sample": "random"}})
    bigger = parse_lamp_config({"data": {"questions": str(q), "max_examples": 5, "sample": "random"}})
    small, large = select_examples(examples, config), select_examples(examples, bigger)
    assert [e.id for e in small] == [e.id for e in large[:3]]


# ---------------------------------------------------------------- runner


def test_runner_writes_every_method_and_resumes_without_llm_calls(tmp_path: Path) -> None:
    q, o = _write_lamp3(tmp_path)
    raw = {
        "name": "tiny",
        "data": {"questions": str(q), "outputs": str(o), "max_examples": 3},
        "scaling": {"batch_sizes": [1]},
    }
    config = parse_lamp_config(raw)
    out = tmp_path / "run"
    model, wiki = _model(), Wiki()
    summary = LampEvaluation(config, out, model=model, embedder=HashEmbedder(), wikipedia=wiki).run()
    methods = config.all_methods()
    assert summary.rows_written == 3 * len(methods) and not summary.failures
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    by = {(r["method"], r["example"]): r for r in rows}
    pa = by[("personaagent", "q0")]
    assert pa["tools"][0] == "memory_search" and pa["alignment"][0]["of"] == 3
    assert pa["pred"] == "5" and pa["abs_error"] == 1.0 and pa["scores"]["5"] == pytest.approx(0.6)
    assert by[("personaagent[n=1]", "q0")]["alignment"][0]["of"] == 1
    assert "alignment" not in by[("no-alignment", "q0")] and by[("no-persona", "q0")].get("persona_version") is None
    assert by[("no-action", "q0")]["tools"] == [] and by[("rag-4", "q1")]["memories"]
    with PersonaStore(out / "agent.sqlite") as store:
        assert store.count_memories("q0") == 6
        methods_seen = [v.method for v in store.versions("q0")]
        assert methods_seen.count("agent-align") == 4  # full, n=1, no-memory, no-action
    calls = len(model.calls)
    again = LampEvaluation(config, out, model=model, embedder=HashEmbedder(), wikipedia=wiki).run()
    assert again.rows_written == 0 and again.rows_skipped == 3 * len(methods) and len(model.calls) == calls
    paths = write_lamp_report(out)
    report = paths["markdown"].read_text()
    assert "Table 2 layout" in report and "Table 3 layout" in report and "Test-time scaling" in report
    assert "| MAE ↓ |" in report and "w/o memory" in report and "paired bootstrap" in report
    summary_json = json.loads(paths["json"].read_text())
    assert summary_json["examples"] == 3
    assert summary_json["methods"]["prompt"]["metrics"]["mae"] == pytest.approx(
        sum(abs(5 - float(g)) for g in ("4", "5", "4")) / 3
    )


def test_changed_settings_make_new_rows_and_the_report_uses_only_current_ones(tmp_path: Path) -> None:
    q, o = _write_lamp3(tmp_path)
    base = {"data": {"questions": str(q), "outputs": str(o), "max_examples": 2}, "methods": ["prompt", "rag-1"]}
    out = tmp_path / "run"
    LampEvaluation(parse_lamp_config(base), out, model=_model(), embedder=HashEmbedder()).run()
    changed = {**base, "agent": {"max_steps": 3}}
    summary = LampEvaluation(parse_lamp_config(changed), out, model=_model(), embedder=HashEmbedder()).run()
    assert summary.rows_written == 4
    rows = (out / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 8
    assert json.loads(write_lamp_report(out)["json"].read_text())["examples"] == 2


def test_a_persona_reused_from_the_store_still_counts_the_requests_that_built_it(tmp_path: Path) -> None:
    q, o = _write_lamp3(tmp_path, users=2)
    base = {"data": {"questions": str(q), "outputs": str(o)}, "methods": ["personaagent"]}
    out = tmp_path / "run"
    model = _model()
    LampEvaluation(parse_lamp_config(base), out, model=model, embedder=HashEmbedder()).run()
    first = {r["example"]: r for r in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    built_with = len(model.calls)
    # a run of the same settings stopped after the personas were aligned but before their rows were written
    (out / "rows.jsonl").write_text("")
    LampEvaluation(parse_lamp_config(base), out, model=model, embedder=HashEmbedder()).run()
    second = {r["example"]: r for r in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    assert set(second) == {"q0", "q1"}
    answering = len(model.calls) - built_with
    assert 0 < answering < built_with / 2  # no semantic memory or alignment this time
    for ex, row in second.items():
        assert row["persona_reused"] is True and "persona_reused" not in first[ex]
        assert "alignment" not in row and row["persona_version"] == first[ex]["persona_version"]
        assert row["requests"] == first[ex]["requests"] > 6
        assert row["usage"]["calls"] + row["usage"]["cache_hits"] < row["requests"]


def test_other_settings_build_their_own_persona_instead_of_reusing_one(tmp_path: Path) -> None:
    """Any setting can change what alignment simulates, so a persona aligned under other settings is not reused."""
    q, o = _write_lamp3(tmp_path, users=1)
    base = {"data": {"questions": str(q), "outputs": str(o)}, "methods": ["personaagent"]}
    out = tmp_path / "run"
    LampEvaluation(parse_lamp_config(base), out, model=_model(), embedder=HashEmbedder()).run()
    changed = {**base, "agent": {"max_steps": 5}}
    LampEvaluation(parse_lamp_config(changed), out, model=_model(), embedder=HashEmbedder()).run()
    first, second = map(json.loads, (out / "rows.jsonl").read_text().splitlines())
    assert first["digest"] != second["digest"] and "persona_reused" not in second
    assert second["alignment"] and second["persona_version"] > first["persona_version"]
    with PersonaStore(out / "agent.sqlite") as store:
        assert [v.method for v in store.versions("q0")] == ["agent-init", "agent-align"] * 2


def test_failures_are_reported_per_example(tmp_path: Path) -> None:
    q, o = _write_lamp3(tmp_path, users=2)
    data = json.loads(q.read_text())
    del data[1]["profile"][0]["score"]
    q.write_text(json.dumps(data))
    config = parse_lamp_config({"data": {"questions": str(q), "outputs": str(o)}, "methods": ["prompt"]})
    summary = LampEvaluation(config, tmp_path / "run", model=_model(), embedder=HashEmbedder()).run()
    assert summary.rows_written == 1 and list(summary.failures) == ["prompt/q1"]
    assert "score" in summary.failures["prompt/q1"]


def test_cli_eval_lamp_against_a_loopback_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command end to end through the OpenAI-compatible backend on a real loopback socket."""
    from _stub_server import StubServer

    def handler(path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if body.get("logprobs"):
            top = [{"token": t, "logprob": lp} for t, lp in (("5", -0.5), ("4", -1.2), ("1", -3.0))]
            content = [{"token": "5", "logprob": -0.5, "top_logprobs": top}]
            return 200, {}, {"choices": [{"message": {"content": "5"}, "logprobs": {"content": content}}]}
        return 200, {}, {"choices": [{"message": {"content": "Final Answer: 5"}}], "usage": {"prompt_tokens": 3}}

    q, o = _write_lamp3(tmp_path, users=2)
    toml = tmp_path / "lamp.toml"
    toml.write_text(
        f'name = "cli"\nmethods = ["prompt", "rag-1"]\n[data]\nquestions = "{q}"\noutputs = "{o}"\nmax_examples = 2\n'
    )
    with StubServer(handler) as server:
        monkeypatch.setenv("PERSONALENS_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
        result = CliRunner().invoke(app, ["--json", "eval", "lamp", str(toml), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["run"]["rows_written"] == 4
    assert (tmp_path / "out" / "report.md").is_file()


def test_react_reads_the_offline_encyclopedia_through_the_loopback_server(tmp_path: Path) -> None:
    """[tools] wikipedia_pages: pages served by RecordedWikipedia on 127.0.0.1, read by the real HTTP client."""
    from personalens.agent.wikiserver import WikiPage, write_pages_jsonl

    tags = "[sci-fi, comedy, romance]"
    questions = [
        {
            "id": "q0",
            "input": f"Which tag? tags: {tags} description: Alien (1979). Genres: Horror, Sci-Fi.",
            "profile": [
                {
                    "id": f"p{i}",
                    "description": f"Film {i}. Genres: Sci-Fi.",
                    "tag": "sci-fi",
                    "date": f"2001-01-0{i + 1}",
                }
                for i in range(5)
            ],
        }
    ]
    q, o, pages = tmp_path / "q.json", tmp_path / "o.json", tmp_path / "pages.jsonl"
    q.write_text(json.dumps(questions))
    o.write_text(json.dumps({"task": "LaMP_2M", "golds": [{"id": "q0", "output": "sci-fi"}]}))
    write_pages_jsonl([WikiPage("Alien (film)", "Alien is a 1979 science fiction horror film.", "1979 film")], pages)

    def respond(request: ChatRequest) -> str:
        users = [m.content for m in request.messages if m.role == "user"]
        if not users[-1].startswith("Observation:"):
            return "Thought: what is it?\nAction: wikipedia: Alien (film)"
        return "Final Answer: sci-fi"

    model = ScriptedChatModel(respond, next_tokens=lambda r: {"sci": 0.9, "comedy": 0.05, "romance": 0.05})
    raw = {
        "data": {"questions": str(q), "outputs": str(o)},
        "methods": ["react"],
        "tools": {"wikipedia_pages": str(pages)},
    }
    config = parse_lamp_config(raw, source=str(tmp_path / "x.toml"))
    summary = LampEvaluation(config, tmp_path / "run", model=model, embedder=HashEmbedder()).run()
    assert summary.rows_written == 1, summary.failures
    row = json.loads((tmp_path / "run" / "rows.jsonl").read_text())
    assert "trace" not in row and row["step_kinds"][0] == {"kind": "action", "tool": "wikipedia", "ok": True}
    trace = json.loads((tmp_path / "run" / "traces.jsonl").read_text())
    assert (trace["method"], trace["example"], trace["digest"]) == ("react", "q0", row["digest"])
    wiki = [s for s in trace["trace"] if s.get("tool") == "wikipedia"]
    assert wiki and "1979 science fiction horror film" in wiki[0]["observation"]
    assert row["tools"] == ["wikipedia"] and row["requests"] >= 2
    rows_text = (tmp_path / "run" / "rows.jsonl").read_text()
    assert "science fiction" not in rows_text and "Film 1" not in rows_text  # the rows quote no data


def test_scaling_report_puts_each_axis_in_order_around_the_default_with_its_change(tmp_path: Path) -> None:
    """Hand-written rows with known errors: the table and the figure follow n, E and k in order, the default run is
    the point at n = 3 / E = 1 / k = 4, and Δ is the variant minus the default."""
    errors = {  # absolute errors on three examples
        "personaagent": [1.0, 0.0, 1.0],
        "personaagent[n=1]": [1.0, 1.0, 1.0],
        "personaagent[n=5]": [0.0, 0.0, 1.0],
        "personaagent[E=2]": [1.0, 0.0, 0.0],
        "personaagent[k=8]": [0.0, 0.0, 0.0],
        "personaagent[n=5,k=8]": [1.0, 0.0, 1.0],
    }
    rows = [
        {
            "method": m,
            "example": f"q{i}",
            "digest": "d",
            "gold": "4",
            "pred": str(4 + int(err)),
            "parsed": True,
            "abs_error": err,
            "usage": {"calls": 2, "cache_hits": 0, "total_tokens": 10},
            "seconds": 1.0,
        }
        for m, errs in errors.items()
        for i, err in enumerate(errs)
    ]
    config = {
        "name": "scaling",
        "task": "LaMP-3",
        "methods_all": list(errors),
        "batch_size": 3,
        "iterations": 1,
        "k": 4,
    }
    paths = _report_run(tmp_path, rows, config)
    summary = json.loads(paths["json"].read_text())
    series = scaling_points(summary, config)
    assert [(p["value"], p["method"]) for p in series["n"]] == [
        (1, "personaagent[n=1]"),
        (3, "personaagent"),
        (5, "personaagent[n=5]"),
    ]
    assert [p["value"] for p in series["E"]] == [1, 2] and [p["value"] for p in series["k"]] == [4, 8]
    assert series["k"][1]["metrics"]["mae"] == 0.0 and series["n"][1]["vs_default"] is None
    se = summary["methods"]["personaagent"]["primary_se"]
    assert se == pytest.approx((1 / 3) ** 0.5 / 3**0.5)  # sample sd of (1, 0, 1) over √3
    report = paths["markdown"].read_text()
    assert "| n = 3 (default) | 0.667 |" in report
    assert "-0.000" not in report
    assert "| n = 1 | 1.000 |" in report and "| +0.333 |" in report.split("| n = 1 |")[1].splitlines()[0]
    assert "| k = 8 | 0.000 |" in report and "| -0.667 |" in report.split("| k = 8 |")[1].splitlines()[0]
    assert "| [n=5,k=8] | 0.667 |" in report  # a combined setting is listed but belongs to no axis
    lines = [line for line in report.splitlines() if line.startswith("| n = ") or line.startswith("| E = ")]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    if "scaling_plot" in paths:  # matplotlib installed
        assert (
            paths["scaling_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            and "![test-time scaling](scaling.png)" in report
        )


def test_only_tool_using_methods_on_a_task_with_an_action_label_get_new_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool keyword is "Tool" when "action" is an answer (LaMP-2M): the rows of the methods whose prompts it
    changes are redone, every other row (LaMP-3, the methods without tools) keeps its digest."""
    import personalens.evaluation.lamp as lamp_module

    q, _ = _write_lamp3(tmp_path)
    run = LampEvaluation(
        parse_lamp_config({"data": {"questions": str(q)}}), tmp_path, model=_model(), embedder=HashEmbedder()
    )
    methods = ("history", "prompt", "rag-4", "pag-4", "membank", "react", *AGENT_VARIANTS, "personaagent[k=1]")
    now = {(t, m): run.method_digest(m, get_task(t)) for t in ("3", "2M") for m in methods}
    monkeypatch.setattr(lamp_module, "tool_keyword", lambda _answers: "Action")
    before = {(t, m): run.method_digest(m, get_task(t)) for t in ("3", "2M") for m in methods}
    changed = {key for key in now if now[key] != before[key]}
    tool_users = {"react", "personaagent", "no-alignment", "no-persona", "no-memory", "personaagent[k=1]"}
    assert changed == {("2M", m) for m in tool_users}


def test_report_counts_each_label_as_gold_and_as_each_methods_answer(tmp_path: Path) -> None:
    """A tagging report lists, per label, the gold count and each method's answers with its hits; unreadable answers
    are not counted, and a label no method gives still appears when it is a gold answer."""
    preds = {  # gold: comedy, comedy, based on a book
        "history": ["comedy", "comedy", "based on a book"],
        "prompt": ["sci-fi", "comedy", None],  # None: unreadable
    }
    golds = ["comedy", "comedy", "based on a book"]
    rows = [
        {
            "method": m,
            "example": f"q{i}",
            "digest": "d",
            "gold": golds[i],
            "pred": pred if pred is not None else "Answer: drama",
            "parsed": pred is not None,
            "correct": pred == golds[i],
            "usage": {"calls": 1, "cache_hits": 0, "total_tokens": 10},
            "seconds": 1.0,
        }
        for m, ps in preds.items()
        for i, pred in enumerate(ps)
    ]
    paths = _report_run(tmp_path, rows, {"name": "tags", "task": "LaMP-2M", "methods_all": list(preds)})
    summary = json.loads(paths["json"].read_text())
    assert summary["gold_counts"] == {"comedy": 2, "based on a book": 1}
    assert summary["methods"]["prompt"]["answers"] == {"comedy": 1, "sci-fi": 1}
    assert summary["methods"]["prompt"]["hits"] == {"comedy": 1}
    assert summary["methods"]["history"]["hits"] == {"comedy": 2, "based on a book": 1}
    report = paths["markdown"].read_text()
    table = report.split("## Answers given, per label")[1].split("## ")[0]
    assert "| comedy | 2 | 2 (2) | 1 (1) |" in table
    assert "| based on a book | 1 | 1 (1) | 0 |" in table
    assert "| sci-fi | 0 | 0 | 1 (0) |" in table
    assert "drama" not in table
    assert table.index("| comedy |") < table.index("| based on a book |") < table.index("| sci-fi |")


def test_a_rating_report_has_no_answer_table(tmp_path: Path) -> None:
    rows = [
        {
            "method": "prompt",
            "example": "q0",
            "digest": "d",
            "gold": "4",
            "pred": "5",
            "parsed": True,
            "abs_error": 1.0,
            "usage": {"calls": 1, "cache_hits": 0, "total_tokens": 10},
            "seconds": 1.0,
        }
    ]
    paths = _report_run(tmp_path, rows, {"name": "r", "task": "LaMP-3", "methods_all": ["prompt"]})
    assert "gold_counts" not in json.loads(paths["json"].read_text())
    assert "Answers given" not in paths["markdown"].read_text()
