import sqlite3

import pytest

from personalens.data.records import Dataset, Interaction, Item, freeze_fields
from personalens.embed import HashEmbedder
from personalens.errors import LLMOutputError
from personalens.jobs import BuildConfig, PersonaXBuilder
from personalens.llm import Budget, ScriptedChatModel, UsageMeter
from personalens.selection import PersonaXSelector
from personalens.store import PersonaStore

THEMES = {
    "space": ["space opera", "alien planet", "starship crew", "galaxy war", "orbit station"],
    "crime": ["heist crew", "detective noir", "mafia family", "bank robbery", "police chase"],
    "cook": ["baking show", "chef kitchen", "street food", "pastry class", "wine tasting"],
}


def _dataset(n_users=3):
    items, rows = {}, []
    for theme, titles in THEMES.items():
        for i, title in enumerate(titles):
            item_id = f"{theme}{i}"
            items[item_id] = Item(item_id, f"{title.title()} ({2000 + i})", freeze_fields([("genres", theme)]))
    for u in range(n_users):
        t = 0
        for theme in THEMES:
            for i in range(5):
                rating = 5.0 if (u + i) % 4 else 1.0
                rows.append(Interaction(f"u{u}", f"{theme}{i}", rating, None, float(t)))
                t += 1
    return Dataset("toy", items, rows, (1.0, 5.0, 1.0))


def _persona_model(**kwargs):
    def answer(request):
        prompt = request.messages[-1].content
        liked = [line for line in prompt.splitlines() if line.startswith("- ") and "genres:" in line]
        return f"Likes {liked[0].split('genres:')[1].strip()} stories with tension and a clear plot. " * 2

    return UsageMeter(ScriptedChatModel(answer, **kwargs))


def _builder(tmp_path, model=None, **selector):
    store = PersonaStore(tmp_path / "p.sqlite")
    sel = PersonaXSelector(threshold_rule="n_clusters", threshold=selector.pop("clusters", 3), **selector)
    return PersonaXBuilder(model or _persona_model(), HashEmbedder(32), sel, store, BuildConfig(max_words=40)), store


def test_build_stores_one_persona_per_cluster(tmp_path):
    dataset = _dataset()
    builder, store = _builder(tmp_path)
    report = builder.run(dataset, ["u0", "u1"])
    assert report.count("built") == 2 and report.usage.calls > 0
    s = store.current("u0")
    liked = {x.item_id for x in dataset.history("u0") if x.rating > 3}
    assert s.version == 1 and len(s.personas) == 3
    assert {p.cluster for p in s.personas} == {0, 1, 2}
    for p in s.personas:
        assert set(p.selected_item_ids) <= liked and 1 <= len(p.selected_item_ids) <= p.cluster_size
        assert p.centroid.shape == (32,) and p.embedding is not None and "stories" in p.text
    assert sum(p.cluster_size for p in s.personas) == len(liked)
    for key in ("model", "embedder", "prompts_version", "selector", "build", "data_sha256"):
        assert key in s.config


def test_second_run_is_served_from_the_store(tmp_path):
    dataset = _dataset()
    builder, store = _builder(tmp_path)
    builder.run(dataset, ["u0", "u1"])
    calls = builder.model.total.calls
    again = builder.run(dataset, ["u0", "u1"])
    assert again.count("cached") == 2 and builder.model.total.calls == calls
    assert [v.version for v in store.versions("u0")] == [1]


def test_any_config_change_rebuilds(tmp_path):
    dataset = _dataset()
    builder, store = _builder(tmp_path)
    builder.run(dataset, ["u0"])
    other = PersonaXBuilder(
        builder.model, builder.embedder, PersonaXSelector(threshold=3, alpha=1.2), store, builder.config
    )
    assert other.run(dataset, ["u0"]).count("built") == 1
    assert [v.version for v in store.versions("u0")] == [1, 2]
    # new data for the user changes the data hash too
    dataset.interactions.append(Interaction("u0", "cook4", 5.0, None, 99.0))
    dataset._by_user = None
    assert other.run(dataset, ["u0"]).count("built") == 1


