"""Before/after training comparison: every refiner refines the same S0 once; one predictor scores all."""

from __future__ import annotations

import math
import re
import statistics

from personalens.llm.base import Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.prompts import RatedItem
from personalens.refinement.windows import UserWindows
from personalens.training.evaluate import compare_refiners, paired_against, render_one_step, summarise_one_step

FILLER = " ".join(["The person weighs story, pace and tone with care."] * 3)


class LevelPredictor:
    def __init__(self):
        self.personas = []

    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        self.personas.append(persona)
        return [float(re.search(r"level (\d+)", persona).group(1))] * len(items), Usage(calls=1)


def _user(user_id):
    ratings = (2, 4, 4)
    windows = tuple(tuple(RatedItem(f"{user_id}-w{i}-{j}", r) for j in range(2)) for i, r in enumerate(ratings))
    return UserWindows(user_id, "movies", (1.0, 5.0, 1.0), windows, "toy")


def _says(level, model_id):
    return ScriptedChatModel(lambda request: f"Rates at level {level}. {FILLER}", model_id=model_id)


def test_refiners_share_s0_and_the_predictor_and_the_table_shows_the_change(tmp_path):
    base, trained = _says(3, "base"), _says(4, "trained")
    predictor = LevelPredictor()
    initial = _says(2, "writer")
    rows = compare_refiners(
        [_user("a"), _user("b")],
        {"base": base, "trained": trained},
        tmp_path,
        initial_writer=initial,
        predictor=predictor,
        min_words=10,
        max_words=80,
    )
    assert len(rows) == 4 and len(initial.calls) == 2  # one S0 per user, shared by both refiners
    table = summarise_one_step(rows)["toy"]
    assert table["base"]["before_future"] == table["trained"]["before_future"] == 2.0  # S0 (level 2) on W2 (4)
    assert table["base"]["after_future"] == 1.0 and table["trained"]["after_future"] == 0.0
    assert table["trained"]["future_change_pct"] == -100.0 and table["base"]["users"] == 2
    md = render_one_step(rows)
    assert "| toy | trained | 2 | 2.000 | 0.000 | -2.000 (-100.0%)" in md
    # resumed: nothing is run again
    again = compare_refiners(
        [_user("a"), _user("b")],
        {"base": base, "trained": trained},
        tmp_path,
        initial_writer=initial,
        predictor=predictor,
        min_words=10,
        max_words=80,
    )
    assert len(again) == 4 and len(initial.calls) == 2 and len(trained.calls) == 2


def test_users_missing_a_refiner_are_left_out_of_the_table():
    row = {
        "domain": "d",
        "before": {"previous": 1, "current": 1, "future": 1},
        "after": {"previous": 1, "current": 1, "future": 0.5},
    }
    rows = [
        row | {"user": "a", "refiner": "x"},
        row | {"user": "a", "refiner": "y"},
        row | {"user": "b", "refiner": "x"},
    ]
    assert summarise_one_step(rows)["d"]["x"]["users"] == 1


def test_refiners_are_compared_with_the_base_user_by_user():
    def row(user, refiner, future, domain="d"):
        return {
            "domain": domain,
            "user": user,
            "refiner": refiner,
            "before": {"previous": 1, "current": 1, "future": 1},
            "after": {"previous": 1, "current": 1, "future": future},
        }

    rows = [
        row("a", "base", 1.0), row("a", "iteration 1", 0.5),
        row("b", "base", 0.8), row("b", "iteration 1", 0.8),
        row("c", "base", 0.4, "e"), row("c", "iteration 1", 0.7, "e"),
        row("d", "iteration 1", 0.0),  # no base row: not paired
    ]  # fmt: skip
    p = paired_against(rows)["iteration 1"]
    assert p["users"] == 3 and (p["lower"], p["equal"], p["higher"]) == (1, 1, 1)
    assert abs(p["mean_diff"] - (-0.5 + 0.0 + 0.3) / 3) < 1e-12
    assert abs(p["se"] - statistics.stdev([-0.5, 0.0, 0.3]) / 3**0.5) < 1e-12
    assert "base" not in paired_against(rows)
    md = render_one_step(rows)
    assert "| iteration 1 | 3 | -0.067 ± 0.233 | 1 / 1 / 1 |" in md
    single = paired_against(rows[:2])["iteration 1"]
    assert single["users"] == 1 and math.isnan(single["se"])
    assert "| iteration 1 | 1 | -0.500 | 1 / 0 / 0 |" in render_one_step(rows[:2])


def test_rows_of_other_writer_settings_are_moved_aside_and_redone_from_a_new_s0(tmp_path):
    from personalens.refinement.strategies import PersonaWriter

    def rewriting(model, user):
        return PersonaWriter(
            model, domain=user.domain, scale=user.scale, min_words=10, max_words=80, short_answers="rewrite"
        )

    users = [_user("a")]
    kw = {"predictor": LevelPredictor(), "min_words": 10, "max_words": 80}
    first = compare_refiners(users, {"base": _says(3, "base")}, tmp_path, initial_writer=_says(2, "w1"), **kw)
    assert first[0]["writer"]["short_answers"] == "extend" and first[0]["writer"]["reask_unchanged"] is True
    assert "model" not in first[0]["writer"]

    # another writer: the old row goes to the stale file and the user is redone, S0 included
    writer2 = _says(1, "w2")
    rows = compare_refiners(
        users, {"base": _says(3, "base")}, tmp_path, initial_writer=writer2, writer_for=rewriting, **kw
    )
    assert len(rows) == 1 and rows[0]["writer"]["short_answers"] == "rewrite"
    assert rows[0]["initial"].startswith("Rates at level 1") and len(writer2.calls) == 1
    stale = (tmp_path / "one_step.stale.jsonl").read_text().splitlines()
    assert len(stale) == 1 and '"extend"' in stale[0]
    assert len((tmp_path / "one_step.jsonl").read_text().splitlines()) == 1

    # the same writer again: nothing moves, nothing runs
    again = compare_refiners(
        users, {"base": _says(3, "base")}, tmp_path, initial_writer=writer2, writer_for=rewriting, **kw
    )
    assert again == rows and len(writer2.calls) == 1
    assert len((tmp_path / "one_step.stale.jsonl").read_text().splitlines()) == 1


def test_a_second_comparison_can_start_from_the_s0_of_the_first(tmp_path):
    first = compare_refiners(
        [_user("a")],
        {"base": _says(3, "base")},
        tmp_path / "first",
        initial_writer=_says(2, "writer"),
        predictor=LevelPredictor(),
        min_words=10,
        max_words=80,
    )
    writer = _says(5, "another writer")
    second = compare_refiners(
        [_user("a"), _user("b")],
        {"base": _says(3, "base")},
        tmp_path / "second",
        initial_writer=writer,
        predictor=LevelPredictor(),
        min_words=10,
        max_words=80,
        initial={r["user"]: r["initial"] for r in first},
    )
    by_user = {r["user"]: r for r in second}
    assert by_user["a"]["initial"] == first[0]["initial"] and by_user["a"]["before"]["future"] == 2.0
    assert len(writer.calls) == 1 and "level 5" in by_user["b"]["initial"]  # only the user without a given S0
