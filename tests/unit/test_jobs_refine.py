"""The refinement job: every round stored as a persona version with lineage and errors, resumable, incremental."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from personalens.embed.testing import HashEmbedder
from personalens.errors import LLMError
from personalens.jobs.refine import REFINE_CREATOR, RefineJob, windows_fingerprint
from personalens.llm.base import Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.loop import RefineConfig
from personalens.refinement.prompts import RatedItem
from personalens.refinement.windows import UserWindows
from personalens.store import Persona, PersonaStore

FILLER = " ".join(["The person weighs story, pace and tone with care."] * 3)


class LevelPredictor:
    """Predicts the number written as "level N" in the persona for every item."""

    def __init__(self) -> None:
        self.calls = 0

    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        self.calls += 1
        level = float(re.search(r"level (\d+)", persona).group(1))
        return [level] * len(items), Usage(calls=1)


def _window(tag: str, rating: float, n: int = 2) -> tuple[RatedItem, ...]:
    return tuple(RatedItem(f"{tag}-item-{i}", rating) for i in range(n))


def _user(ratings=(2, 4, 4, 5), user_id="u1") -> UserWindows:
    return UserWindows(
        user_id, "movies", (1.0, 5.0, 1.0), tuple(_window(f"w{i}", r) for i, r in enumerate(ratings)), "toy"
    )


def _levels(*levels: int, fail_at: int | None = None) -> ScriptedChatModel:
    """Answers persona prompts with "level N" from ``levels`` in order (the last one repeats)."""
    count = {"n": 0}

    def answer(request):
        i = count["n"]
        count["n"] += 1
        if fail_at is not None and i == fail_at:
            raise LLMError("the server went away")
        return f"Rates at level {levels[min(i, len(levels) - 1)]}. {FILLER}"

    return ScriptedChatModel(answer)


def _job(model, store, config=None, **kwargs):
    return RefineJob(model, LevelPredictor(), HashEmbedder(dim=16), store, config, min_words=10, max_words=80, **kwargs)


@pytest.fixture
def store(tmp_path):
    with PersonaStore(tmp_path / "personas.sqlite") as s:
        yield s


def test_every_round_is_a_version_with_lineage_errors_and_rewards(store):
    report = _job(_levels(2, 4, 5), store).run([_user()])
    outcome = report.outcomes[0]
    assert outcome.status == "refined" and outcome.rounds_run == 3 and outcome.committed == 3
    assert outcome.versions == [1, 2, 3, 4]
    versions = {v.version: v for v in store.versions("u1")}
    assert [versions[v].parent_version for v in (1, 2, 3, 4)] == [None, 1, 2, 3]
    assert all(v.creator == REFINE_CREATOR and v.config_hash == versions[1].config_hash for v in versions.values())
    assert store.current("u1").version == 4
    s1 = store.get("u1", 2)
    meta = s1.personas[0].meta
    assert meta["round"] == 1 and meta["strategy"] == "refine" and meta["committed"] is True
    # S0 predicts 2 for W0 (2), W1 (4), W2 (4); S1 predicts 4
    assert meta["mae_before"] == {"previous": 0.0, "current": 2.0, "future": 2.0}
    assert meta["mae_after"] == {"previous": 2.0, "current": 0.0, "future": 0.0}
    assert meta["rewards"]["r_fut"] == pytest.approx(2.0) and meta["rewards"]["r_total"] == pytest.approx(2.0)
    assert meta["seen_sha256"] == windows_fingerprint(_user().up_to(1))
    assert s1.method == "deeper:refine" and "round 1" in s1.note
    persona = s1.personas[0]
    assert persona.cluster_size == 4 and persona.embedding is not None and persona.centroid.shape == (16,)
    last = store.get("u1", 4).personas[0].meta
    assert last["round"] == 3 and last["mae_after"]["future"] is None  # the last window has no future
    assert outcome.future_mae == [0.0, 0.0]  # S1 (level 4) on W2, S2 (level 5) on W3; S3 has no future window


def test_a_finished_user_is_skipped_with_no_llm_call(store):
    _job(_levels(2, 4, 5), store).run([_user()])
    again = _levels(2)
    report = _job(again, store).run([_user()])
    assert report.outcomes[0].status == "cached" and report.outcomes[0].current_version == 4
    assert again.calls == [] and len(store.versions("u1")) == 4


def test_a_failure_mid_user_keeps_finished_rounds_and_a_rerun_continues(store):
    failing = _levels(2, 4, 5, fail_at=2)  # S0 and S1 written, the round-2 rewrite fails
    report = _job(failing, store).run([_user(), _user(user_id="u2")])
    first, second = report.outcomes
    assert first.status == "failed" and "went away" in first.error
    assert second.status == "refined"  # the run went on
    assert [v.version for v in store.versions("u1")] == [1, 2]
    resumed = _job(_levels(5), store).run([_user(), _user(user_id="u2")])
    assert resumed.outcomes[0].status == "refined" and resumed.outcomes[0].rounds_run == 2
    assert resumed.outcomes[1].status == "cached"
    rounds = [store.get("u1", v.version).personas[0].meta["round"] for v in store.versions("u1")]
    assert rounds == [0, 1, 2, 3]  # nothing repeated, nothing missing
    assert store.get("u1", 3).parent_version == 2


def test_new_windows_are_refined_on_top_of_the_stored_chain(store):
    _job(_levels(2, 4), store, rounds=2).run([_user()])
    assert [v.version for v in store.versions("u1")] == [1, 2, 3]
    grown = _user(ratings=(2, 4, 4, 5, 5))
    report = _job(_levels(5), store).run([grown])
    assert report.outcomes[0].rounds_run == 2  # rounds 3 and 4 only
    metas = [store.get("u1", v.version).personas[0].meta for v in store.versions("u1")]
    assert [m["round"] for m in metas] == [0, 1, 2, 3, 4]


def test_changed_earlier_windows_start_again_from_s0(store):
    _job(_levels(2, 4), store).run([_user()])
    changed = _user(ratings=(1, 4, 4, 5))
    report = _job(_levels(3), store).run([changed])
    assert report.outcomes[0].rounds_run == 3
    new_versions = [v for v in store.versions("u1") if v.version > 4]
    assert store.get("u1", new_versions[0].version).personas[0].meta["round"] == 0
    assert new_versions[0].parent_version is None


def test_a_rejected_verified_update_is_recorded_but_not_made_current(store):
    user = _user(ratings=(2, 2, 2, 2))  # S0 at level 2 is perfect; every candidate (level 5) is worse
    config = RefineConfig("refine", verified=True, candidates=2)
    report = _job(_levels(2, 5), store, config).run([user])
    outcome = report.outcomes[0]
    assert outcome.rounds_run == 3 and outcome.committed == 0
    assert store.current("u1").version == 1 and outcome.current_version == 1
    for v in store.versions("u1")[1:]:
        stored = store.get("u1", v.version)
        assert v.parent_version == 1 and not v.is_current  # every round refined S0, which stayed in effect
        assert stored.personas[0].meta["committed"] is False
        assert stored.personas[0].meta["gate"]["candidate_errors"] == [6.0, 6.0]  # previous + current MAE
        assert "stays in effect" in stored.note and "kept the old persona" in stored.note
        assert stored.personas[0].text == store.get("u1", 1).personas[0].text
    # a rerun is a no-op, even though the last stored round was not committed
    assert _job(_levels(2), store, config).run([user]).outcomes[0].status == "cached"


def test_starting_from_the_current_stored_persona(store):
    text = f"Rates at level 4. {FILLER}"
    store.save(
        "u1",
        [Persona(0, text, np.ones(16, dtype=np.float32))],
        creator="personax-build",
        method="summarize",
        config={},
        config_hash="built",
        embedder_id="hash",
    )
    model = _levels(5)
    report = _job(model, store, initial="current", rounds=1).run([_user()])
    assert report.outcomes[0].rounds_run == 1
    round1 = store.versions("u1")[-1]
    assert round1.parent_version == 1 and store.get("u1", round1.version).personas[0].meta["round"] == 1
    assert "level 4" in model.calls[0].messages[-1].content  # the stored persona was refined, not a new S0


def test_starting_from_a_multi_persona_set_is_a_clear_per_user_failure(store):
    store.save(
        "u1",
        [Persona(i, f"persona {i}", np.ones(16, dtype=np.float32)) for i in range(2)],
        creator="personax-build",
        method="summarize",
        config={},
        config_hash="built",
        embedder_id="hash",
    )
    report = _job(_levels(5), store, initial="current").run([_user()])
    assert report.outcomes[0].status == "failed" and "2 personas" in report.outcomes[0].error
    assert len(store.versions("u1")) == 1


def test_the_report_counts_and_serialises(store):
    report = _job(_levels(2, 4, 5), store).run([_user(), _user(user_id="u2")])
    data = json.loads(json.dumps(report.to_json()))
    assert data["users"] == 2 and data["refined"] == 2 and data["rounds_run"] == 6
    assert data["users_detail"]["u1"]["rounds_stored"] == 3
    assert all(math.isfinite(v) for v in data["users_detail"]["u1"]["future_mae"])
    info = store.run_info(report.run_id)
    assert info.counts["done"] == 2


def test_the_writer_settings_reach_every_request_and_the_configuration_hash(store):
    model = _levels(2, 4, 5)
    job = _job(model, store, repetition_penalty=1.3)
    job.run([_user()])
    assert model.calls and all(c.repetition_penalty == 1.3 for c in model.calls)
    writer = job.run_config()["refine"]["writer"]
    assert writer["repetition_penalty"] == 1.3 and writer["revised_only"] and writer["drop_naming"]
    whole = _job(_levels(2), store, revised_only=False, drop_naming=False).run_config()["refine"]["writer"]
    assert "revised_only" not in whole and "drop_naming" not in whole
    # other writer settings are another configuration: its rounds are not taken for this one's
    again = _job(_levels(3), store, revised_only=False, drop_naming=False).run([_user()])
    assert again.outcomes[0].status == "refined"
    with pytest.raises(ValueError, match="repetition_penalty"):
        _job(model, store, repetition_penalty=0.5)