def test_a_killed_run_resumes_without_duplicates_or_gaps(tmp_path):
    dataset = _dataset(n_users=3)
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] == 5:  # dies in the middle of user u1 (3 personas per user)
            raise KeyboardInterrupt
        return "Enjoys stories with tension and a clear plot and a memorable setting."

    builder, store = _builder(tmp_path, UsageMeter(ScriptedChatModel(flaky)))
    with pytest.raises(KeyboardInterrupt):
        builder.run(dataset, ["u0", "u1", "u2"], run_id="r1")
    assert store.current("u0") is not None and store.current("u1") is None  # nothing partial stored
    resumed = builder.run(dataset, ["u0", "u1", "u2"], run_id="r1")
    assert [o.status for o in resumed.outcomes] == ["cached", "built", "built"]
    for u in ("u0", "u1", "u2"):
        assert [v.version for v in store.versions(u)] == [1]
        assert len(store.current(u).personas) == 3
    assert store.build_status("r1") == {"u0": "done", "u1": "done", "u2": "done"}
    rows = sqlite3.connect(tmp_path / "p.sqlite").execute("SELECT COUNT(*) FROM personas").fetchone()[0]
    assert rows == 9


def test_one_users_failure_is_reported_and_the_run_goes_on(tmp_path):
    dataset = _dataset()

    crime_prompts = []

    def answer(request):
        if "genres: crime" in request.messages[-1].content:
            crime_prompts.append(request)
            if len(crime_prompts) == 1:  # only the first user's crime persona fails
                raise LLMOutputError("garbled", raw=["%%%"])
        return "Enjoys stories with tension and a clear plot and a memorable setting."

    builder, store = _builder(tmp_path, UsageMeter(ScriptedChatModel(answer)))
    report = builder.run(dataset, ["u0", "u1"])
    assert [o.status for o in report.outcomes] == ["failed", "built"]
    assert "garbled" in report.to_json()["failures"]["u0"]
    assert store.current("u0") is None and len(store.current("u1").personas) == 3


def test_budget_cap_stops_the_run_cleanly(tmp_path):
    dataset = _dataset()
    model = UsageMeter(
        ScriptedChatModel(lambda r: "Enjoys tense stories with a clear plot and vivid places."), Budget(max_calls=4)
    )
    builder, store = _builder(tmp_path, model)
    report = builder.run(dataset, ["u0", "u1", "u2"])
    assert report.stopped and "call cap" in report.stopped
    assert [o.user_id for o in report.outcomes] == ["u0"]
    assert store.current("u1") is None


def test_holdout_never_reaches_the_prompts(tmp_path):
    dataset = _dataset()
    inner = ScriptedChatModel(lambda r: "Enjoys tense stories with a clear plot and vivid places.")
    store = PersonaStore(tmp_path / "p.sqlite")
    builder = PersonaXBuilder(
        UsageMeter(inner), HashEmbedder(32), PersonaXSelector(threshold=2), store, BuildConfig(max_words=40, holdout=3)
    )
    builder.run(dataset, ["u0"])
    held = [dataset.item(x.item_id).title for x in dataset.history("u0").interactions[-3:]]
    prompts = " ".join(c.messages[-1].content for c in inner.calls)
    assert not any(t in prompts for t in held)


def test_reflection_build(tmp_path):
    dataset = _dataset()

    def next_tokens(request):
        return {"A": 0.7, "B": 0.3}

    model = UsageMeter(
        ScriptedChatModel(lambda r: "Enjoys tense stories with a clear plot and vivid places.", next_tokens=next_tokens)
    )
    store = PersonaStore(tmp_path / "p.sqlite")
    builder = PersonaXBuilder(
        model, HashEmbedder(32), PersonaXSelector(threshold=2), store, BuildConfig(method="reflect", max_words=40)
    )
    assert builder.run(dataset, ["u0"]).count("built") == 1
    s = store.current("u0")
    assert s.method == "reflect" and len(s.personas) == 2
    disliked = {x.item_id for x in dataset.history("u0") if x.rating < 3}
    for p in s.personas:
        assert p.meta["negatives"] and set(p.meta["negatives"]) <= disliked | set(dataset.items)
        assert "rewrites" in p.meta
