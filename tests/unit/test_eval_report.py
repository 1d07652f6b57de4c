"""The experiment report: aggregation, Table 2 variants, markdown and plots, all from synthetic rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from personalens.evaluation import report
from personalens.evaluation.report import aggregate, build_results, render_markdown, table2, write_report

METRICS = ["hit@1", "hit@5", "ndcg@5", "mrr@10"]
USERS = ["1", "2", "3", "4", "5", "6"]
CLUSTERED = {"centroid", "boundary", "personax", "personax-single"}


def make_row(
    cell: str,
    user: str,
    sampler: str,
    value: float,
    *,
    ratio: float | None = None,
    threshold: Any = None,
    alpha: float | None = None,
    budget: int = 10,
    used: int | None = None,
    personas: int = 1,
    words: float = 100.0,
    usage: dict[str, Any] | None = None,
    seconds: float = 0.5,
    profiler: str = "behaviours",
    ranker: str = "embedding",
) -> dict[str, Any]:
    row: dict[str, Any] = {"cell": cell, "user": user, "sampler": sampler}
    if sampler != "full":
        row["ratio"] = ratio
    if sampler in CLUSTERED:
        row |= {"threshold_rule": "n_clusters", "threshold": threshold, "alpha": alpha, "linkage": "complete"}
    if sampler == "relevance":
        row["relevance"] = "per_candidate"
    if sampler == "random":
        row["seed"] = 0
    row |= {
        "profiler": profiler,
        "ranker": ranker,
        "budget": budget,
        "behaviours": 100,
        "behaviours_used": budget if used is None else used,
        "personas": personas,
        "persona_words": words,
        "truncated": 0,
        "rank": 1,
        "candidates": 10,
        "metrics": {"hit@1": float(value >= 0.5), "hit@5": 1.0, "ndcg@5": value, "mrr@10": value},
        "scores": [0.0] * 10,
        "usage": usage
        or {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_prompt_tokens": 0,
            "calls": 0,
            "cache_hits": 0,
            "seconds": 0.0,
            "total_tokens": 0,
        },
        "seconds": seconds,
    }
    return row


# (cell key, sampler, ratio, alpha, base mrr) of the synthetic grid; threshold "auto" (None) throughout.
GRID: list[tuple[str, str, float | None, float | None, float]] = [
    ("full", "full", None, None, 0.30),
    ("rnd01", "random", 0.1, None, 0.32),
    ("rnd05", "random", 0.5, None, 0.40),
    ("rec01", "recent", 0.1, None, 0.35),
    ("rec05", "recent", 0.5, None, 0.33),
    ("rel01", "relevance", 0.1, None, 0.45),
    ("rel05", "relevance", 0.5, None, 0.42),
    ("cen01", "centroid", 0.1, 1.001, 0.41),
    ("cen05", "centroid", 0.5, 1.001, 0.43),
    ("bnd01", "boundary", 0.1, 1.4, 0.40),
    ("bnd05", "boundary", 0.5, 1.4, 0.39),
    ("px01a", "personax", 0.1, 1.04, 0.47),
    ("px01b", "personax", 0.1, 1.08, 0.52),
    ("px05a", "personax", 0.5, 1.04, 0.50),
    ("px05b", "personax", 0.5, 1.08, 0.49),
]
BUDGET = {None: 100, 0.1: 10, 0.5: 50}
# per-user offsets with mean 0, so a cell's mean mrr is its base value
OFFSETS = [-0.05, 0.05, -0.02, 0.02, -0.01, 0.01]


def grid_rows(grid: list[tuple[str, str, float | None, float | None, float]] = GRID) -> list[dict[str, Any]]:
    rows = []
    for user, offset in zip(USERS, OFFSETS, strict=True):
        for key, sampler, ratio, alpha, base in grid:
            rows.append(make_row(key, user, sampler, base + offset, ratio=ratio, alpha=alpha, budget=BUDGET[ratio]))
    return rows


def config(alphas: list[float] | None = None) -> dict[str, Any]:
    return {
        "name": "Synthetic grid",
        "data": {
            "path": "/data/movielens",
            "format": "movielens",
            "name": None,
            "min_interactions": 200,
            "max_users": 0,
            "like_above": 3.0,
            "dislike_below": 3.0,
            "item_fields": ["genres"],
            "domain": "movies",
            "behaviours": "liked",
        },
        "candidates": {"negatives": 9, "target": "last_liked", "like_above": 3.0, "seed": 0},
        "selection": {
            "samplers": ["full", "random", "recent", "relevance", "centroid", "boundary", "personax"],
            "ratios": [0.1, 0.5],
            "threshold_rule": "n_clusters",
            "thresholds": ["auto"],
            "alphas": alphas or [1.04, 1.08],
            "linkage": "complete",
            "relevance": "per_candidate",
        },
        "profiler": {"kind": "behaviours", "max_words": 100, "max_items": 30, "encoding": "text"},
        "rankers": ["embedding"],
        "metrics": METRICS,
        "primary": "mrr@10",
        "seed": 0,
        "source": "/exp/synthetic.toml",
    }


def write_run(out: Path, rows: list[dict[str, Any]], cfg: dict[str, Any] | None = None, torn: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg or config()))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"cell": "px01a", "user": "7", "samp'
    (out / "rows.jsonl").write_text(text)
    return out


def by_sampler(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["sampler"]: line for line in lines}


# ---------------------------------------------------------------------------------------------------- aggregate
def test_aggregate_counts_and_means_by_hand():
    usage_a = {"prompt_tokens": 100, "completion_tokens": 20, "cached_prompt_tokens": 0, "calls": 2}
    usage_a |= {"cache_hits": 1, "seconds": 1.5, "total_tokens": 120}
    usage_b = {"prompt_tokens": 50, "completion_tokens": 10, "cached_prompt_tokens": 5, "calls": 1}
    usage_b |= {"cache_hits": 0, "seconds": 0.5}  # no total_tokens: derived from prompt + completion
    rows = [
        make_row("c1", "1", "personax", 1.0, ratio=0.1, alpha=1.06, budget=4, used=4, personas=2, usage=usage_a),
        make_row("c1", "2", "personax", 0.0, ratio=0.1, alpha=1.06, budget=6, used=5, personas=3, usage=usage_b),
        make_row("c2", "1", "full", 0.5, budget=100, words=80.0, seconds=2.0),
    ]
    rows[0]["seconds"], rows[1]["seconds"] = 0.25, 0.75
    cells = {c["cell"]: c for c in aggregate(rows)}
    assert set(cells) == {"c1", "c2"}
    c1 = cells["c1"]
    assert c1["sampler"] == "personax" and c1["ratio"] == 0.1 and c1["alpha"] == 1.06 and c1["threshold"] is None
    assert c1["profiler"] == "behaviours" and c1["ranker"] == "embedding"
    assert c1["n_users"] == 2 and c1["duplicates"] == 0
    assert c1["budget"] == 5.0 and c1["behaviours_used"] == 4.5 and c1["personas"] == 2.5
    # mrr values 1 and 0: mean 0.5, sample sd sqrt(0.5), stderr sqrt(0.5)/sqrt(2) = 0.5
    assert c1["metrics"]["mrr@10"] == pytest.approx({"mean": 0.5, "stderr": 0.5, "n": 2})
    assert c1["metrics"]["hit@5"]["mean"] == 1.0 and c1["metrics"]["hit@5"]["stderr"] == 0.0
    assert c1["usage"] == {
        "prompt_tokens": 150,
        "completion_tokens": 30,
        "cached_prompt_tokens": 5,
        "total_tokens": 180,
        "calls": 3,
        "cache_hits": 1,
        "seconds": 2.0,
    }
    assert c1["seconds"] == pytest.approx(1.0) and c1["seconds_per_user"] == pytest.approx(0.5)
    c2 = cells["c2"]
    assert "ratio" not in c2 and "alpha" not in c2  # Full carries no ratio, no clustering fields
    assert c2["n_users"] == 1 and c2["persona_words"] == 80.0
    assert c2["metrics"]["mrr@10"] == {"mean": 0.5, "stderr": None, "n": 1}  # one user: no stderr
    # Full sorts before PersonaX (Table 2 order)
    assert [c["cell"] for c in aggregate(rows)] == ["c2", "c1"]


def test_aggregate_keeps_last_row_of_a_duplicate_user():
    rows = [
        make_row("c1", "1", "random", 0.2, ratio=0.1),
        make_row("c1", "2", "random", 0.4, ratio=0.1),
        make_row("c1", "1", "random", 0.6, ratio=0.1),  # resumed run wrote user 1 again
        make_row("c1", "1", "random", 0.8, ratio=0.1),
    ]
    (cell,) = aggregate(rows)
    assert cell["n_users"] == 2 and cell["duplicates"] == 2
    assert cell["metrics"]["mrr@10"]["mean"] == pytest.approx((0.8 + 0.4) / 2)


def test_aggregate_restricts_to_named_metrics():
    (cell,) = aggregate([make_row("c", "1", "recent", 0.3, ratio=0.1)], metrics=["mrr@10"])
    assert list(cell["metrics"]) == ["mrr@10"]


# ---------------------------------------------------------------------------------------------------- Table 2
def test_table2_best_over_grid_picks_highest_primary():
    rows = grid_rows()
    best, fixed = table2(aggregate(rows), rows, METRICS, "mrr@10", n_resamples=200)
    assert best["variant"] == "best" and fixed["variant"] == "fixed_ratio"
    assert [line["sampler"] for line in best["lines"]] == [
        "full",
        "random",
        "recent",
        "relevance",
        "centroid",
        "boundary",
        "personax",
    ]
    picked = {s: line["cell"] for s, line in by_sampler(best["lines"]).items()}
    assert picked == {
        "full": "full",
        "random": "rnd05",
        "recent": "rec01",
        "relevance": "rel01",
        "centroid": "cen05",
        "boundary": "bnd01",
        "personax": "px01b",
    }
    px = by_sampler(best["lines"])["personax"]
    assert px["metrics"]["mrr@10"] == 52.00 and px["ratio"] == 0.1 and px["alpha"] == 1.08
    assert px["threshold"] is None and px["budget"] == 10 and px["n_users"] == 6
    assert by_sampler(best["lines"])["random"]["threshold"] is None  # not clustered: no threshold/alpha
    assert by_sampler(best["lines"])["random"]["alpha"] is None


def test_table2_fixed_ratio_picks_first_threshold_and_alpha_by_default():
    rows = grid_rows()
    cells = aggregate(rows)
    _, fixed = table2(cells, rows, METRICS, "mrr@10", ratio=0.1, n_resamples=200)
    assert fixed["ratio"] == 0.1 and fixed["threshold"] is None and fixed["alpha"] == 1.04
    picked = {s: line["cell"] for s, line in by_sampler(fixed["lines"]).items()}
    assert picked == {
        "full": "full",
        "random": "rnd01",
        "recent": "rec01",
        "relevance": "rel01",
        "centroid": "cen01",
        "boundary": "bnd01",
        "personax": "px01a",
    }
    _, fixed = table2(cells, rows, METRICS, "mrr@10", ratio=0.5, threshold="auto", alpha=1.08, n_resamples=200)
    assert by_sampler(fixed["lines"])["personax"]["cell"] == "px05b"
    assert by_sampler(fixed["lines"])["random"]["cell"] == "rnd05"
    # a ratio nobody ran: only Full remains
    _, fixed = table2(cells, rows, METRICS, "mrr@10", ratio=0.3, n_resamples=200)
    assert [line["sampler"] for line in fixed["lines"]] == ["full"]


def test_table2_bootstrap_column_blank_for_personax_and_paired_on_shared_users():
    rows = grid_rows()
    rows = [r for r in rows if not (r["cell"] == "rel01" and r["user"] == "6")]  # relevance misses one user
    best, fixed = table2(aggregate(rows), rows, METRICS, "mrr@10", ratio=0.1, n_resamples=500)
    for variant in (best, fixed):
        lines = by_sampler(variant["lines"])
        assert lines["personax"]["vs_personax"] is None
        assert all(line["vs_personax"] is not None for s, line in lines.items() if s != "personax")
    full = by_sampler(best["lines"])["full"]["vs_personax"]
    assert full["users"] == 6
    assert full["mean_diff"] == pytest.approx(22.00)  # 52 - 30 points; the offsets cancel in the pairing
    assert full["ci_low"] == pytest.approx(22.00) and full["p_value"] < 0.01
    rel = by_sampler(fixed["lines"])["relevance"]["vs_personax"]
    # px01a vs rel01 over users 1-5: per-user difference is constant 0.47 - 0.45
    assert rel["users"] == 5 and rel["mean_diff"] == pytest.approx(2.00)


def test_table2_without_personax_has_no_comparison():
    rows = [r for r in grid_rows() if r["sampler"] != "personax"]
    best, _ = table2(aggregate(rows), rows, METRICS, "mrr@10", n_resamples=100)
    assert best["lines"] and all(line["vs_personax"] is None for line in best["lines"])


def test_table2_filters_by_profiler_and_ranker():
    rows = grid_rows()
    rows += [make_row("llm-px", u, "personax", 0.9, ratio=0.1, alpha=1.04, ranker="llm") for u in USERS]
    cells = aggregate(rows)
    best, _ = table2(cells, rows, METRICS, "mrr@10", ranker="llm", n_resamples=100)
    assert [line["cell"] for line in best["lines"]] == ["llm-px"]
    best, _ = table2(cells, rows, METRICS, "mrr@10", n_resamples=100)
    assert by_sampler(best["lines"])["personax"]["cell"] == "px01b"


# ---------------------------------------------------------------------------------------------------- report files
def test_results_json_and_markdown(tmp_path):
    out = write_run(tmp_path / "run", grid_rows(), torn=True)
    paths = write_report(out, plots=False, n_resamples=200)
    assert paths["json"].name == "results.json" and paths["markdown"].name == "results.md"
    doc = json.loads(paths["json"].read_text())
    assert doc["run"]["users"] == 6 and doc["run"]["bad_lines"] == 1 and doc["run"]["cells"] == len(GRID)
    assert doc["run"]["rows"] == 6 * len(GRID) and doc["run"]["duplicates"] == 0
    assert [t["variant"] for t in doc["table2"]] == ["best", "fixed_ratio"]
    assert doc["table2"][1]["alpha"] == 1.04 and doc["table2"][1]["threshold"] is None
    md = paths["markdown"].read_text()
    assert md.split("## Plots")[0] == render_markdown(out, n_resamples=200).split("## Plots")[0]
    assert md.startswith("# Synthetic grid\n")
    assert "`personalens eval run /exp/synthetic.toml`" in md
    assert "- **Dataset:** `/data/movielens` (format `movielens`)" in md
    assert "at least 200 interactions" in md
    assert "6 users evaluated" in md
    assert "the last liked interaction plus 9 random negatives (10 candidates, seed 0)" in md
    assert "1 unreadable line(s)" in md
    assert "## Table 2: sampler comparison" in md
    assert "### behaviours profiler, embedding ranker: best over the grid (by MRR@10)" in md
    assert "optimistic" in md
    assert "### behaviours profiler, embedding ranker: ratio 0.1" in md
    assert "| Method | Ratio | Threshold | α | Mean k | Users | Hit@1 | Hit@5 | NDCG@5 | MRR@10 |" in md
    table_lines = [line for line in md.splitlines() if line.startswith("| PersonaX | 0.1 | auto |")]
    assert len(table_lines) == 2
    assert "**52.00**" in table_lines[0] and table_lines[0].rstrip().endswith("|  |  |")  # blank Δ and p
    assert any(line.startswith("| Full | all |") and "+22.00" in line for line in md.splitlines())
    assert "## MRR@10 by selection ratio (Figure 3)" in md
    assert "| Sampler | ratio 0.1 | ratio 0.5 |" in md
    assert "Full (whole history, mean k = 100.0): 30.00 ± " in md
    assert "| mean budget k | 10.0 | 50.0 |" in md
    assert "(Figure 4)" in md and "| Ratio | Threshold (n_clusters) | α = 1.04 | α = 1.08 |" in md
    assert "| 0.1 | auto | 47.00 ± " in md
    assert "Plots not drawn" in md


def test_tau_alpha_table_only_with_several_values(tmp_path):
    grid = [g for g in GRID if g[0] not in ("px01b", "px05b")]
    out = write_run(tmp_path / "run", grid_rows(grid), config(alphas=[1.04]))
    md = render_markdown(out, n_resamples=100)
    assert "(Figure 4)" not in md and "Threshold (n_clusters)" not in md
    assert "(Figure 3)" in md
    assert not any(name.startswith("fig4") for name in report.plot_files(build_results(out, n_resamples=100)))


def test_several_thresholds_use_the_config_order(tmp_path):
    rows = []
    for user, offset in zip(USERS, OFFSETS, strict=True):
        for key, sampler, threshold, base in [
            ("pxA", "personax", 0.5, 0.40),
            ("pxB", "personax", 0.7, 0.45),
            ("cenA", "centroid", 0.5, 0.30),
            ("cenB", "centroid", 0.7, 0.35),
        ]:
            row = make_row(key, user, sampler, base + offset, ratio=0.1, threshold=threshold, alpha=1.06)
            rows.append(row | {"threshold_rule": "distance"})
    cfg = config(alphas=[1.06])
    cfg["selection"] |= {"threshold_rule": "distance", "thresholds": [0.7, 0.5]}
    out = write_run(tmp_path / "run", rows, cfg)
    doc = build_results(out, n_resamples=100)
    best, fixed = doc["table2"]
    assert fixed["threshold"] == 0.7
    assert {line["sampler"]: line["cell"] for line in fixed["lines"]} == {"centroid": "cenB", "personax": "pxB"}
    # table2 alone defaults to the first threshold the PersonaX cells show
    _, fixed = table2(doc["cells"], rows, METRICS, "mrr@10", n_resamples=100)
    assert fixed["threshold"] == 0.5
    md = render_markdown(out, n_resamples=100)
    assert "| Ratio | Threshold (distance) | α = 1.06 |" in md
    assert "| 0.1 | 0.5 | 40.00 ± " in md and "| 0.1 | 0.7 | **45.00 ± " in md


def test_report_of_an_empty_run(tmp_path):
    out = write_run(tmp_path / "run", [])
    paths = write_report(out)
    md = paths["markdown"].read_text()
    assert "No result rows yet." in md
    assert json.loads(paths["json"].read_text())["cells"] == []


def test_plots_are_written_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = grid_rows()
    rows += [make_row("px03a", u, "personax", 0.4, ratio=0.03, alpha=1.04, budget=3) for u in USERS]  # log x axis
    out = write_run(tmp_path / "run", rows)
    paths = write_report(out, n_resamples=100)
    fig3 = paths["fig3_ratio_behaviours_embedding"]
    fig4 = paths["fig4_tau_alpha_behaviours_embedding"]
    for path in (fig3, fig4):
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))  # no temp files left behind
    md = paths["markdown"].read_text()
    assert "(fig3_ratio_behaviours_embedding.png)" in md and "(fig4_tau_alpha_behaviours_embedding.png)" in md
    # the standalone render links the plots now on disk
    assert "(fig4_tau_alpha_behaviours_embedding.png)" in render_markdown(out, n_resamples=100)


def test_no_fig4_with_a_single_alpha(tmp_path):
    pytest.importorskip("matplotlib")
    grid = [g for g in GRID if g[0] not in ("px01b", "px05b")]
    out = write_run(tmp_path / "run", grid_rows(grid), config(alphas=[1.04]))
    paths = write_report(out, n_resamples=100)
    assert "fig3_ratio_behaviours_embedding" in paths
    assert not any(key.startswith("fig4") for key in paths) and not list(out.glob("fig4*"))


def test_plots_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_matplotlib_available", lambda: False)
    out = write_run(tmp_path / "run", grid_rows())
    paths = write_report(out, n_resamples=100)
    assert set(paths) == {"json", "markdown"} and not list(out.glob("*.png"))
    assert "matplotlib is not installed" in paths["markdown"].read_text()


def test_importing_the_module_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, personalens.evaluation.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_results_json_has_no_nan(tmp_path):
    out = write_run(tmp_path / "run", [make_row("c", "1", "personax", 0.5, ratio=0.1, alpha=1.04)])
    text = write_report(out, plots=False)["json"].read_text()
    assert "NaN" not in text
    cell = json.loads(text)["cells"][0]
    assert cell["metrics"]["mrr@10"]["stderr"] is None and not math.isnan(cell["metrics"]["mrr@10"]["mean"])
