"""Tables and figures from a finished (or partly finished) ranking experiment.

:class:`~personalens.evaluation.experiment.RankingExperiment` leaves ``rows.jsonl`` (one line per method cell and
user) and ``config.json`` in its output directory; :func:`write_report` turns them into

* ``results.json``: every cell aggregated (:func:`aggregate`), both Table 2 variants per (profiler, ranker)
  (:func:`table2`) and run information (users, rows, bad lines, summed LLM usage);
* ``results.md``: the same as readable tables: the paper's Table 2 (best over the grid, and at one fixed ratio), the
  per-ratio table behind Figure 3 and, when several thresholds or α were run, the τ × α table behind Figure 4;
* ``fig3_ratio_<profiler>_<ranker>.png`` and ``fig4_tau_alpha_<profiler>_<ranker>.png`` when matplotlib is installed
  (``personalens[plot]``); without it the report says the plots were skipped.

Everything is recomputed from the rows each time, so the report of a resumed run is always current. A user that
appears twice for one cell (a run resumed after a torn write) counts once: the last row wins and the duplicate is
counted in the cell's ``duplicates``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from personalens.evaluation.experiment import ROWS_FILE, read_rows
from personalens.evaluation.metrics import metric_summary, paired_bootstrap
from personalens.evaluation.plans import SAMPLER_NAMES

CONFIG_FILE = "config.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

#: Table 2's row order (the paper's, with the single-persona ablation last).
TABLE2_ORDER: tuple[str, ...] = SAMPLER_NAMES
CLUSTERED_SAMPLERS = frozenset({"centroid", "boundary", "personax", "personax-single"})
#: Samplers whose α is swept (Centroid and Boundary have a fixed α).
ALPHA_SWEPT = frozenset({"personax", "personax-single"})
SAMPLER_LABELS = {
    "full": "Full",
    "random": "Random",
    "recent": "Recent",
    "relevance": "Relevance",
    "centroid": "Centroid",
    "boundary": "Boundary",
    "personax": "PersonaX",
    "personax-single": "PersonaX (single)",
}
DESCRIBE_KEYS = (
    "sampler",
    "ratio",
    "threshold_rule",
    "threshold",
    "alpha",
    "linkage",
    "relevance",
    "seed",
    "profiler",
    "ranker",
)
MEAN_KEYS = ("budget", "behaviours", "behaviours_used", "personas", "persona_words", "candidates")
USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "total_tokens",
    "calls",
    "cache_hits",
    "seconds",
)
_METRIC_LABELS = {"hit": "Hit", "ndcg": "NDCG", "mrr": "MRR", "precision": "P", "recall": "Recall", "map": "MAP"}
_RATIO_TOL = 1e-9


class _First:
    """Default for :func:`table2`'s threshold/alpha: the first value the PersonaX cells were run with."""

    def __repr__(self) -> str:
        return "FIRST"


FIRST = _First()


# ---------------------------------------------------------------------------------------------------- aggregation
def _latest(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, dict[str, Mapping[str, Any]]], dict[str, int]]:
    """``{cell: {user: row}}`` keeping each (cell, user)'s last row, and the duplicate count per cell."""
    by_cell: dict[str, dict[str, Mapping[str, Any]]] = {}
    duplicates: dict[str, int] = {}
    for row in rows:
        if "cell" not in row or "user" not in row:
            continue
        cell, user = str(row["cell"]), str(row["user"])
        users = by_cell.setdefault(cell, {})
        if user in users:
            duplicates[cell] = duplicates.get(cell, 0) + 1
        users[user] = row
    return by_cell, duplicates


def _metric_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in row.get("metrics") or {}:
            if name not in names:
                names.append(name)
    return names


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: Iterable[Any]) -> float | None:
    xs = [x for x in (_finite(v) for v in values) if x is not None]
    return sum(xs) / len(xs) if xs else None


def _summary(values: Iterable[Any]) -> dict[str, Any]:
    xs = [x for x in (_finite(v) for v in values) if x is not None]
    if not xs:
        return {"mean": None, "stderr": None, "n": 0}
    s = metric_summary(xs)
    stderr = s["stderr"] if math.isfinite(s["stderr"]) else None
    return {"mean": s["mean"], "stderr": stderr, "n": s["n"]}


