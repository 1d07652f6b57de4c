"""The multi-round dynamic experiment on DeePer-format files the test writes: every method per user, resumable."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from personalens.errors import ConfigError
from personalens.llm.base import Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.experiment import (
    DynamicExperiment,
    load_dynamic_config,
    read_dynamic_rows,
    render_dynamic_markdown,
    summarise,
)

FILLER = " ".join(["The person weighs story, pace and tone with care."] * 3)


class LevelPredictor:
    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        level = float(re.search(r"level (\d+)", persona).group(1))
        return [level] * len(items), Usage(calls=1)


def _write_domain(root, name="movielens_20m", users=("a", "b", "c"), rounds=2):
    d = root / name
    d.mkdir(parents=True)
    for k in range(1, rounds + 1):
        lines = []
        for u in users:
            obj = {"id": u, "iteration": k, "item_type": "movie", "split": "eval", "dataset_name": name}
            for j in (k - 1, k, k + 1):
                obj[f"I{j}"] = [f"{u}-w{j}-x", f"{u}-w{j}-y"]
                obj[f"U{j}"] = [float(1 + j), float(1 + j)]
            lines.append(json.dumps(obj))
        (d / f"test_iteration_{k}.jsonl").write_text("\n".join(lines) + "\n")


def _config(tmp_path, extra=""):
    _write_domain(tmp_path / "deeper")
    path = tmp_path / "dyn.toml"
    path.write_text(
        'name = "toy"\n[data]\nroot = "deeper"\ndomains = ["movielens_20m"]\nusers_per_domain = 2\nrounds = 2\n'
        '[refine]\nstrategies = ["refine", "inc_update"]\nverified = ["refine"]\ncandidates = 2\n'
        "min_words = 10\nmax_words = 80\n" + extra
    )
    return load_dynamic_config(path)


def _model():
    counter = iter(range(10_000))
    return ScriptedChatModel(lambda request: f"Rates at level {1 + next(counter) % 5}. {FILLER}")


def test_every_method_runs_per_sampled_user_and_a_rerun_skips_them(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "out"
    summary = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    # 3 methods, the no-update control and the no-LLM reference, per user
    assert summary.rows_written == 2 * 5 and not summary.failures
    rows = read_dynamic_rows(out / "rows.jsonl")
    assert {r["method"] for r in rows} == {"refine", "inc_update", "verified-refine", "no-update", "history-mean"}
    assert len({r["user"] for r in rows}) == 2 and all(len(r["rounds"]) == 2 for r in rows)
    again = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    assert again.rows_written == 0 and again.rows_skipped == 10
    table = summarise(rows)["movielens_20m"]
    keys = {f"{a}_{w}" for a in ("before", "after") for w in ("previous", "current", "future")}
    for entry in table.values():
        assert entry["users"] == 2 and len(entry["future_mae_by_round"]) == 3 and set(entry["round1"]) == keys
    verified = [x for r in rows if r["method"] == "verified-refine" for x in r["rounds"]]
    assert all(x["gate"] is not None for x in verified)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'strategy'"):
        _config(tmp_path, 'strategy = "refine"\n')
    (tmp_path / "bad.toml").write_text('[data]\nroot = "x"\n')
    with pytest.raises(ConfigError, match="root and domains are required"):
        load_dynamic_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('[data]\nroot = "x"\ndomains = ["d"]\n[refine]\nstrategies = ["rewrite"]\n')
    with pytest.raises(ConfigError, match="unknown strategy"):
        load_dynamic_config(tmp_path / "bad2.toml")
    (tmp_path / "bad3.toml").write_text('[data]\nroot = "x"\ndomains = ["d"]\n[refine]\nreferences = ["mode"]\n')
    with pytest.raises(ConfigError, match="references: unknown \\['mode'\\]"):
        load_dynamic_config(tmp_path / "bad3.toml")


def test_history_mean_reference_is_scored_like_a_strategy_without_any_llm_call(tmp_path):
    """Window j of the toy data rates both items 1 + j: W0 = 1, W1 = 2, W2 = 3, W3 = 4. The reference's "persona"
    after round t is the mean of W0..Wt, so S0 = 1 (error 1 on W1), S1 = 1.5 (1.5 on W2), S2 = 2 (2 on W3)."""
    from personalens.refinement.experiment import write_dynamic_report

    config = _config(tmp_path)
    out = tmp_path / "out"
    model = _model()
    DynamicExperiment(config, out, model=model, predictor=LevelPredictor()).run()
    rows = [r for r in read_dynamic_rows(out / "rows.jsonl") if r["method"] == "history-mean"]
    assert len(rows) == 2 and all(r["reference"] and r["usage"]["calls"] == 0 and r["initial"] == "" for r in rows)
    first = rows[0]["rounds"][0]
    assert first["mae_before"] == {"previous": 0.0, "current": 1.0, "future": 2.0}
    assert first["mae_after"] == {"previous": 0.5, "current": 0.5, "future": 1.5}
    assert first["rewards"]["r_fut"] == pytest.approx(0.5) and first["rewards"]["r_total"] == pytest.approx(
        0.5 - 0.5 + 0.5
    )
    assert first["persona_words"] == 0
    entry = summarise(read_dynamic_rows(out / "rows.jsonl"))["movielens_20m"]["history-mean"]
    assert entry["future_mae_by_round"] == [1.0, 1.5, 2.0] and entry["change_pct"] == pytest.approx(100.0)
    assert entry["reference"] and entry["persona_words_by_round"] is None and entry["llm_calls_per_user"] == 0
    text = write_dynamic_report(out)["markdown"].read_text()
    assert "| history-mean (no LLM) | 2 | 1.000 | 1.500 | 2.000 |" in text
    assert "| history-mean" not in text[text.index("### Persona length") :]  # no persona, no length row
    none = _config(tmp_path / "off", "references = []\n")
    assert (
        DynamicExperiment(none, tmp_path / "out2", model=_model(), predictor=LevelPredictor()).run().rows_written == 8
    )


def test_report_shows_the_paper_layouts(tmp_path):
    from personalens.refinement.experiment import write_dynamic_report

    config = _config(tmp_path)
    out = tmp_path / "out"
    DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    paths = write_dynamic_report(out)
    text = paths["markdown"].read_text()
    assert "Future-window MAE per round" in text and "| verified-refine | 2 |" in text
    assert "Round 1: MAE before → after" in text and "Persona length" in text
    assert json.loads(paths["json"].read_text())["movielens_20m"]["refine"]["users"] == 2


# ---------------------------------------------------------------------------------------------------- plots
def _plotted_run(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "out"
    DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    return out


def test_report_draws_figure4_and_table2_plots_and_links_them(tmp_path):
    pytest.importorskip("matplotlib")
    from personalens.refinement.experiment import write_dynamic_report

    out = _plotted_run(tmp_path)
    paths = write_dynamic_report(out)
    assert paths["fig4"] == out / "fig4_future_mae.png"
    assert paths["table2_plot"] == out / "table2_persona_words.png"
    for key in ("fig4", "table2_plot"):
        assert paths[key].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    text = paths["markdown"].read_text()
    assert "## Plots" in text and text.index("## Plots") < text.index("## movielens_20m")
    assert "![Future-window MAE per round (Figure 4 layout)](fig4_future_mae.png)" in text
    assert "(table2_persona_words.png)" in text


def test_without_matplotlib_no_plots_and_the_report_still_writes(tmp_path, monkeypatch):
    import sys

    from personalens.refinement.experiment import plot_dynamic, write_dynamic_report

    out = _plotted_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    summary = summarise(read_dynamic_rows(out / "rows.jsonl"))
    assert plot_dynamic(summary, out) == {}
    paths = write_dynamic_report(out)
    assert set(paths) == {"json", "markdown"}
    text = paths["markdown"].read_text()
    assert "## Plots" not in text and ".png" not in text and "| verified-refine | 2 |" in text
    assert not list(out.glob("*.png"))


def _plot_row(domain, user, method, n_rounds, level=1.0):
    window = {"previous": level, "current": level, "future": level}
    rounds = [
        {
            "mae_before": window,
            "mae_after": {**window, "future": level - 0.1 * (t + 1)},
            "persona_words": 100 + 10 * t,
            "committed": True,
        }
        for t in range(n_rounds)
    ]
    return {
        "domain": domain,
        "user": user,
        "method": method,
        "initial": "a short persona",
        "initial_error": level,
        "rounds": rounds,
        "usage": {"calls": n_rounds, "total_tokens": 10 * n_rounds},
    }


def test_plots_cope_with_several_domains_and_uneven_round_counts(tmp_path):
    pytest.importorskip("matplotlib")
    from personalens.refinement.experiment import _method_order, plot_dynamic, write_dynamic_report

    rows = [
        _plot_row("books", "u1", "refine", 3),
        _plot_row("books", "u2", "refine", 3),
        _plot_row("books", "u1", "zz_custom", 1),
        _plot_row("food", "u1", "refine", 2, level=2.0),
        _plot_row("food", "u1", "verified-refine", 4, level=2.0),
    ]
    out = tmp_path / "out"
    out.mkdir()
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"name": "toy", "source": "toy.toml", "domains": ["books", "food"], "users_per_domain": 2, "rounds": 4}
    (out / "config.json").write_text(json.dumps(config))
    summary = summarise(rows)
    assert _method_order(summary) == ["refine", "verified-refine", "zz_custom"]
    assert len(summary["books"]["refine"]["future_mae_by_round"]) == 4
    assert len(summary["food"]["verified-refine"]["persona_words_by_round"]) == 5
    paths = write_dynamic_report(out)
    assert {"fig4", "table2_plot"} <= set(paths) and "## Plots" in paths["markdown"].read_text()
    assert all(paths[k].read_bytes().startswith(b"\x89PNG") for k in ("fig4", "table2_plot"))
    assert plot_dynamic({}, tmp_path / "empty") == {}


def test_a_larger_user_sample_extends_the_smaller_one():
    from personalens.refinement.experiment import sample_users
    from personalens.refinement.prompts import RatedItem
    from personalens.refinement.windows import UserWindows

    w = (RatedItem("x", 3.0),)
    users = [UserWindows(f"u{i:02d}", "movies", (1, 5, 1), (w, w, w, w)) for i in range(40)]
    users.append(UserWindows("short", "movies", (1, 5, 1), (w, w)))  # too few windows for 2 rounds
    small = [u.user_id for u in sample_users(users, 5, seed=0, rounds=2)]
    large = [u.user_id for u in sample_users(list(reversed(users)), 20, seed=0, rounds=2)]
    assert large[:5] == small and len(set(large)) == 20 and "short" not in large
    assert len(sample_users(users, 100, seed=0, rounds=2)) == 40


def _row(domain, user, method, initial, futures):
    rounds = [
        {
            "mae_after": {"previous": 0.0, "current": 0.0, "future": f},
            "mae_before": {"previous": 0.0, "current": 0.0, "future": f},
            "persona_words": 200,
            "committed": True,
        }
        for f in futures
    ]
    usage = {"calls": 1, "total_tokens": 10}
    return {
        "domain": domain,
        "user": user,
        "method": method,
        "initial": "x y",
        "initial_error": initial,
        "rounds": rounds,
        "usage": usage,
    }


def test_methods_are_compared_on_the_users_that_finished_every_method():
    rows = [
        _row("d", "a", "refine", 1.0, [0.8]),
        _row("d", "a", "inc_update", 1.0, [0.9]),
        _row("d", "b", "refine", 1.0, [0.0]),  # b stopped before inc_update: left out of both
        _row("d", "c", "refine", 1.0, [0.6]),
        _row("d", "c", "inc_update", 1.0, [1.1]),
    ]
    table = summarise(rows)["d"]
    assert table["refine"]["users"] == table["inc_update"]["users"] == 2
    assert table["refine"]["future_mae_by_round"] == pytest.approx([1.0, 0.7])
    assert table["refine"]["change_pct"] == pytest.approx(-30.0)
    assert table["refine"]["change_se"] == pytest.approx(0.1)  # per-user changes -0.2 and -0.4


def test_updates_that_copy_the_old_persona_back_are_counted():
    row = _row("d", "a", "inc_update", 1.0, [0.9, 0.9, 0.8])
    row["initial"] = "old persona"
    for x, text in zip(row["rounds"], ["new persona", "new persona ", "newer persona"], strict=True):
        x["persona"] = text  # round 2 copies round 1 (up to whitespace)
    kept = _row("d", "a", "refine+verified", 1.0, [1.0, 0.9, 0.9])
    kept["initial"] = "old persona"
    for x, text, ok in zip(kept["rounds"], ["old persona", "p1", "p1"], [False, True, True], strict=True):
        x["persona"], x["committed"] = text, ok  # round 1 kept the old persona: not an echo
    table = summarise([row, kept])["d"]
    assert table["inc_update"]["unchanged_share"] == pytest.approx(1 / 3)
    assert table["refine+verified"]["unchanged_share"] == pytest.approx(1 / 2)
    assert table["refine+verified"]["committed_share"] == pytest.approx(2 / 3)
    assert table["inc_update"]["near_copy_share"] == pytest.approx(1 / 3)  # only the copy: the others keep 1 of 2 words
    plain = summarise([_row("d", "a", "refine", 1.0, [0.9])])["d"]["refine"]
    assert plain["unchanged_share"] is None  # rows without persona texts
    assert plain["near_copy_share"] is None


def test_an_update_that_changes_a_word_or_two_is_a_near_copy_but_not_unchanged(tmp_path):
    old = " ".join(f"w{i}" for i in range(100))
    row = _row("d", "a", "inc_update", 1.0, [0.9, 0.9, 0.8])
    row["initial"] = old
    texts = [
        old.replace("w7 ", "x7 "),  # one word of 100 changed: ratio 0.99
        old.replace("w7 ", "x7 ").replace("w50 w51 w52 w53 w54 w55 ", ""),  # 6 dropped: ratio 94/97 ≈ 0.969
        " ".join(f"v{i}" for i in range(100)),  # rewritten
    ]
    for x, text in zip(row["rounds"], texts, strict=True):
        x["persona"] = text
    m = summarise([row])["d"]["inc_update"]
    assert m["unchanged_share"] == 0
    assert m["near_copy_share"] == pytest.approx(2 / 3)
    write_dir = tmp_path / "out"
    write_dir.mkdir()
    (write_dir / "rows.jsonl").write_text(json.dumps(row) + "\n")
    config = {"name": "t", "source": "t.toml", "domains": ["d"], "users_per_domain": 1, "rounds": 3}
    (write_dir / "config.json").write_text(json.dumps(config))
    report = render_dynamic_markdown(write_dir)
    assert "| unchanged | near copies |" in report
    assert "| 100% | 0% | 67% |" in report


def test_rows_from_an_older_method_configuration_are_moved_aside_and_redone(tmp_path):
    config = dataclasses.replace(_config(tmp_path), strategies=("refine", "slide_regen"), verified=())
    out = tmp_path / "out"
    DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    rows_path = out / "rows.jsonl"
    rows = read_dynamic_rows(rows_path)
    # only the update that rewrites the old persona records the re-ask settings; a regeneration cannot re-ask
    assert {r["method"] for r in rows if "reask_sampling" in r["config"].get("writer", {})} == {"refine"}
    # the rows as written before the copy re-ask sampled: the writer's config had no re-ask settings
    for r in rows:
        r["config"].get("writer", {}).pop("reask_sampling", None)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    # a regeneration never re-asks for a copy, nor does the no-update control, so their rows (and the reference's)
    # still match and stay
    assert again.rows_stale == 2 and again.rows_written == 2 and again.rows_skipped == 6
    stale = read_dynamic_rows(out / "stale.jsonl")
    assert [r["method"] for r in stale] == ["refine", "refine"]
    now = read_dynamic_rows(rows_path)
    assert sorted((r["user"], r["method"]) for r in now) == sorted({(r["user"], r["method"]) for r in now})
    assert all(r["config"]["writer"]["reask_sampling"]["temperature"] == 0.7 for r in now if r["method"] == "refine")
    third = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    assert third.rows_stale == 0 and third.rows_written == 0


def test_table2_reports_short_and_self_repeating_personas():
    from personalens.refinement.experiment import _persona_quality

    padded = "likes quiet films a lot. likes quiet films a lot."  # 10 words
    fresh = "one two three four five six seven eight nine ten eleven twelve"
    row = {
        "initial": padded,
        "config": {"writer": {"min_words": 11}},
        "rounds": [{"persona": fresh, "committed": True}, {"persona": padded, "committed": True}],
    }
    quality = _persona_quality([row], 2)
    assert quality["short_share"] == pytest.approx(2 / 3)  # the two padded versions have 10 words
    # padded: 8 trigrams; the second copy's "likes quiet films", "quiet films a", "films a lot" repeat
    repeated = 3 / 8
    assert quality["repeated_trigrams"] == pytest.approx((repeated + 0 + repeated) / 3)
    # rows without the writer's minimum leave the share unknown, not zero
    assert _persona_quality([{**row, "config": {}}], 2)["short_share"] is None
    assert quality["leaked_share"] is None and quality["cut_share"] is None  # no flags recorded


def test_table2_reports_updates_that_name_items_or_were_cut_to_their_revision():
    from personalens.refinement.experiment import _persona_quality

    flags = [
        {"leaked": ["Gamma Road"], "cut_to_revision": 1},
        {"leaked": [], "cut_to_revision": 0},
        {"leaked": [], "cut_to_revision": 0},
    ]
    rounds = [{"persona": "x", "committed": True, "flags": f} for f in flags]
    rounds.append({"persona": "x", "committed": False, "flags": {}})  # a verified round: its gate, no flags
    quality = _persona_quality([{"initial": "x", "rounds": rounds}], 4)
    assert quality["leaked_share"] == pytest.approx(1 / 3) and quality["cut_share"] == pytest.approx(1 / 3)
    older = [{"persona": "x", "committed": True, "flags": {"leaked": []}}]  # written before cuts were counted
    assert _persona_quality([{"initial": "x", "rounds": older}], 1)["cut_share"] is None


def test_a_repetition_penalty_reaches_every_persona_request_and_the_rows(tmp_path):
    config = _config(tmp_path, "repetition_penalty = 1.2\n")
    model = _model()
    DynamicExperiment(config, tmp_path / "out", model=model, predictor=LevelPredictor()).run()
    assert model.calls and all(c.repetition_penalty == 1.2 for c in model.calls)
    rows = read_dynamic_rows(tmp_path / "out" / "rows.jsonl")
    assert all(r["config"]["writer"]["repetition_penalty"] == 1.2 for r in rows if not r.get("reference"))
    with pytest.raises(ConfigError, match="repetition_penalty"):
        _config(tmp_path / "other", "repetition_penalty = 0.5\n")


def test_rows_record_the_answer_clean_ups_and_each_can_be_turned_off(tmp_path):
    model = _model()
    DynamicExperiment(_config(tmp_path, ""), tmp_path / "out", model=model, predictor=LevelPredictor()).run()
    rows = [r for r in read_dynamic_rows(tmp_path / "out" / "rows.jsonl") if not r.get("reference")]
    assert rows and all(r["config"]["writer"]["revised_only"] is True for r in rows)
    assert all(r["config"]["writer"]["drop_naming"] is True for r in rows)
    assert all("cut_to_revision" in rd["flags"] for r in rows for rd in r["rounds"] if rd["flags"])
    assert all("dropped_sentences" in rd["flags"] for r in rows for rd in r["rounds"] if rd["flags"])
    off = _config(tmp_path / "off", "revised_only = false\ndrop_naming = false\n")
    assert off.revised_only is False and off.drop_naming is False
    DynamicExperiment(off, tmp_path / "off" / "out", model=_model(), predictor=LevelPredictor()).run()
    rows = [r for r in read_dynamic_rows(tmp_path / "off" / "out" / "rows.jsonl") if not r.get("reference")]
    assert rows and all("revised_only" not in r["config"]["writer"] for r in rows)
    assert all("drop_naming" not in r["config"]["writer"] for r in rows)
    with pytest.raises(ConfigError, match="revised_only"):
        _config(tmp_path / "bad", 'revised_only = "no"\n')
    with pytest.raises(ConfigError, match="drop_naming"):
        _config(tmp_path / "bad2", "drop_naming = 1\n")


def test_the_overall_table_weighs_each_domain_the_same_and_counts_users_lowered():
    from personalens.refinement.experiment import summarise_overall

    rows = [
        _row("small scale", "a", "refine", 1.0, [0.8]),  # -20%
        _row("small scale", "b", "refine", 1.0, [1.2]),  # +20%: the domain's mean is unchanged (0%)
        _row("small scale", "a", "inc_update", 1.0, [1.1]),
        _row("small scale", "b", "inc_update", 1.0, [1.1]),  # +10%
        _row("big scale", "c", "refine", 4.0, [2.0]),  # -50%
        _row("big scale", "c", "inc_update", 4.0, [4.0]),  # 0%
    ]
    overall = summarise_overall(summarise(rows))
    assert list(overall) == ["refine", "inc_update"]  # lowest mean change first
    assert overall["refine"]["mean_change_pct"] == pytest.approx((0.0 - 50.0) / 2)
    assert (overall["refine"]["domains"], overall["refine"]["users"], overall["refine"]["lowered"]) == (2, 3, 2)
    assert overall["inc_update"]["mean_change_pct"] == pytest.approx(5.0) and overall["inc_update"]["lowered"] == 0


def test_the_no_update_control_keeps_s0_and_scores_it_on_every_round(tmp_path):
    from personalens.refinement.experiment import write_dynamic_report

    config = _config(tmp_path, "references = []\n")
    # deterministic like a greedy model behind the response cache: the same prompt gets the same answer
    model = ScriptedChatModel(lambda r: f"Rates at level {1 + len(r.messages[-1].content) % 5}. {FILLER}")
    DynamicExperiment(config, tmp_path / "out", model=model, predictor=LevelPredictor()).run()
    rows = read_dynamic_rows(tmp_path / "out" / "rows.jsonl")
    frozen = [r for r in rows if r["method"] == "no-update"]
    assert len(frozen) == 2 and all(r["config"]["frozen"] and "strategy" not in r["config"] for r in frozen)
    for r in frozen:
        assert all(x["persona"] == r["initial"] and not x["committed"] for x in r["rounds"])
        assert all(x["mae_before"] == x["mae_after"] for x in r["rounds"])
        same_s0 = {x["initial"] for x in rows if x["user"] == r["user"]}
        assert same_s0 == {r["initial"]}  # every method starts from the same S0
    text = write_dynamic_report(tmp_path / "out")["markdown"].read_text()
    assert "| no-update |" in text
    off = _config(tmp_path / "off", "no_update = false\n")
    assert all(not m.frozen for m in off.methods())
    from personalens.refinement.loop import RefineConfig

    with pytest.raises(ValueError, match="frozen"):
        RefineConfig(frozen=True, verified=True)


def test_the_overall_table_pairs_each_method_with_the_no_update_control_user_by_user():
    from personalens.refinement.experiment import summarise_overall

    rows = [
        _row("d1", "a", "refine", 1.0, [0.8]),
        _row("d1", "a", "no-update", 1.0, [1.0]),
        _row("d1", "b", "refine", 1.0, [1.1]),
        _row("d1", "b", "no-update", 1.0, [1.0]),
        _row("d2", "c", "refine", 2.0, [1.0]),
        _row("d2", "c", "no-update", 2.0, [2.0]),
    ]
    paired = summarise_overall(summarise(rows))["refine"]["vs_no_update_paired"]
    assert paired["users"] == 3 and paired["mean_diff"] == pytest.approx((-0.2 + 0.1 - 1.0) / 3)
    assert (paired["lower"], paired["higher"]) == (2, 1) and paired["se"] is not None
    assert summarise_overall(summarise(rows))["refine"]["vs_no_update_pct"] == pytest.approx((-5.0 - 50.0) / 2)


def test_every_method_of_a_user_starts_from_one_s0_written_once_and_reused_on_a_rerun(tmp_path):
    config = _config(tmp_path, "references = []\n")
    model = _model()  # a different answer to every request: nothing is shared by accident
    out = tmp_path / "out"
    DynamicExperiment(config, out, model=model, predictor=LevelPredictor()).run()
    rows = read_dynamic_rows(out / "rows.jsonl")
    for user in {r["user"] for r in rows}:
        mine = [r for r in rows if r["user"] == user]
        assert len({r["initial"] for r in mine}) == 1
        assert sum(r["initial_usage"]["calls"] for r in mine) == 1  # written once, its cost on one row
    first_persona_requests = [c for c in model.calls if "Write a profile" in c.messages[-1].content]
    assert len(first_persona_requests) == 2  # one per user
    # a rerun that redoes one method of a user reuses the S0 the user's other rows hold
    kept = [r for r in rows if not (r["user"] == rows[0]["user"] and r["method"] == "refine")]
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    again = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    assert again.rows_written == 1
    redone = [r for r in read_dynamic_rows(out / "rows.jsonl") if r["user"] == rows[0]["user"]]
    assert len({r["initial"] for r in redone}) == 1 and len(redone) == len(
        [r for r in rows if r["user"] == rows[0]["user"]]
    )


def test_a_verified_method_is_paired_with_its_plain_strategy_for_cost_and_gain():
    from personalens.refinement.experiment import verified_against_plain

    rows = [
        _row("d", "a", "refine", 1.0, [0.9]),
        _row("d", "a", "verified-refine", 1.0, [0.7]),
        _row("d", "b", "refine", 1.0, [0.8]),
        _row("d", "b", "verified-refine", 1.0, [0.9]),
    ]
    for r in rows:
        if r["method"] == "verified-refine":
            r["usage"] = {"calls": 5, "total_tokens": 50}
    v = verified_against_plain(summarise(rows))["verified-refine"]
    assert v["plain"] == "refine" and v["users"] == 2 and v["mean_diff"] == pytest.approx((-0.2 + 0.1) / 2)
    assert (v["lower"], v["higher"]) == (1, 1) and (v["calls_per_user"], v["plain_calls_per_user"]) == (5, 1)
    assert v["committed_share"] == 1.0
    assert verified_against_plain(summarise([_row("d", "a", "refine", 1.0, [0.9])])) == {}


def test_s0_is_not_taken_from_a_method_no_longer_configured(tmp_path):
    def tagged(tag):  # every answer names its run, so an S0 says which run wrote it
        counter = iter(range(10_000))
        return ScriptedChatModel(lambda request: f"Rates at level {1 + next(counter) % 5}. Run {tag}. {FILLER}")

    old = _config(tmp_path, "references = []\nrevised_only = false\n")
    out = tmp_path / "out"
    DynamicExperiment(old, out, model=tagged("old"), predictor=LevelPredictor()).run()
    before = {r["user"]: r["initial"] for r in read_dynamic_rows(out / "rows.jsonl") if r["method"] == "inc_update"}
    # the writer settings change and inc_update is dropped: its rows stay, but their S0 is of the old writer
    new = dataclasses.replace(old, revised_only=True, strategies=("refine",))
    DynamicExperiment(new, out, model=tagged("new"), predictor=LevelPredictor()).run()
    redone = [r for r in read_dynamic_rows(out / "rows.jsonl") if r["method"] != "inc_update"]
    assert redone and all("Run new." in r["initial"] and r["initial"] != before[r["user"]] for r in redone)
    assert all(r["config"]["writer"]["revised_only"] for r in redone)
