"""Refiner training data: contexts (S_{t-1}, O_t), self-sampled candidates with rewards, and preference pairs."""

from __future__ import annotations

import json
import re

import pytest

from personalens.errors import PersonaLensError
from personalens.llm.base import Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.prompts import RatedItem
from personalens.refinement.rewards import Rewards, WindowErrors
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows
from personalens.training.contexts import RefineContext, build_contexts, read_contexts
from personalens.training.pairs import (
    PairConfig,
    PreferencePair,
    build_pairs,
    make_pairs,
    replay_count,
    replay_pairs,
    write_pairs,
)
from personalens.training.sampling import Candidate, SamplingConfig, read_samples, run_sampling

FILLER = " ".join(["The person weighs story, pace and tone with care."] * 3)


def _cand(text: str, total: float) -> Candidate:
    # rewards whose balanced total is ``total`` (all of it on the future window)
    return Candidate(text, WindowErrors(1.0, 1.0, 1.0), Rewards(0.0, 0.0, total))


# ---------------------------------------------------------------------------------------------- pairs


def test_pairs_take_positives_at_or_above_tau_plus_and_negatives_at_or_below_tau_minus():
    cands = [_cand("a", 0.9), _cand("b", 0.5), _cand("c", 0.2), _cand("d", 0.0), _cand("e", -0.4)]
    pairs = make_pairs("ctx", cands, PairConfig())  # τ+ 0.5, τ− 0, δ 0.5
    got = {(p.chosen, p.rejected) for p in pairs}
    # c (0.2) is in neither set; b-d has a gap of exactly δ and counts
    assert got == {("a", "d"), ("a", "e"), ("b", "d"), ("b", "e")}
    assert all(p.gap >= 0.5 and p.context_id == "ctx" for p in pairs)


def test_a_larger_margin_drops_close_pairs():
    cands = [_cand("a", 0.9), _cand("b", 0.5), _cand("d", 0.0), _cand("e", -0.4)]
    pairs = make_pairs("ctx", cands, PairConfig(margin=0.8))
    assert {(p.chosen, p.rejected) for p in pairs} == {("a", "d"), ("a", "e"), ("b", "e")}


def test_no_pair_ever_mixes_two_contexts():
    samples = {
        "u1/step1": [_cand("good-1", 1.0), _cand("bad-1", -1.0)],
        "u2/step1": [_cand("good-2", 1.0), _cand("bad-2", -1.0)],
        "u3/step1": [_cand("good-3", 1.0)],  # no negative: no pair
    }
    pairs = build_pairs(samples, PairConfig())
    assert [(p.context_id, p.chosen, p.rejected) for p in pairs] == [
        ("u1/step1", "good-1", "bad-1"),
        ("u2/step1", "good-2", "bad-2"),
    ]
    for p in pairs:
        suffix = p.context_id[1]
        assert p.chosen.endswith(suffix) and p.rejected.endswith(suffix)


def test_repeated_samples_count_once_and_the_cap_keeps_the_largest_gaps():
    cands = [_cand("a", 1.0), _cand("a", 1.0), _cand("b", 0.6), _cand("x", -1.0), _cand("y", 0.0)]
    assert len(make_pairs("c", cands, PairConfig())) == 4  # {a, b} x {x, y}
    capped = make_pairs("c", cands, PairConfig(max_pairs_per_context=2))
    assert sorted(round(p.gap, 3) for p in capped) == [1.6, 2.0]


def test_a_leaked_or_short_candidate_is_never_chosen_but_may_be_rejected():
    leaked = Candidate("names Film A", WindowErrors(1.0, 1.0, 1.0), Rewards(0.0, 0.0, 2.0), leaked=("Film A",))
    short = Candidate("too short", WindowErrors(1.0, 1.0, 1.0), Rewards(0.0, 0.0, 1.5), short=True)
    bad_leaked = Candidate("names Film B", WindowErrors(1.0, 1.0, 1.0), Rewards(0.0, 0.0, -1.0), leaked=("Film B",))
    cands = [leaked, short, _cand("clean", 0.9), bad_leaked, _cand("poor", -0.5)]
    got = {(p.chosen, p.rejected) for p in make_pairs("c", cands, PairConfig())}
    assert got == {("clean", "names Film B"), ("clean", "poor")}
    everything = {(p.chosen, p.rejected) for p in make_pairs("c", cands, PairConfig(clean_chosen=False))}
    assert {("names Film A", "poor"), ("too short", "names Film B")} <= everything and len(everything) == 6


def test_pair_config_is_validated():
    with pytest.raises(ValueError):
        PairConfig(positive_min=-1.0, negative_max=0.0)
    with pytest.raises(ValueError):
        PairConfig(margin=-0.1)
    with pytest.raises(ValueError):
        PairConfig(reward="nonsense")


