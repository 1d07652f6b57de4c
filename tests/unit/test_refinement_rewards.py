"""DeePer reward arithmetic and the verified update gate."""

from __future__ import annotations

import pytest

from personalens.refinement import WindowErrors, mean_absolute_error, rewards, verify_update


def test_rewards_are_mae_reductions_on_each_window():
    before = WindowErrors(previous=0.8, current=1.2, future=1.0)
    after = WindowErrors(previous=0.9, current=0.7, future=0.6)
    r = rewards(before, after)
    assert r.previous == pytest.approx(-0.1) and r.current == pytest.approx(0.5) and r.future == pytest.approx(0.4)
    assert r.total() == pytest.approx(0.8)
    assert r.total("future") == pytest.approx(0.4)
    assert r.total("decayed") == pytest.approx(0.25 * -0.1 + 0.5 * 0.5 + 0.4)
    assert r.total((2.0, 0.0, 0.0)) == pytest.approx(-0.2)
    assert r.to_dict()["r_total"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="unknown reward setting"):
        r.total("greedy")  # type: ignore[arg-type]


def test_missing_windows_contribute_nothing():
    r = rewards(WindowErrors(None, 1.0, None), WindowErrors(None, 0.5, 0.2))
    assert r.previous is None and r.future is None and r.total() == pytest.approx(0.5)


def test_window_errors_validate():
    with pytest.raises(ValueError, match="finite non-negative"):
        WindowErrors(-0.1, 0.0)
    with pytest.raises(ValueError, match="finite non-negative"):
        WindowErrors(float("nan"), 0.0)
    with pytest.raises(ValueError, match="no window error"):
        WindowErrors(None, None).known(include_future=False)


def test_mae():
    assert mean_absolute_error([4, 2.5, 1], [5, 2.5, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_absolute_error([1, 2], [1])


def test_gate_commits_the_best_candidate_only_when_it_lowers_previous_plus_current():
    old = WindowErrors(previous=0.6, current=1.0, future=0.9)
    candidates = [WindowErrors(0.7, 0.8, 0.1), WindowErrors(0.5, 0.6, 2.0), WindowErrors(0.9, 0.9, 0.0)]
    decision = verify_update(old, candidates)
    # candidate 1 wins on previous + current (1.1 < 1.5 < 1.6) even though its future error is the worst:
    # the gate never looks at the future
    assert decision.committed and decision.chosen == 1 and decision.old_error == pytest.approx(1.6)
    assert "1.600" in decision.reason and decision.best_error == pytest.approx(1.1)


def test_gate_keeps_the_old_persona_on_ties_worse_candidates_or_small_gains():
    old = WindowErrors(0.5, 0.5)
    assert not verify_update(old, [WindowErrors(0.5, 0.5)]).committed  # a tie does not earn an update
    worse = verify_update(old, [WindowErrors(0.9, 0.4), WindowErrors(0.6, 0.6)])
    assert not worse.committed and worse.chosen is None and "kept the old persona" in worse.reason
    assert not verify_update(old, [WindowErrors(0.45, 0.5)], min_gain=0.1).committed
    assert verify_update(old, [WindowErrors(0.3, 0.5)], min_gain=0.1).chosen == 0
    empty = verify_update(old, [])
    assert not empty.committed and "no candidate" in empty.reason


def test_gate_breaks_ties_between_candidates_by_order():
    decision = verify_update(WindowErrors(1.0, 1.0), [WindowErrors(0.5, 0.5), WindowErrors(0.5, 0.5)])
    assert decision.chosen == 0