def _sum_usage(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = dict.fromkeys(USAGE_KEYS, 0)
    total["seconds"] = 0.0
    for row in rows:
        usage = row.get("usage") or {}
        for key in USAGE_KEYS:
            value = _finite(usage.get(key))
            if key == "total_tokens" and value is None:
                value = float((usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))
            if value is not None:
                total[key] += value
    out = {k: (round(v, 3) if k == "seconds" else int(v)) for k, v in total.items()}
    return out


def aggregate(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One entry per method cell (rows grouped by ``"cell"``).

    Each entry holds the describing fields the rows carry (``sampler``, ``ratio``, ``threshold_rule``,
    ``threshold``, ``alpha``, ``linkage``, ``relevance``, ``seed``, ``profiler``, ``ranker``), ``n_users``,
    ``duplicates`` (rows dropped because the same user appeared again for the cell; the last row wins), the mean
    ``budget``, ``behaviours``, ``behaviours_used``, ``personas``, ``persona_words`` and ``candidates`` per user,
    ``truncated`` (summed), ``metrics`` as ``{name: {mean, stderr, n}}`` (fractions; stderr is None with one user),
    ``usage`` summed over the users, ``seconds`` summed and ``seconds_per_user``. ``metrics`` defaults to every
    metric name the rows carry.

    Cells are grouped by (profiler, ranker) in order of first appearance, then by sampler in Table 2 order; within
    a sampler they keep the order the rows first show them in (the experiment's grid order).
    """
    rows = list(rows)
    by_cell, duplicates = _latest(rows)
    names = list(metrics) if metrics is not None else _metric_names(rows)
    out: list[dict[str, Any]] = []
    for key, users in by_cell.items():
        user_rows = list(users.values())
        first = user_rows[0]
        entry: dict[str, Any] = {"cell": key}
        entry.update({k: first[k] for k in DESCRIBE_KEYS if k in first})
        entry["n_users"] = len(user_rows)
        entry["duplicates"] = duplicates.get(key, 0)
        for field in MEAN_KEYS:
            entry[field] = _mean(r.get(field) for r in user_rows)
        entry["truncated"] = int(sum(_finite(r.get("truncated")) or 0 for r in user_rows))
        entry["metrics"] = {name: _summary((r.get("metrics") or {}).get(name) for r in user_rows) for name in names}
        entry["usage"] = _sum_usage(user_rows)
        seconds = [_finite(r.get("seconds")) for r in user_rows]
        entry["seconds"] = round(sum(s for s in seconds if s is not None), 4)
        entry["seconds_per_user"] = _mean(seconds)
        out.append(entry)
    combos: dict[tuple[Any, Any], int] = {}
    for entry in out:
        combos.setdefault((entry.get("profiler"), entry.get("ranker")), len(combos))
    out.sort(key=lambda e: (combos[(e.get("profiler"), e.get("ranker"))], _sampler_index(e.get("sampler"))))
    return out


def _sampler_index(sampler: Any) -> int:
    return TABLE2_ORDER.index(sampler) if sampler in TABLE2_ORDER else len(TABLE2_ORDER)


# ---------------------------------------------------------------------------------------------------- Table 2
def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    fa, fb = _finite(a), _finite(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=_RATIO_TOL)
    return bool(a == b)


def _norm_threshold(value: Any) -> Any:
    return None if value == "auto" else value


def _primary_mean(cell: Mapping[str, Any], primary: str) -> float | None:
    summary = (cell.get("metrics") or {}).get(primary) or {}
    return _finite(summary.get("mean"))


def _per_user(rows: Iterable[Mapping[str, Any]], primary: str) -> dict[str, dict[str, float]]:
    by_cell, _ = _latest(rows)
    out: dict[str, dict[str, float]] = {}
    for cell, users in by_cell.items():
        values = {}
        for user, row in users.items():
            value = _finite((row.get("metrics") or {}).get(primary))
            if value is not None:
                values[user] = value
        out[cell] = values
    return out


def _pct(value: Any) -> float | None:
    x = _finite(value)
    return None if x is None else round(100.0 * x, 2)


def _compare(
    personax: Mapping[str, Any] | None,
    cell: Mapping[str, Any],
    per_user: Mapping[str, Mapping[str, float]],
    n_resamples: int,
    seed: int,
) -> dict[str, Any] | None:
    """PersonaX minus ``cell`` on the primary metric over the users both have, in points (paired bootstrap)."""
    if personax is None or personax["cell"] == cell["cell"]:
        return None
    a_users = per_user.get(personax["cell"], {})
    b_users = per_user.get(cell["cell"], {})
    shared = sorted(set(a_users) & set(b_users))
    if not shared:
        return None
    result = paired_bootstrap(
        [a_users[u] for u in shared], [b_users[u] for u in shared], n_resamples=n_resamples, seed=seed
    )
    return {
        "users": len(shared),
        "mean_diff": round(100.0 * result["mean_diff"], 2),
        "ci_low": round(100.0 * result["ci_low"], 2),
        "ci_high": round(100.0 * result["ci_high"], 2),
        "p_value": round(result["p_value"], 4),
    }


def _line(
    sampler: str,
    cell: Mapping[str, Any],
    metrics: Sequence[str],
    personax: Mapping[str, Any] | None,
    per_user: Mapping[str, Mapping[str, float]],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    clustered = sampler in CLUSTERED_SAMPLERS
    summaries = cell.get("metrics") or {}
    return {
        "sampler": sampler,
        "label": SAMPLER_LABELS.get(sampler, sampler),
        "cell": cell["cell"],
        "ratio": cell.get("ratio"),
        "threshold": cell.get("threshold") if clustered else None,
        "alpha": cell.get("alpha") if clustered else None,
        "budget": cell.get("budget"),
        "n_users": cell.get("n_users", 0),
        "metrics": {m: _pct((summaries.get(m) or {}).get("mean")) for m in metrics},
        "stderr": {m: _pct((summaries.get(m) or {}).get("stderr")) for m in metrics},
        "vs_personax": None if sampler == "personax" else _compare(personax, cell, per_user, n_resamples, seed),
    }


def _fixed_pick(
    candidates: Sequence[Mapping[str, Any]], sampler: str, ratio: float, threshold: Any, alpha: Any
) -> Mapping[str, Any] | None:
    for cell in candidates:
        if sampler == "full":
            return cell
        if not _same(cell.get("ratio"), ratio):
            continue
        if sampler in CLUSTERED_SAMPLERS and not _same(cell.get("threshold"), threshold):
            continue
        if sampler in ALPHA_SWEPT and not _same(cell.get("alpha"), alpha):
            continue
        return cell
    return None


def table2(
    cells: Sequence[Mapping[str, Any]],
    rows: Iterable[Mapping[str, Any]],
    metrics: Sequence[str],
    primary: str,
    *,
    ranker: str = "embedding",
    profiler: str = "behaviours",
    ratio: float = 0.1,
    threshold: float | int | str | None | _First = FIRST,
    alpha: float | None | _First = FIRST,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The paper's Table 2 for one (profiler, ranker): two variants, ``[best, fixed_ratio]``.

    * ``"best"``: per sampler the cell with the highest mean ``primary`` over the whole grid (ratios, thresholds,
      α), which is what the paper reports. Choosing on the evaluation users is optimistic for every method alike.
    * ``"fixed_ratio"``: every sampler at ``ratio`` (Full: its single cell); the clustered samplers at
      ``threshold`` (``"auto"`` means None) and PersonaX at ``alpha``. Both default to the first threshold and α
      the PersonaX cells were run with (the order of ``cells``). Samplers without such a cell are left out.

    Each variant is ``{"variant", "title", "profiler", "ranker", "primary", "metrics", "lines"}`` (the fixed one
    also ``ratio``, ``threshold``, ``alpha``); each line holds ``sampler``, ``label``, ``cell``, ``ratio``,
    ``threshold``/``alpha`` (clustered samplers only, else None), mean ``budget``, ``n_users``, ``metrics`` and
    ``stderr`` in percent rounded to 2 decimals, and ``vs_personax``: PersonaX minus this line on ``primary`` in
    points over the users both cells share (paired bootstrap: ``users``, ``mean_diff``, ``ci_low``, ``ci_high``,
    ``p_value``), None on PersonaX's own line or when there is no PersonaX cell. ``rows`` are the raw rows (the
    bootstrap needs per-user values).
    """
    pool = [c for c in cells if c.get("ranker") == ranker and c.get("profiler") == profiler]
    per_user = _per_user(rows, primary)
    by_sampler: dict[str, list[Mapping[str, Any]]] = {}
    for cell in pool:
        by_sampler.setdefault(str(cell.get("sampler")), []).append(cell)
    samplers = [s for s in TABLE2_ORDER if s in by_sampler]
    common = {"profiler": profiler, "ranker": ranker, "primary": primary, "metrics": list(metrics)}

    def score(cell: Mapping[str, Any]) -> float:
        value = _primary_mean(cell, primary)
        return -math.inf if value is None else value

    best = {s: max(by_sampler[s], key=score) for s in samplers}
    best_lines = [_line(s, best[s], metrics, best.get("personax"), per_user, n_resamples, seed) for s in samplers]

    reference = by_sampler.get("personax") or [c for c in pool if c.get("sampler") in CLUSTERED_SAMPLERS]
    if isinstance(threshold, _First):
        threshold = reference[0].get("threshold") if reference else None
    threshold = _norm_threshold(threshold)
    if isinstance(alpha, _First):
        alpha = by_sampler["personax"][0].get("alpha") if "personax" in by_sampler else None
    fixed: dict[str, Mapping[str, Any]] = {}
    for s in samplers:
        pick = _fixed_pick(by_sampler[s], s, ratio, threshold, alpha)
        if pick is not None:
            fixed[s] = pick
    fixed_lines = [
        _line(s, fixed[s], metrics, fixed.get("personax"), per_user, n_resamples, seed) for s in samplers if s in fixed
    ]
    return [
        {
            "variant": "best",
            "title": f"best over the grid (highest mean {primary} per sampler)",
            **common,
            "lines": best_lines,
        },
        {
            "variant": "fixed_ratio",
            "title": f"at ratio {ratio:g}",
            **common,
            "ratio": ratio,
            "threshold": threshold,
            "alpha": alpha,
            "lines": fixed_lines,
        },
    ]


# ---------------------------------------------------------------------------------------------------- results
def _combos(cells: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for cell in cells:
        combo = (str(cell.get("profiler")), str(cell.get("ranker")))
        if combo not in out:
            out.append(combo)
    return out


def _load_config(out_dir: Path) -> dict[str, Any]:
    path = out_dir / CONFIG_FILE
    if not path.exists():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _config_defaults(config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    metrics = list(config.get("metrics") or _metric_names(rows))
    primary = str(config.get("primary") or ("mrr@10" if "mrr@10" in metrics else (metrics[0] if metrics else "")))
    if primary and primary not in metrics:
        metrics.append(primary)
    return metrics, primary


def _skipped_users(out_dir: Path) -> int | None:
    path = out_dir / "candidates.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return len(doc.get("skipped") or {}) if isinstance(doc, dict) else None


def build_results(out_dir: str | Path, *, ratio: float = 0.1, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The ``results.json`` document for ``out_dir``: ``name``, ``source``, ``config``, ``metrics``, ``primary``,
    ``run`` (users, rows, unique rows, duplicates, bad lines, cells, summed usage and seconds), ``cells``
    (:func:`aggregate`) and ``table2`` (both :func:`table2` variants for every (profiler, ranker) present; the
    fixed-ratio variant at ``ratio`` with the config's first threshold and first α)."""
    out_dir = Path(out_dir)
    config = _load_config(out_dir)
    rows, bad = read_rows(out_dir / ROWS_FILE)
    metrics, primary = _config_defaults(config, rows)
    cells = aggregate(rows, metrics)
    selection = config.get("selection") or {}
    thresholds = list(selection.get("thresholds") or [])
    alphas = list(selection.get("alphas") or [])
    threshold: float | int | str | None | _First = _norm_threshold(thresholds[0]) if thresholds else FIRST
    alpha: float | None | _First = alphas[0] if alphas else FIRST
    tables: list[dict[str, Any]] = []
    for profiler, ranker in _combos(cells):
        tables += table2(
            cells,
            rows,
            metrics,
            primary,
            ranker=ranker,
            profiler=profiler,
            ratio=ratio,
            threshold=threshold,
            alpha=alpha,
            n_resamples=n_resamples,
            seed=seed,
        )
    usage = _sum_usage({"usage": c["usage"]} for c in cells)
    unique = sum(c["n_users"] for c in cells)
    run = {
        "users": len({str(r["user"]) for r in rows if "user" in r and "cell" in r}),
        "skipped_users": _skipped_users(out_dir),
        "rows": len(rows),
        "unique_rows": unique,
        "duplicates": sum(c["duplicates"] for c in cells),
        "bad_lines": bad,
        "cells": len(cells),
        "usage": usage,
        "seconds": round(sum(c["seconds"] for c in cells), 3),
    }
    return {
        "name": config.get("name") or out_dir.name,
        "source": config.get("source"),
        "command": f"personalens eval run {config.get('source') or '<config>'}",
        "config": config,
        "metrics": metrics,
        "primary": primary,
        "run": run,
        "cells": cells,
        "table2": tables,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- formatting
def metric_label(name: str) -> str:
    """``"hit@1"`` -> ``"Hit@1"``, ``"ndcg@5"`` -> ``"NDCG@5"``, ``"mrr@10"`` -> ``"MRR@10"``."""
    base, sep, k = name.partition("@")
    return _METRIC_LABELS.get(base.lower(), base) + sep + k


def _num(value: Any, fmt: str = "g") -> str:
    x = _finite(value)
    return "" if x is None else format(x, fmt)


def _threshold_text(value: Any) -> str:
    if value is None:
        return "auto"
    return _num(value) if _finite(value) is not None else str(value)


def _mean_err(summary: Mapping[str, Any] | None) -> str:
    if not summary or _finite(summary.get("mean")) is None:
        return ""
    text = f"{100.0 * summary['mean']:.2f}"
    if _finite(summary.get("stderr")) is not None:
        text += f" ± {100.0 * summary['stderr']:.2f}"
    return text


def _table(header: Sequence[str], body: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _table2_markdown(variant: Mapping[str, Any]) -> list[str]:
    metrics = list(variant["metrics"])
    primary = variant["primary"]
    lines = variant["lines"]
    if not lines:
        return ["(no cells)"]
    best: dict[str, float] = {}
    for m in metrics:
        values = [x for x in (_finite(line["metrics"].get(m)) for line in lines) if x is not None]
        if values:
            best[m] = max(values)
    header = ["Method", "Ratio", "Threshold", "α", "Mean k", "Users", *(metric_label(m) for m in metrics)]
    header += [f"Δ {metric_label(primary)} (PersonaX − row)", "p"]
    body = []
    for line in lines:
        cells = [
            line["label"],
            _num(line["ratio"]) if line["ratio"] is not None else "all",
            _threshold_text(line["threshold"]) if line["sampler"] in CLUSTERED_SAMPLERS else "",
            _num(line["alpha"]) if line["alpha"] is not None else "",
            _num(line["budget"], ".1f"),
            str(line["n_users"]),
        ]
        for m in metrics:
            value = _finite(line["metrics"].get(m))
            text = "" if value is None else f"{value:.2f}"
            cells.append(f"**{text}**" if value is not None and value == best.get(m) else text)
        cmp = line["vs_personax"]
        if cmp is None:
            cells += ["", ""]
        else:
            cells += [f"{cmp['mean_diff']:+.2f} [{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}]", f"{cmp['p_value']:.3f}"]
        body.append(cells)
    align = [":---", *["---:"] * (len(header) - 1)]
    return _table(header, body, align)


def _pool(cells: Iterable[Mapping[str, Any]], profiler: str, ranker: str) -> list[Mapping[str, Any]]:
    return [c for c in cells if str(c.get("profiler")) == profiler and str(c.get("ranker")) == ranker]


def _ratio_series(
    pool: Sequence[Mapping[str, Any]], threshold: Any, alpha: Any
) -> dict[str, dict[float, Mapping[str, Any]]]:
    """Per non-Full sampler, ``{ratio: cell}`` at the given threshold/α (first cell per ratio otherwise)."""
    out: dict[str, dict[float, Mapping[str, Any]]] = {}
    for cell in pool:
        sampler = str(cell.get("sampler"))
        ratio = _finite(cell.get("ratio"))
        if sampler == "full" or ratio is None:
            continue
        if sampler in CLUSTERED_SAMPLERS and not _same(cell.get("threshold"), threshold):
            continue
        if sampler in ALPHA_SWEPT and alpha is not None and not _same(cell.get("alpha"), alpha):
            continue
        out.setdefault(sampler, {}).setdefault(ratio, cell)
    return {s: out[s] for s in sorted(out, key=_sampler_index)}


def _first_setting(pool: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> tuple[Any, Any]:
    selection = config.get("selection") or {}
    thresholds = list(selection.get("thresholds") or [])
    alphas = list(selection.get("alphas") or [])
    personax = [c for c in pool if c.get("sampler") == "personax"]
    clustered = personax or [c for c in pool if c.get("sampler") in CLUSTERED_SAMPLERS]
    if thresholds:
        threshold = _norm_threshold(thresholds[0])
    else:
        threshold = clustered[0].get("threshold") if clustered else None
    if alphas:
        alpha = alphas[0]
    else:
        alpha = personax[0].get("alpha") if personax else None
    return threshold, alpha


def _budget_by_ratio(series: Mapping[str, Mapping[float, Mapping[str, Any]]]) -> dict[float, float | None]:
    out: dict[float, float | None] = {}
    order = ["personax", *[s for s in series if s != "personax"]]
    for sampler in order:
        for ratio, cell in series.get(sampler, {}).items():
            if out.get(ratio) is None:
                out[ratio] = _finite(cell.get("budget"))
    return out


def _grid(pool: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[Any], list[float]]:
    """PersonaX's ratios, thresholds (first-appearance order) and alphas (sorted)."""
    ratios: list[float] = []
    thresholds: list[Any] = []
    alphas: list[float] = []
    for cell in pool:
        if cell.get("sampler") != "personax":
            continue
        ratio, alpha = _finite(cell.get("ratio")), _finite(cell.get("alpha"))
        if ratio is not None and not any(_same(ratio, r) for r in ratios):
            ratios.append(ratio)
        if not any(_same(cell.get("threshold"), t) for t in thresholds):
            thresholds.append(cell.get("threshold"))
        if alpha is not None and not any(_same(alpha, a) for a in alphas):
            alphas.append(alpha)
    return sorted(ratios), thresholds, sorted(alphas)


def _has_tau_alpha(pool: Sequence[Mapping[str, Any]]) -> bool:
    _, thresholds, alphas = _grid(pool)
    return len(thresholds) >= 2 or len(alphas) >= 2


def _personax_at(pool: Sequence[Mapping[str, Any]], ratio: float, threshold: Any, alpha: float) -> Any:
    for cell in pool:
        if (
            cell.get("sampler") == "personax"
            and _same(cell.get("ratio"), ratio)
            and _same(cell.get("threshold"), threshold)
            and _same(cell.get("alpha"), alpha)
        ):
            return cell
    return None


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def plot_files(results: Mapping[str, Any]) -> dict[str, tuple[str, str, str]]:
    """The plot file names a report draws: ``{file name: (kind, profiler, ranker)}``, kind ``fig3`` or ``fig4``."""
    out: dict[str, tuple[str, str, str]] = {}
    cells = results["cells"]
    for profiler, ranker in _combos(cells):
        pool = _pool(cells, profiler, ranker)
        if any(c.get("sampler") != "full" and _finite(c.get("ratio")) is not None for c in pool):
            out[f"fig3_ratio_{_slug(profiler)}_{_slug(ranker)}.png"] = ("fig3", profiler, ranker)
        if _has_tau_alpha(pool):
            out[f"fig4_tau_alpha_{_slug(profiler)}_{_slug(ranker)}.png"] = ("fig4", profiler, ranker)
    return out


def _data_lines(results: Mapping[str, Any]) -> list[str]:
    config = results.get("config") or {}
    data = config.get("data") or {}
    cand = config.get("candidates") or {}
    selection = config.get("selection") or {}
    run = results["run"]
    lines = []
    if data:
        where = f"`{data.get('path')}` (format `{data.get('format')}`"
        where += f", name {data['name']}" if data.get("name") else ""
        lines.append(f"- **Dataset:** {where})")
        rule = f"at least {data.get('min_interactions', 1)} interactions"
        if data.get("max_users"):
            rule += f", a seeded sample of at most {data['max_users']} users"
        rule += f"; profiled behaviours: {data.get('behaviours', 'liked')}"
        if data.get("like_above") is not None:
            rule += f" (like: rating > {data['like_above']:g}"
            if data.get("dislike_below") is not None:
                rule += f", dislike: rating < {data['dislike_below']:g}"
            rule += ")"
        lines.append(f"- **User filter:** {rule}")
    users = f"{run['users']} users evaluated"
    if run.get("skipped_users"):
        users += f" ({run['skipped_users']} more had no ranking task; see candidates.json)"
    lines.append(f"- **Users:** {users}")
    if cand:
        target = "the last liked interaction" if cand.get("target") == "last_liked" else "the last interaction"
        if cand.get("negatives") is None:
            rule = f"{target} ranked against the whole catalogue"
        else:
            n = int(cand["negatives"])
            rule = f"{target} plus {n} random negatives ({n + 1} candidates, seed {cand.get('seed', 0)})"
        lines.append(f"- **Candidates:** {rule}")
    if selection:
        grid = f"samplers {', '.join(selection.get('samplers') or [])}; ratios "
        grid += ", ".join(_num(r) for r in selection.get("ratios") or [])
        grid += f"; thresholds ({selection.get('threshold_rule', 'n_clusters')}) "
        grid += ", ".join(_threshold_text(_norm_threshold(t)) for t in selection.get("thresholds") or [])
        grid += "; α " + ", ".join(_num(a) for a in selection.get("alphas") or [])
        lines.append(f"- **Grid:** {grid}")
    profiler = config.get("profiler") or {}
    if profiler or config.get("rankers"):
        lines.append(
            f"- **Profiler:** {profiler.get('kind', '?')}; **rankers:** {', '.join(config.get('rankers') or [])}"
        )
    metrics = ", ".join(metric_label(m) for m in results["metrics"])
    lines.append(f"- **Metrics:** {metrics} (primary {metric_label(results['primary'])}), in percent")
    usage = run["usage"]
    lines.append(
        f"- **Rows:** {run['rows']} read, {run['unique_rows']} used in {run['cells']} cells, "
        f"{run['duplicates']} duplicates dropped, {run['bad_lines']} unreadable line(s)"
    )
    lines.append(
        f"- **Usage:** {usage['calls']} LLM calls ({usage['cache_hits']} cached), {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens; {run['seconds']:.1f} s in cells"
    )
    return lines


def _ratio_table(pool: Sequence[Mapping[str, Any]], primary: str, threshold: Any, alpha: Any) -> list[str]:
    series = _ratio_series(pool, threshold, alpha)
    ratios = sorted({r for s in series.values() for r in s})
    out: list[str] = []
    full = next((c for c in pool if c.get("sampler") == "full"), None)
    if full is not None:
        out.append(
            f"Full (whole history, mean k = {_num(full.get('budget'), '.1f')}): "
            f"{_mean_err((full.get('metrics') or {}).get(primary))}"
        )
        out.append("")
    if not ratios:
        return out
    header = ["Sampler", *(f"ratio {_num(r)}" for r in ratios)]
    body = []
    for sampler, by_ratio in series.items():
        row = [SAMPLER_LABELS.get(sampler, sampler)]
        for r in ratios:
            cell = by_ratio.get(r)
            row.append(_mean_err((cell.get("metrics") or {}).get(primary)) if cell is not None else "")
        body.append(row)
    budgets = _budget_by_ratio(series)
    body.append(["mean budget k", *(_num(budgets.get(r), ".1f") for r in ratios)])
    out += _table(header, body, [":---", *["---:"] * len(ratios)])
    return out


def _tau_alpha_table(pool: Sequence[Mapping[str, Any]], primary: str) -> list[str]:
    ratios, thresholds, alphas = _grid(pool)
    rule = next((c.get("threshold_rule") for c in pool if c.get("sampler") == "personax"), None) or "threshold"
    header = ["Ratio", f"Threshold ({rule})", *(f"α = {_num(a)}" for a in alphas)]
    best = max(
        (m for c in pool if c.get("sampler") == "personax" and (m := _primary_mean(c, primary)) is not None),
        default=None,
    )
    body = []
    for r in ratios:
        for t in thresholds:
            row = [_num(r), _threshold_text(t)]
            for a in alphas:
                cell = _personax_at(pool, r, t, a)
                text = _mean_err((cell.get("metrics") or {}).get(primary)) if cell is not None else ""
                if cell is not None and best is not None and _primary_mean(cell, primary) == best:
                    text = f"**{text}**"
                row.append(text)
            body.append(row)
    return _table(header, body, [":---", ":---", *["---:"] * len(alphas)])


def _markdown(results: Mapping[str, Any], plots: Mapping[str, Path] | None, plot_note: str | None) -> str:
    primary = results["primary"]
    p_label = metric_label(primary)
    config = results.get("config") or {}
    cells = results["cells"]
    lines = [f"# {results['name']}", ""]
    lines.append(f"Command: `{results['command']}` (add `--report-only` to rebuild this report from rows.jsonl).")
    lines += ["", "## Data", "", *_data_lines(results), ""]
    if not cells:
        lines += ["No result rows yet.", ""]
        return "\n".join(lines)
    lines += [
        "## Table 2: sampler comparison",
        "",
        f"Metrics in percent (mean over users). Δ is PersonaX minus the row on {p_label} in points over the users "
        "both cells share, with a 95% paired-bootstrap interval and two-sided p-value; blank on PersonaX's own line.",
        "",
    ]
    for variant in results["table2"]:
        heading = f"### {variant['profiler']} profiler, {variant['ranker']} ranker: "
        if variant["variant"] == "best":
            lines += [heading + f"best over the grid (by {p_label})", ""]
            lines.append(
                f"Each line is the sampler's cell with the highest mean {p_label} over every ratio, threshold and α, "
                "as the paper reports it. Choosing the setting on the test users themselves is optimistic, for "
                "every method alike (the more settings a sampler has, the more it gains)."
            )
        else:
            setting = f"ratio {_num(variant['ratio'])}"
            lines += [heading + setting, ""]
            lines.append(
                f"Every sampler at {setting}; clustered samplers at threshold {_threshold_text(variant['threshold'])}"
                f", PersonaX at α = {_num(variant['alpha']) or '?'}; Full uses the whole history. Samplers without a "
                "cell at this setting are left out."
            )
        lines += ["", *_table2_markdown(variant), ""]
    lines += [
        f"## {p_label} by selection ratio (Figure 3)",
        "",
        "Mean ± standard error in percent; clustered samplers at the first threshold and α of the grid.",
        "",
    ]
    for profiler, ranker in _combos(cells):
        pool = _pool(cells, profiler, ranker)
        threshold, alpha = _first_setting(pool, config)
        lines += [f"### {profiler} profiler, {ranker} ranker", ""]
        lines += [*_ratio_table(pool, primary, threshold, alpha), ""]
    tau_alpha = [(p, r) for p, r in _combos(cells) if _has_tau_alpha(_pool(cells, p, r))]
    if tau_alpha:
        lines += [f"## PersonaX {p_label} over threshold × α (Figure 4)", "", "Mean ± standard error in percent.", ""]
        for profiler, ranker in tau_alpha:
            lines += [f"### {profiler} profiler, {ranker} ranker", ""]
            lines += [*_tau_alpha_table(_pool(cells, profiler, ranker), primary), ""]
    lines += ["## Plots", ""]
    if plots:
        for name in plots:
            lines += [f"![{name}]({name})", ""]
    if plot_note:
        lines += [plot_note, ""]
    elif not plots:
        lines += [f"No plot files here yet; `{results['command']} --report-only` draws them.", ""]
    return "\n".join(lines)


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


_NO_MATPLOTLIB = "Plots skipped: matplotlib is not installed (`pip install 'personalens[plot]'`)."


def render_markdown(out_dir: str | Path, *, ratio: float = 0.1, n_resamples: int = 2000) -> str:
    """``results.md`` for ``out_dir`` (rows.jsonl + config.json); links the plot files already present there."""
    out_dir = Path(out_dir)
    results = build_results(out_dir, ratio=ratio, n_resamples=n_resamples)
    present = {name: out_dir / name for name in plot_files(results) if (out_dir / name).exists()}
    note = None if _matplotlib_available() or present else _NO_MATPLOTLIB
    return _markdown(results, present, note)


def write_report(
    out_dir: str | Path, *, ratio: float = 0.1, n_resamples: int = 2000, plots: bool = True
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (matplotlib permitting, unless ``plots=False``) the figures into
    ``out_dir``, each atomically. Returns ``{"json": ..., "markdown": ..., <plot file stem>: ...}``."""
    out_dir = Path(out_dir)
    results = build_results(out_dir, ratio=ratio, n_resamples=n_resamples)
    written: dict[str, Path] = {}
    note: str | None = None
    if plots and results["cells"]:
        if _matplotlib_available():
            config = results.get("config") or {}
            for name, (kind, profiler, ranker) in plot_files(results).items():
                pool = _pool(results["cells"], profiler, ranker)
                path = out_dir / name
                if kind == "fig3":
                    threshold, alpha = _first_setting(pool, config)
                    plot_ratio(pool, path, primary=results["primary"], threshold=threshold, alpha=alpha)
                else:
                    plot_tau_alpha(pool, path, primary=results["primary"])
                written[path.stem] = path
        else:
            note = _NO_MATPLOTLIB
    elif not plots:
        note = "Plots not drawn for this report."
    json_path = out_dir / RESULTS_JSON
    md_path = out_dir / RESULTS_MD
    _atomic_write_text(json_path, json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    _atomic_write_text(md_path, _markdown(results, {p.name: p for p in written.values()}, note))
    return {"json": json_path, "markdown": md_path, **written}


# ---------------------------------------------------------------------------------------------------- plots
def _save_figure(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def plot_ratio(
    cells: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    primary: str,
    threshold: Any = None,
    alpha: Any = None,
) -> Path:
    """Figure 3: mean ``primary`` (percent, stderr bars) against the selection ratio, one line per sampler, Full as
    a dashed horizontal line; x is logarithmic when the ratios span more than 10×. Tick labels carry the mean
    budget k. ``cells`` should be one (profiler, ranker)'s; clustered samplers at ``threshold``/``alpha``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    series = _ratio_series(cells, threshold, alpha)
    ratios = sorted({r for s in series.values() for r in s})
    budgets = _budget_by_ratio(series)
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^v<>pX*"
    for i, (sampler, by_ratio) in enumerate(series.items()):
        xs = sorted(by_ratio)
        summaries = [(by_ratio[x].get("metrics") or {}).get(primary) or {} for x in xs]
        ys = [100.0 * (_finite(s.get("mean")) or math.nan) for s in summaries]
        errs = [100.0 * (_finite(s.get("stderr")) or 0.0) for s in summaries]
        ax.errorbar(
            xs, ys, yerr=errs, marker=markers[i % len(markers)], capsize=3, label=SAMPLER_LABELS.get(sampler, sampler)
        )
    full = next((c for c in cells if c.get("sampler") == "full"), None)
    if full is not None:
        mean = _finite(((full.get("metrics") or {}).get(primary) or {}).get("mean"))
        if mean is not None:
            ax.axhline(100.0 * mean, linestyle="--", color="black", linewidth=1.2, label="Full")
    if ratios:
        if ratios[0] > 0 and ratios[-1] / ratios[0] > 10:
            ax.set_xscale("log")
            ax.minorticks_off()
        labels = [f"{r:g}\n(k≈{budgets[r]:.0f})" if budgets.get(r) is not None else f"{r:g}" for r in ratios]
        ax.set_xticks(ratios, labels, rotation=45 if len(ratios) > 5 else 0, fontsize=8)
    profiler = cells[0].get("profiler") if cells else ""
    ranker = cells[0].get("ranker") if cells else ""
    ax.set_xlabel("selection ratio k/n (mean budget k in brackets)")
    ax.set_ylabel(f"{metric_label(primary)} (%)")
    ax.set_title(f"{metric_label(primary)} by selection ratio ({profiler} profiler, {ranker} ranker)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save_figure(fig, path)


def plot_tau_alpha(cells: Sequence[Mapping[str, Any]], path: str | Path, *, primary: str) -> Path:
    """Figure 4: PersonaX's mean ``primary`` (percent) over threshold × α as heat maps, one subplot per ratio, the
    values written in the cells, one colour scale for all. ``cells`` should be one (profiler, ranker)'s."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    path = Path(path)
    ratios, thresholds, alphas = _grid(cells)
    grids = []
    for r in ratios:
        grid = np.full((len(thresholds), len(alphas)), np.nan)
        for i, t in enumerate(thresholds):
            for j, a in enumerate(alphas):
                cell = _personax_at(cells, r, t, a)
                mean = _primary_mean(cell, primary) if cell is not None else None
                if mean is not None:
                    grid[i, j] = 100.0 * mean
        grids.append(grid)
    finite = [g[np.isfinite(g)] for g in grids]
    values = np.concatenate(finite) if finite else np.array([])
    vmin, vmax = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    n = max(1, len(ratios))
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = 1.5 + (1.2 + 0.9 * max(2, len(alphas))) * ncols
    height = 1.0 + (1.0 + 0.6 * max(2, len(thresholds))) * nrows
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    image = None
    rule = next((c.get("threshold_rule") for c in cells if c.get("sampler") == "personax"), None) or "threshold"
    for index, (ax, r, grid) in enumerate(zip(axes, ratios, grids, strict=False)):
        image = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    light = (grid[i, j] - vmin) / (vmax - vmin) > 0.6
                    color = "black" if light else "white"
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color=color, fontsize=9)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(thresholds)), [_threshold_text(t) for t in thresholds])
        ax.set_xlabel("α")
        if index % ncols == 0:
            ax.set_ylabel(f"threshold ({rule})")
        ax.set_title(f"ratio {r:g}")
    if image is not None:
        fig.colorbar(image, ax=axes, label=f"{metric_label(primary)} (%)")
    profiler = cells[0].get("profiler") if cells else ""
    ranker = cells[0].get("ranker") if cells else ""
    fig.suptitle(f"PersonaX {metric_label(primary)} over threshold × α ({profiler}, {ranker})")
    return _save_figure(fig, path)


__all__ = [
    "FIRST",
    "RESULTS_JSON",
    "RESULTS_MD",
    "TABLE2_ORDER",
    "aggregate",
    "build_results",
    "metric_label",
    "plot_files",
    "plot_ratio",
    "plot_tau_alpha",
    "render_markdown",
    "table2",
    "write_report",
]