def test_replay_takes_only_pairs_above_the_new_margin_and_is_seeded():
    old = [PreferencePair(f"c{i}", "w", "l", 0.5 + i / 10, 0.0, iteration=1) for i in range(10)]  # gaps .5 .. 1.4
    picked = replay_pairs(old, count=3, min_gap=0.8, seed=7)
    assert len(picked) == 3 and all(p.gap > 0.8 for p in picked)
    assert picked == replay_pairs(old, count=3, min_gap=0.8, seed=7)
    assert len(replay_pairs(old, count=100, min_gap=0.8)) == 6  # gap exactly 0.8 is not "above"
    assert replay_count(28_612, 5_000 / 33_612) == 5_000  # the paper's iteration-2 mix
    with pytest.raises(ValueError):
        replay_count(10, 1.0)


def _context(cid="data/u1/step1") -> RefineContext:
    current = (RatedItem("Film B", 4.0, 2.0),)
    return RefineContext(
        cid,
        "u1",
        "movies",
        (1.0, 5.0, 1.0),
        1,
        "Likes slow dramas.",
        (RatedItem("Film A", 2.0),),
        current,
        (RatedItem("Film C", 5.0),),
        WindowErrors(0.0, 2.0, 3.0),
    )


def test_pairs_are_written_in_trl_conversational_form(tmp_path):
    ctx = _context()
    pairs = [PreferencePair(ctx.context_id, "better", "worse", 1.25, -0.5)]
    path = write_pairs(pairs, {ctx.context_id: ctx}, tmp_path / "pairs.jsonl", min_words=10, max_words=80)
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert row["prompt"][0]["role"] == "user" and "Likes slow dramas." in row["prompt"][0]["content"]
    assert "Film B: predicted 2, actual 4" in row["prompt"][0]["content"]
    assert "Film C" not in row["prompt"][0]["content"]  # the future window is never shown
    assert row["chosen"] == [{"role": "assistant", "content": "better"}]
    assert row["rejected"] == [{"role": "assistant", "content": "worse"}]
    assert row["margin"] == 1.75 and row["context_id"] == ctx.context_id and row["iteration"] == 1
    assert not (tmp_path / "pairs.jsonl.tmp").exists()


# ---------------------------------------------------------------------------------------------- contexts + samples


class LevelPredictor:
    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        level = float(re.search(r"level (\d+)", persona).group(1))
        return [level] * len(items), Usage(calls=1)


def _user(user_id="u1") -> UserWindows:
    ratings = (2, 4, 4, 5)
    windows = tuple(tuple(RatedItem(f"{user_id}-w{i}-{j}", r) for j in range(2)) for i, r in enumerate(ratings))
    return UserWindows(user_id, "movies", (1.0, 5.0, 1.0), windows, "toy")


def _writer_model():
    counter = iter(range(10_000))
    return ScriptedChatModel(lambda request: f"Rates at level {1 + next(counter) % 5}. {FILLER}")


def _writer(model):
    return lambda _ctx: PersonaWriter(model, domain="movies", scale=(1.0, 5.0, 1.0), min_words=10, max_words=80)


def test_step1_contexts_are_built_once_and_resumed(tmp_path):
    model = ScriptedChatModel(lambda request: f"Rates at level 2. {FILLER}")
    built = build_contexts([_user("u1"), _user("u2")], tmp_path, predictor=LevelPredictor(), writer_for=_writer(model))
    assert built.built == 2 and not built.failures
    ctx = built.contexts[0]
    assert ctx.context_id == "toy/u1/step1" and ctx.step == 1
    assert ctx.errors == WindowErrors(0.0, 2.0, 2.0)  # S0 (level 2) on W0 (2), W1 (4), W2 (4)
    assert [x.predicted for x in ctx.current] == [2.0, 2.0] and all(x.predicted is None for x in ctx.future)
    calls = len(model.calls)
    again = build_contexts([_user("u1"), _user("u2")], tmp_path, predictor=LevelPredictor(), writer_for=_writer(model))
    assert again.reused == 2 and again.built == 0 and len(model.calls) == calls
    assert read_contexts(tmp_path)["toy/u2/step1"] == again.contexts[1]


def test_step2_contexts_refine_the_given_persona_and_report_missing_ones(tmp_path):
    personas = {"u1": f"Rates at level 4. {FILLER}"}
    built = build_contexts([_user("u1"), _user("u2")], tmp_path, predictor=LevelPredictor(), step=2, personas=personas)
    assert [c.context_id for c in built.contexts] == ["toy/u1/step2"]
    assert "u2" in built.failures["toy/u2/step2"]
    ctx = built.contexts[0]
    assert ctx.errors == WindowErrors(0.0, 0.0, 1.0)  # S1 (level 4) on W1 (4), W2 (4), W3 (5)
    with pytest.raises(PersonaLensError):
        from personalens.training.contexts import build_context

        build_context(_user(), "level 3", 3, LevelPredictor())  # W4 does not exist


