"""The dynamic loop: window bookkeeping, predictions memoised, rewards, the verified gate, no future leakage."""

from __future__ import annotations

import re

import pytest

from personalens.data.deeper import DeeperRound
from personalens.data.records import Interaction, Window
from personalens.errors import DataError
from personalens.llm.base import Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.loop import DynamicRefiner, RefineConfig
from personalens.refinement.prompts import RatedItem
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows, windows_from_deeper

FILLER = " ".join(["The person weighs story, pace and tone with care."] * 3)


def _window(tag: str, ratings: list[float]) -> tuple[RatedItem, ...]:
    return tuple(RatedItem(f"{tag}-item-{i}", r) for i, r in enumerate(ratings))


def _user() -> UserWindows:
    # W0..W3: every item of a window has the same rating, so a persona predicting x has MAE |x - rating|
    return UserWindows(
        "u1",
        "movies",
        (1.0, 5.0, 1.0),
        (_window("w0", [2, 2]), _window("w1", [4, 4]), _window("w2", [4, 4]), _window("w3", [5, 5])),
    )


class LevelPredictor:
    """Predicts the number written as "level N" in the persona for every item; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        self.calls.append((persona, tuple(x.text for x in items)))
        level = float(re.search(r"level (\d+(?:\.\d+)?)", persona).group(1))
        return [level] * len(items), Usage(calls=1)


def _model(levels: list[float]) -> ScriptedChatModel:
    answers = iter(levels)
    return ScriptedChatModel(lambda request: f"Rates at level {next(answers):g}. {FILLER}")


def _writer(model):
    return PersonaWriter(model, domain="movies", scale=(1.0, 5.0, 1.0), min_words=10, max_words=80)


def test_round_views_never_reach_past_the_current_window():
    user = _user()
    r1 = user.round(1)
    assert r1.previous[0].text.startswith("w0") and r1.current[0].text.startswith("w1")
    assert r1.future[0].text.startswith("w2")
    assert user.round(3).future is None and user.n_rounds == 2
    assert [w[0].text[:2] for w in user.up_to(1)] == ["w0", "w1"]
    with pytest.raises(ValueError):
        user.round(4)
    with pytest.raises(ValueError, match="at least 2 windows"):
        UserWindows("u", "movies", (1, 5, 1), (_window("a", [1]),))


def test_refine_rounds_record_errors_and_rewards_and_never_show_the_future():
    model = _model([2, 4, 5])  # S0 predicts 2, S1 predicts 4, S2 predicts 5
    predictor = LevelPredictor()
    trace = DynamicRefiner(_writer(model), predictor, RefineConfig("refine")).run(_user())
    assert len(trace.rounds) == 2 and trace.initial_error == pytest.approx(2.0)
    r1, r2 = trace.rounds
    assert (r1.before.previous, r1.before.current, r1.before.future) == (0.0, 2.0, 2.0)
    assert (r1.after.previous, r1.after.current, r1.after.future) == (2.0, 0.0, 0.0)
    assert r1.rewards.previous == -2.0 and r1.rewards.current == 2.0 and r1.rewards.future == 2.0
    assert r1.rewards.total() == pytest.approx(2.0) and r1.committed and r1.gate is None
    assert r1.flags == {
        "short": False,
        "leaked": [],
        "attempts": 1,
        "unchanged": False,
        "repetitive_extensions": 0,
        "cut_to_revision": 0,
        "dropped_sentences": 0,
    }
    assert r2.before.future == 1.0 and r2.after.future == 0.0
    shown = " ".join(m.content for c in model.calls for m in c.messages)
    assert "predicted 2, actual 4" in shown  # Refine saw S0's prediction of W1
    assert "w3-item" not in shown and "w2-item" not in " ".join(m.content for m in model.calls[1].messages)
    # each (persona, window) is predicted once
    assert len(predictor.calls) == len(set(predictor.calls))


def test_verified_mode_commits_the_best_candidate_on_previous_plus_current_only():
    # W0 rated 3, W1 rated 4, W2 (the future) rated 1
    user = UserWindows(
        "u2", "movies", (1.0, 5.0, 1.0), (_window("w0", [3, 3]), _window("w1", [4, 4]), _window("w2", [1, 1]))
    )
    model = _model([2, 5, 3.5, 4])  # S0 = 2; candidates 5 (2+1=3), 3.5 (0.5+0.5=1), 4 (1+0=1)
    trace = DynamicRefiner(_writer(model), LevelPredictor(), RefineConfig("refine", verified=True, candidates=3)).run(
        user
    )
    (r1,) = trace.rounds
    assert r1.gate is not None and r1.gate.old_error == pytest.approx(3.0)  # S0: |2-3| + |2-4|
    assert r1.gate.candidate_errors == pytest.approx((3.0, 1.0, 1.0))
    assert r1.committed and r1.gate.chosen == 1 and "level 3.5" in r1.persona  # ties go to the earlier candidate
    assert r1.after.future == pytest.approx(2.5)  # measured after, never used to choose
    temps = [c.temperature for c in model.calls[1:]]
    assert temps == [0.0, 0.8, 0.8] and [c.sample for c in model.calls[1:]] == [0, 1, 2]


def test_verified_mode_keeps_the_old_persona_when_no_candidate_helps():
    model = _model([4, 1, 2])  # S0 = 4 is perfect on W1 (err 2 on W0); candidates are worse
    config = RefineConfig("inc_update", verified=True, candidates=2)
    trace = DynamicRefiner(_writer(model), LevelPredictor(), config).run(_user(), rounds=1)
    (r1,) = trace.rounds
    assert not r1.committed and r1.persona == trace.initial and "kept the old persona" in r1.gate.reason
    assert r1.rewards.total() == 0.0 and r1.strategy == "verified-inc_update"


def test_starting_persona_and_round_limit():
    model = _model([3])
    trace = DynamicRefiner(_writer(model), LevelPredictor(), RefineConfig("slide_regen")).run(
        _user(), rounds=1, initial="Rates at level 1. " + FILLER
    )
    assert len(trace.rounds) == 1 and len(model.calls) == 1 and trace.initial_error == 3.0
    with pytest.raises(ValueError, match="rounds must be"):
        DynamicRefiner(_writer(model), LevelPredictor()).run(_user(), rounds=9)
    with pytest.raises(ValueError, match="unknown strategy"):
        RefineConfig("rewrite")  # type: ignore[arg-type]


def _round(k: int, windows: dict[int, list[float]], user="7") -> DeeperRound:
    made = tuple(
        Window(user, j, tuple(Interaction(user, f"t{j}-{i}", r) for i, r in enumerate(windows[j])))
        for j in (k - 1, k, k + 1)
    )
    return DeeperRound(user, k, "movie", "movielens_20m", made)  # type: ignore[arg-type]


def test_windows_from_deeper_rounds_join_and_check_overlaps():
    w = {0: [1.0, 2.0], 1: [3.0, 4.5], 2: [5.0, 0.5], 3: [2.0, 2.0]}
    (user,) = windows_from_deeper([_round(1, w), _round(2, w)])
    assert len(user.windows) == 4 and user.scale == (0.5, 5.0, 0.5) and user.domain == "movie"
    assert windows_from_deeper([_round(1, w, user="8")])[0].user_id == "8"
    assert user.windows[3][0] == RatedItem("t3-0", 2.0)
    bad = dict(w)
    bad[2] = [4.0, 0.5]
    with pytest.raises(DataError, match="window 2 differs"):
        windows_from_deeper([_round(1, w), _round(2, bad)])
    with pytest.raises(DataError, match="not consecutive"):
        windows_from_deeper([_round(2, w)])


def test_structured_predictor_reads_one_json_answer_and_snaps_to_the_grid():
    from personalens.refinement.loop import StructuredPredictor

    model = ScriptedChatModel(['{"ratings": [4.3, 0.7]}'])
    values, usage = StructuredPredictor(model).predict(
        "Likes thrillers.", _window("x", [1, 2]), domain="movies", scale=(0.5, 5.0, 0.5)
    )
    assert values == [4.5, 0.5] and usage.calls == 1
    request = model.calls[0]
    assert request.json_schema is not None and "1. x-item-0" in request.messages[-1].content
    bad = ScriptedChatModel(['{"ratings": [9]}', '{"ratings": [3, 3]}'])
    values, _ = StructuredPredictor(bad).predict("P.", _window("y", [1, 2]), domain="movies", scale=(1, 5, 1))
    assert values == [3, 3] and len(bad.calls) == 2  # the off-scale, short answer was re-asked
