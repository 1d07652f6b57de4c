"""The ranking harness: candidate sets, sampling plans, rankers and the resumable experiment runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from personalens.data.records import Dataset, History, Interaction, Item, freeze_fields
from personalens.embed.testing import HashEmbedder
from personalens.errors import ConfigError, DataError
from personalens.evaluation.candidates import (
    CandidateSpec,
    load_tasks,
    make_tasks,
    prepare_tasks,
    save_tasks,
    split_target,
)
from personalens.evaluation.experiment import RankingExperiment, load_config, parse_config, read_rows
from personalens.evaluation.plans import MethodSpec, make_plan, specs_for
from personalens.evaluation.rankers import BehaviourProfiler, EmbeddingRanker, LLMRanker, PersonaText
from personalens.llm.testing import ScriptedChatModel

GENRES = ["Drama", "Comedy", "Horror", "Sci-Fi", "Western", "Musical"]


def _dataset(n_users: int = 4, n_items: int = 60, per_user: int = 24) -> Dataset:
    items = {
        str(i): Item(str(i), f"Film {i} ({1950 + i})", freeze_fields([("genres", GENRES[i % len(GENRES)])]))
        for i in range(n_items)
    }
    rng = np.random.default_rng(7)
    interactions = []
    for u in range(n_users):
        picks = rng.choice(n_items, size=per_user, replace=False)
        for t, i in enumerate(picks):
            rating = 5.0 if int(i) % 2 == 0 else 1.0
            interactions.append(Interaction(f"u{u}", str(int(i)), rating, rating > 3, float(1000 + t)))
    return Dataset("toy", items, interactions, (0.5, 5.0, 0.5))


def _write_movielens(directory: Path, dataset: Dataset) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "movies.csv").open("w") as f:
        f.write("movieId,title,genres\n")
        for item in dataset.items.values():
            f.write(f"{item.item_id},{item.title},{item.fields['genres']}\n")
    with (directory / "ratings.csv").open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for x in dataset.interactions:
            f.write(f"{x.user_id[1:]},{x.item_id},{x.rating},{int(x.timestamp or 0)}\n")
    return directory


# ------------------------------------------------------------------------------------------------ candidates
def test_split_target_rules():
    rows = (
        Interaction("u", "a", 5, True, 1),
        Interaction("u", "b", 4, True, 2),
        Interaction("u", "c", 1, False, 3),
    )
    history, target = split_target(History("u", rows), "last")
    assert target.item_id == "c" and history.item_ids == ["a", "b"]
    history, target = split_target(History("u", rows), "last_liked")
    assert target.item_id == "b" and history.item_ids == ["a"]  # c, after the target, is not profiled
    with pytest.raises(ValueError, match="nothing before"):
        split_target(History("u", rows[:1]), "last")


def test_negatives_are_untouched_reproducible_and_the_positive_is_shuffled():
    dataset = _dataset()
    spec = CandidateSpec(negatives=9, target="last", seed=3)
    tasks, skipped = make_tasks(dataset, dataset.users, spec)
    again, _ = make_tasks(dataset, dataset.users, spec)
    assert not skipped and [t.candidates for t in tasks] == [t.candidates for t in again]
    positions = set()
    for task in tasks:
        touched = set(dataset.history(task.user_id).item_ids)
        negatives = [c for c in task.candidates if c != task.positive]
        assert len(task.candidates) == 10 and len(set(task.candidates)) == 10
        assert not touched & set(negatives)
        assert task.positive not in task.history.item_ids
        positions.add(task.positive_index)
    assert len(positions) > 1
    other, _ = make_tasks(dataset, dataset.users, CandidateSpec(negatives=9, target="last", seed=4))
    assert [t.candidates for t in other] != [t.candidates for t in tasks]


def test_candidate_file_round_trip_and_mismatch(tmp_path):
    dataset = _dataset()
    spec = CandidateSpec(negatives=5, target="last_liked", like_above=3.0)
    path = tmp_path / "c.json"
    tasks, skipped = prepare_tasks(path, dataset, dataset.users, spec)
    loaded, _ = prepare_tasks(path, dataset, dataset.users, spec)
    assert [(t.user_id, t.positive, t.candidates, t.history) for t in loaded] == [
        (t.user_id, t.positive, t.candidates, t.history) for t in tasks
    ]
    with pytest.raises(DataError, match="drawn with"):
        load_tasks(path, dataset, CandidateSpec(negatives=6, target="last_liked", like_above=3.0))
    changed = Dataset("toy", dataset.items, dataset.interactions[:-1], dataset.rating_scale)
    with pytest.raises(DataError, match="other data"):
        load_tasks(path, changed, spec)
    with pytest.raises(DataError, match="lacks"):
        prepare_tasks(path, dataset, [*dataset.users, "nobody"], spec)


def test_full_catalogue_and_skipped_users(tmp_path):
    dataset = _dataset()
    lonely = Interaction("solo", "0", 5.0, True, 1.0)
    dataset = Dataset("toy", dataset.items, [*dataset.interactions, lonely], dataset.rating_scale)
    spec = CandidateSpec(negatives=None, target="last")
    tasks, skipped = make_tasks(dataset, dataset.users, spec)
    assert "solo" in skipped and "nothing before" in skipped["solo"]
    for task in tasks:
        assert len(task.candidates) == len(dataset.items) - len(dataset.history(task.user_id)) + 1
    path = save_tasks(tmp_path / "full.json", dataset, tasks, spec, skipped)
    assert "candidates" not in json.loads(path.read_text())["tasks"][0]
    assert [t.candidates for t in load_tasks(path, dataset)] == [t.candidates for t in tasks]
    assert prepare_tasks(path, dataset, dataset.users, spec)[1] == {"solo": skipped["solo"]}


# ------------------------------------------------------------------------------------------------ plans
def _clustered_embeddings() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 3
    x = np.concatenate([c + 0.05 * rng.standard_normal((10, 8)) for c in centres])
    order = rng.permutation(len(x))
    return x[order], np.arange(len(x), dtype=float)


def test_plans_share_the_budget_and_follow_their_rule():
    x, times = _clustered_embeddings()
    candidates = np.eye(8)[:3] * 3 + 0.01
    k = 9
    full = make_plan(MethodSpec("full"), x, times, candidates, k)
    assert full.groups == (tuple(range(30)),) and full.assign == (0, 0, 0)
    recent = make_plan(MethodSpec("recent", 0.3), x, times, candidates, k)
    assert recent.groups == (tuple(range(21, 30)),)
    random = make_plan(MethodSpec("random", 0.3), x, times, candidates, k)
    assert len(random.groups[0]) == k
    relevance = make_plan(MethodSpec("relevance", 0.3), x, times, candidates, k)
    assert len(relevance.groups) == 3 and relevance.assign == (0, 1, 2)
    for c, group in enumerate(relevance.groups):
        # the k behaviours nearest candidate c all come from c's cluster (10 members, k = 9)
        assert all(np.argmax(x[i]) == c for i in group)
    one = make_plan(MethodSpec("relevance", 0.3, relevance="candidate_set"), x, times, candidates, k)
    assert len(one.groups) == 1 and one.assign == (0, 0, 0)
    for sampler in ("personax", "centroid", "boundary"):
        plan = make_plan(MethodSpec(sampler, 0.3, threshold=3), x, times, candidates, k)
        assert plan.budget == k and len(plan.groups) == 3
        for c, g in enumerate(plan.assign):  # each candidate retrieves the persona of its own cluster
            assert all(np.argmax(x[i]) == c for i in plan.groups[g])
    single = make_plan(MethodSpec("personax-single", 0.3, threshold=3), x, times, candidates, k)
    assert len(single.groups) == 1 and len(single.groups[0]) == k


def test_grid_sweeps_tau_and_alpha_only_where_they_matter():
    specs = specs_for(["full", "recent", "centroid", "personax"], [0.1, 0.5], [None, 4], [1.04, 1.08])
    count = {s: sum(x.sampler == s for x in specs) for s in ("full", "recent", "centroid", "personax")}
    assert count == {"full": 1, "recent": 2, "centroid": 4, "personax": 8}
    with pytest.raises(ValueError, match="unknown sampler"):
        MethodSpec("nearest")


# ------------------------------------------------------------------------------------------------ rankers
def test_embedding_ranker_prefers_the_matching_text_and_uses_given_vectors():
    embedder = HashEmbedder(64)
    items = [Item("a", "space rockets aliens"), Item("b", "cowboys horses desert")]
    scores, _ = EmbeddingRanker(embedder, ()).score([PersonaText("rockets aliens space")], [0, 0], items)
    assert scores[0] > scores[1]
    vector = embedder.embed(["cowboys horses desert"])[0]
    scores, _ = EmbeddingRanker(embedder, ()).score([PersonaText("ignored", vector=vector)], [0, 0], items)
    assert scores[1] > scores[0] and not any("ignored" in t for call in embedder.calls for t in call)


def test_llm_ranker_scores_by_expected_rating_grouped_by_persona():
    def next_tokens(request):
        text = request.messages[-1].content
        high = "Likes westerns" in text and "Western" in text
        return {"5": 0.9, "1": 0.1} if high else {"1": 0.8, "2": 0.2}

    model = ScriptedChatModel(next_tokens=next_tokens)
    items = [Item(i, i.upper(), freeze_fields([("genres", g)])) for i, g in (("a", "Western"), ("b", "Drama"))]
    items.append(Item("c", "C", freeze_fields([("genres", "Western")])))
    personas = [PersonaText("Likes westerns."), PersonaText("Likes dramas.")]
    scores, usage = LLMRanker(model).score(personas, [0, 1, 0], items)
    assert scores[0] == pytest.approx(4.6) and scores[2] == pytest.approx(4.6) and scores[1] < 2
    shown = [c.messages[-1].content for c in model.calls]
    assert "westerns" in shown[0] and "westerns" in shown[1] and "dramas" in shown[2]  # one persona's items together


def test_behaviour_profiler_lists_items_oldest_first():
    dataset = _dataset()
    history = list(dataset.history("u0"))[:3]
    text = BehaviourProfiler(("genres",)).persona(history, dataset.items).text
    assert text.splitlines()[0].startswith(dataset.items[history[0].item_id].title)


# ------------------------------------------------------------------------------------------------ experiment
def _config(tmp_path: Path, body: str) -> Path:
    data = _write_movielens(tmp_path / "ml", _dataset())
    path = tmp_path / "exp.toml"
    path.write_text(f'name = "toy"\n[data]\npath = "{data}"\nformat = "movielens"\n' + body)
    return path


def test_experiment_runs_every_cell_once_and_resumes(tmp_path):
    config = load_config(
        _config(
            tmp_path,
            '[candidates]\nnegatives = 9\ntarget = "last_liked"\n[selection]\nratios = [0.2, 0.5]\n'
            'thresholds = ["auto", 2]\nalphas = [1.04, 1.08]\n[profiler]\nencoding = "mean"\n',
        )
    )
    out = tmp_path / "out"
    run = RankingExperiment(config, out, embedder=HashEmbedder(32)).run()
    # full once; per ratio: random/recent/relevance, centroid/boundary x 2 taus, personax x 2 taus x 2 alphas
    cells = 1 + 2 * (3 + 2 * 2 + 2 * 2)
    assert run.users == 4 and run.rows_written == 4 * cells and not run.failures
    rows, bad = read_rows(out / "rows.jsonl")
    assert bad == 0 and len({(r["cell"], r["user"]) for r in rows}) == len(rows)
    for r in rows:
        assert 1 <= r["rank"] <= 10 and set(r["metrics"]) == {"hit@1", "hit@5", "ndcg@5", "mrr@10"}
        assert r["metrics"]["hit@1"] == float(r["rank"] == 1)
    again = RankingExperiment(config, out, embedder=HashEmbedder(32)).run()
    assert again.rows_written == 0 and again.rows_skipped == 4 * cells
    # a run killed mid-write leaves a torn line: it is counted, and the missing rows are written again
    lines = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    resumed = RankingExperiment(config, out, embedder=HashEmbedder(32)).run()
    assert resumed.bad_lines == 1 and resumed.rows_written == 3


def test_same_budget_for_every_sampler_of_a_ratio(tmp_path):
    config = load_config(_config(tmp_path, "[selection]\nratios = [0.3]\n"))
    RankingExperiment(config, tmp_path / "out", embedder=HashEmbedder(32)).run()
    rows, _ = read_rows(tmp_path / "out" / "rows.jsonl")
    for user in {r["user"] for r in rows}:
        budgets = {r["budget"] for r in rows if r["user"] == user and r["sampler"] != "full"}
        assert len(budgets) == 1


def test_llm_experiment_summarises_and_caches_personas_per_group(tmp_path):
    config = load_config(
        _config(
            tmp_path,
            '[selection]\nsamplers = ["recent", "personax"]\nratios = [0.5]\n'
            '[profiler]\nkind = "summarize"\nmax_words = 40\n[rankers]\nkinds = ["embedding", "llm"]\n',
        )
    )
    model = ScriptedChatModel(
        lambda request: "Enjoys bold comedies and tense dramas with strong characters.",
        next_tokens=lambda request: {"4": 0.6, "2": 0.4},
    )
    out = tmp_path / "out"
    run = RankingExperiment(config, out, embedder=HashEmbedder(32), model_factory=lambda: model).run()
    assert run.rows_written == 4 * 2 * 2 and run.usage.calls > 0
    rows, _ = read_rows(out / "rows.jsonl")
    summaries = [c for c in model.calls if not c.top_logprobs]
    # one summary per persona group and user, shared by both rankers
    groups = sum(r["personas"] for r in rows if r["ranker"] == "llm")
    assert len(summaries) == groups
    assert all(r["persona_words"] > 3 for r in rows)


def test_config_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.toml: \[selection\]: unknown key 'ratio'"):
        load_config(_config(tmp_path, "[selection]\nratio = [0.3]\n"))
    with pytest.raises(ConfigError, match="unknown 'nearest'"):
        load_config(_config(tmp_path, '[selection]\nsamplers = ["nearest"]\n'))
    with pytest.raises(ConfigError, match="negatives"):
        load_config(_config(tmp_path, "[candidates]\nnegatives = 0\n"))
    with pytest.raises(ConfigError, match="only with behaviours"):
        load_config(_config(tmp_path, '[profiler]\nkind = "summarize"\nencoding = "mean"\n'))
    with pytest.raises(ConfigError, match="path is required"):
        parse_config({"data": {}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    config = load_config(_config(tmp_path, '[report]\nmetrics = ["HR@1", "NDCG@5"]\nprimary = "MRR@10"\n'))
    assert config.metrics == ("hit@1", "ndcg@5", "mrr@10") and config.primary == "mrr@10"