def test_sampling_scores_every_candidate_and_resumes(tmp_path):
    ctx = build_contexts(
        [_user()],
        tmp_path,
        predictor=LevelPredictor(),
        writer_for=_writer(ScriptedChatModel(lambda r: f"level 2. {FILLER}")),
    ).contexts[0]
    model = _writer_model()
    config = SamplingConfig(candidates=4, min_words=10, max_words=80)
    run = run_sampling([ctx], tmp_path, writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    (sampled,) = run.sampled
    assert len(sampled.candidates) == 4 and run.written == 1
    for cand in sampled.candidates:
        level = float(re.search(r"level (\d+)", cand.text).group(1))
        assert cand.errors.future == abs(level - 4)
        assert cand.rewards.future == pytest.approx(2.0 - abs(level - 4))  # S0's future MAE was 2
    requests = [c for c in model.calls]
    assert len({r.seed for r in requests}) == 4  # every candidate its own sample
    assert all(r.temperature == 1.0 and r.top_p == 0.4 and r.repetition_penalty == 1.1 for r in requests)
    # resumed: nothing sampled again
    again = run_sampling([ctx], tmp_path, writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    assert again.reused == 1 and len(model.calls) == len(requests)
    assert read_samples(tmp_path)[ctx.context_id][0].text == sampled.candidates[0].text
    with pytest.raises(PersonaLensError, match="not resuming"):
        run_sampling(
            [ctx], tmp_path, writer_for=_writer(model), predictor=LevelPredictor(), config=SamplingConfig(candidates=2)
        )


def _built_context(tmp_path):
    return build_contexts(
        [_user()],
        tmp_path,
        predictor=LevelPredictor(),
        writer_for=_writer(ScriptedChatModel(lambda r: f"level 2. {FILLER}")),
    ).contexts[0]


def test_a_repeated_candidate_is_drawn_again_from_a_slot_after_the_first_m(tmp_path):
    ctx = _built_context(tmp_path / "ctx")
    # slots 1 and 2 write the same text (up to whitespace); slot 4, the first spare after M = 3, writes a new one
    answers = {1: f"level 3. {FILLER}", 2: f"level  3.\n{FILLER}", 3: f"level 5. {FILLER}", 4: f"level 1. {FILLER}"}
    model = ScriptedChatModel(lambda r: answers[r.seed])
    config = SamplingConfig(candidates=3, min_words=10, max_words=80, redraw_duplicates=2)
    run = run_sampling([ctx], tmp_path / "s", writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    (sampled,) = run.sampled
    assert [c.text.split(".")[0] for c in sampled.candidates] == ["level 3", "level 1", "level 5"]
    assert [r.seed for r in model.calls] == [1, 2, 4, 3]
    assert (sampled.redrawn, sampled.duplicates) == (1, 0) and (run.redrawn, run.duplicates) == (1, 0)
    row = json.loads((tmp_path / "s" / "samples.jsonl").read_text())
    assert (row["redrawn"], row["duplicates"]) == (1, 0)
    again = run_sampling([ctx], tmp_path / "s", writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    assert again.reused == 1 and again.redrawn == 1  # the counts survive a resume


def test_a_duplicate_is_kept_and_counted_once_its_redraws_are_used_up(tmp_path):
    ctx = _built_context(tmp_path / "ctx")
    model = ScriptedChatModel(lambda r: f"level 3. {FILLER}")  # every slot writes the same answer
    config = SamplingConfig(candidates=3, min_words=10, max_words=80, redraw_duplicates=2)
    run = run_sampling([ctx], tmp_path / "s", writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    (sampled,) = run.sampled
    assert len(sampled.candidates) == 3  # nothing dropped
    assert (sampled.redrawn, sampled.duplicates) == (4, 2)
    assert [r.seed for r in model.calls] == [1, 2, 4, 5, 3, 6, 7]  # slots 1..3 first, spares 4..7 after
    assert len({r.seed for r in model.calls}) == len(model.calls)


def test_redraw_zero_keeps_duplicates_as_deeper_does_and_old_stamps_mean_zero(tmp_path):
    ctx = _built_context(tmp_path / "ctx")
    model = ScriptedChatModel(lambda r: f"level 3. {FILLER}")
    config = SamplingConfig(candidates=3, min_words=10, max_words=80, redraw_duplicates=0)
    run = run_sampling([ctx], tmp_path / "s", writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    assert [r.seed for r in model.calls] == [1, 2, 3] and run.duplicates == 2 and run.redrawn == 0
    stamp = tmp_path / "s" / "samples.json"
    stored = json.loads(stamp.read_text())
    del stored["redraw_duplicates"]  # a run sampled before the setting existed
    stamp.write_text(json.dumps(stored))
    resumed = run_sampling([ctx], tmp_path / "s", writer_for=_writer(model), predictor=LevelPredictor(), config=config)
    assert resumed.reused == 1
    with pytest.raises(PersonaLensError, match="not resuming"):
        run_sampling(
            [ctx],
            tmp_path / "s",
            writer_for=_writer(model),
            predictor=LevelPredictor(),
            config=SamplingConfig(candidates=3, min_words=10, max_words=80),  # default 2: another sampling rule
        )


def test_sampling_slots_of_one_seed_cannot_overflow_into_the_next():
    with pytest.raises(ValueError, match="sample slots"):
        SamplingConfig(candidates=500, redraw_duplicates=1)
    with pytest.raises(ValueError, match="redraw_duplicates"):
        SamplingConfig(redraw_duplicates=-1)
