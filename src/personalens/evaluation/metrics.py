"""Ranking, rating and classification metrics, written out so their definitions can be checked.

Ranking metrics score ONE query at a time: a list of candidates with one score each, and the set of candidate
positions that are relevant (binary relevance). Candidates are ranked by descending score; ties keep list order
(the earlier candidate ranks first). The harness shuffles the candidate order with a seed before scoring, so this
tie-break is unbiased. Ranks are 1-based throughout.

Metric names follow RecBole / ranx: ``hit@k`` (alias ``hr@k``), ``ndcg@k``, ``mrr@k``, ``precision@k``,
``recall@k`` and ``map@k``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Final, SupportsIndex, TypedDict, overload

import numpy as np

# ----------------------------------------------------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------------------------------------------------

RANKING_METRICS: Final[tuple[str, ...]] = ("hit", "ndcg", "mrr", "precision", "recall", "map")
"""Canonical ranking metric names, in the order they are documented."""

_ALIASES: Final[dict[str, str]] = {
    "hit": "hit",
    "hr": "hit",
    "hitrate": "hit",
    "ndcg": "ndcg",
    "mrr": "mrr",
    "rr": "mrr",
    "precision": "precision",
    "prec": "precision",
    "p": "precision",
    "recall": "recall",
    "r": "recall",
    "map": "map",
    "ap": "map",
}

_NAME_RE: Final = re.compile(r"^([A-Za-z_]+)@([0-9]+)$")


def _as_scores(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; a NaN score has no rank")
    return s


def _position(value: object, n: int) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"relevant positions must be integers, not booleans ({value!r})")
    if not isinstance(value, SupportsIndex):
        raise ValueError(f"relevant positions must be integers, got {value!r}")
    pos = operator.index(value)
    if not 0 <= pos < n:
        raise ValueError(f"relevant position {pos} is outside the candidate list of length {n}")
    return pos


def _relevant_positions(relevant: int | Collection[int], n: int) -> list[int]:
    """Validated, de-duplicated relevant positions in ascending order; at least one."""
    if isinstance(relevant, str | bytes):
        raise ValueError(f"relevant must be a candidate position or a collection of positions, got {relevant!r}")
    items: list[object] = list(relevant) if isinstance(relevant, Collection) else [relevant]
    positions = sorted({_position(v, n) for v in items})
    if not positions:
        raise ValueError("at least one relevant candidate is needed")
    return positions


def ranking_order(scores: Sequence[float]) -> list[int]:
    """Candidate positions from best to worst: a stable sort on ``-score``, so tied candidates keep list order.

    Raises ValueError on NaN scores or a non-1-D input. ``+inf``/``-inf`` are ranked like any other value.
    """
    s = _as_scores(scores)
    return [int(i) for i in np.argsort(-s, kind="stable")]


def ranks(scores: Sequence[float]) -> list[int]:
    """The 1-based rank of every candidate, in candidate order (``ranks(s)[i]`` is candidate ``i``'s rank)."""
    order = ranking_order(scores)
    out = [0] * len(order)
    for rank, pos in enumerate(order, start=1):
        out[pos] = rank
    return out


@overload
def rank_of(scores: Sequence[float], relevant: int) -> int: ...
@overload
def rank_of(scores: Sequence[float], relevant: Collection[int]) -> list[int]: ...
def rank_of(scores: Sequence[float], relevant: int | Collection[int]) -> int | list[int]:
    """The 1-based rank of candidate ``relevant`` (an int), or the ascending ranks of a collection of candidates.

    Ranking is by descending score with ties broken by list order (see :func:`ranking_order`).
    Raises ValueError on NaN scores, out-of-range or non-integer positions, or an empty collection.
    """
    all_ranks = ranks(scores)
    positions = _relevant_positions(relevant, len(all_ranks))
    if isinstance(relevant, int | np.integer):
        return all_ranks[positions[0]]
    return sorted(all_ranks[p] for p in positions)


def parse_metric_names(names: Sequence[str]) -> list[tuple[str, int]]:
    """Parse names like ``"hit@1"``, ``"HR@5"``, ``"NDCG@5"``, ``"mrr@10"`` into ``(canonical_name, k)`` pairs.

    Case-insensitive; surrounding whitespace is ignored. Aliases: ``hr``/``hitrate`` -> ``hit``, ``rr`` -> ``mrr``,
    ``p``/``prec`` -> ``precision``, ``r`` -> ``recall``, ``ap`` -> ``map``. ``k`` must be a positive integer.
    Duplicates (after canonicalisation) are dropped, keeping the first occurrence. Raises ValueError for an
    unknown metric, a missing or bad ``k``, or a bare string passed instead of a sequence of names.
    """
    if isinstance(names, str):
        raise ValueError(f"expected a sequence of metric names, got the single string {names!r}")
    out: list[tuple[str, int]] = []
    for raw in names:
        if not isinstance(raw, str):
            raise ValueError(f"metric names must be strings, got {raw!r}")
        m = _NAME_RE.match(raw.strip())
        if m is None:
            raise ValueError(f"bad metric name {raw!r}: expected NAME@K with K a positive integer, e.g. 'ndcg@10'")
        base, k_text = m.group(1).lower(), m.group(2)
        if base not in _ALIASES:
            known = ", ".join(RANKING_METRICS)
            raise ValueError(f"unknown ranking metric {m.group(1)!r} in {raw!r}; known: {known} (and hr for hit)")
        k = int(k_text)
        if k < 1:
            raise ValueError(f"bad k in metric name {raw!r}: k must be at least 1")
        pair = (_ALIASES[base], k)
        if pair not in out:
            out.append(pair)
    return out


def _metric_value(name: str, k: int, rel_ranks: list[int]) -> float:
    """One metric at cutoff ``k`` from the ascending 1-based ranks of the relevant candidates."""
    n_rel = len(rel_ranks)
    in_top = [r for r in rel_ranks if r <= k]
    if name == "hit":
        return 1.0 if in_top else 0.0
    if name == "mrr":
        return 1.0 / in_top[0] if in_top else 0.0
    if name == "precision":
        return len(in_top) / k
    if name == "recall":
        return len(in_top) / n_rel
    if name == "ndcg":
        dcg = math.fsum(1.0 / math.log2(r + 1) for r in in_top)
        idcg = math.fsum(1.0 / math.log2(i + 1) for i in range(1, min(k, n_rel) + 1))
        return dcg / idcg
    if name == "map":
        # the j-th relevant hit (1-based) at rank r contributes precision@r = j / r
        return math.fsum(j / r for j, r in enumerate(in_top, start=1)) / min(k, n_rel)
    raise ValueError(f"unknown ranking metric {name!r}")


def _evaluate(
    scores: Sequence[float], relevant: int | Collection[int], pairs: list[tuple[str, int]]
) -> dict[str, float]:
    all_ranks = ranks(scores)
    positions = _relevant_positions(relevant, len(all_ranks))
    rel_ranks = sorted(all_ranks[p] for p in positions)
    return {f"{name}@{k}": _metric_value(name, k, rel_ranks) for name, k in pairs}


def ranking_metrics(
    scores: Sequence[float],
    relevant: int | Collection[int],
    ks: Sequence[int] = (1, 5, 10),
    metrics: Sequence[str] = ("hit", "ndcg", "mrr"),
) -> dict[str, float]:
    """Ranking metrics of ONE query, for every metric in ``metrics`` at every cutoff in ``ks``.

    ``scores`` holds one score per candidate; ``relevant`` is a candidate position or a collection of positions
    (binary relevance, usually a single positive). Candidates are ranked by descending score, ties broken by list
    order. Let ``R`` be the set of 1-based ranks of the relevant candidates, ``|rel| = |R|`` and ``R_k = {r in R :
    r <= k}``. Then, for each cutoff ``k`` (``k`` may exceed the number of candidates):

    - ``hit@k``       = 1 if ``R_k`` is non-empty else 0 (HR@k)
    - ``mrr@k``       = 1 / min(R) if min(R) <= k else 0 (reciprocal rank of the first relevant candidate)
    - ``precision@k`` = |R_k| / k (always divided by k, also when fewer than k candidates exist, as trec_eval's P_k)
    - ``recall@k``    = |R_k| / |rel|
    - ``ndcg@k``      = DCG@k / IDCG@k, binary gains: DCG@k = sum over r in R_k of 1 / log2(r + 1),
      IDCG@k = sum over i = 1 .. min(k, |rel|) of 1 / log2(i + 1)
    - ``map@k``       = (1 / min(k, |rel|)) * sum over r in R_k of precision@r. The denominator is min(k, |rel|), as
      in RecBole's MAP@k. trec_eval's ``map_cut_k`` (and ir-measures' ``AP@k``) divide by |rel| instead; the two
      agree whenever |rel| <= k, in particular for the usual single positive.

    Metric names are matched case-insensitively with the aliases of :func:`parse_metric_names`. The result maps
    ``"{metric}@{k}"`` (canonical metric name) to its value, metric-major in the order given. Raises ValueError on
    NaN scores, bad or missing relevant positions, unknown metrics, or ``k < 1``.
    """
    if isinstance(metrics, str):
        raise ValueError(f"metrics must be a sequence of names, got the single string {metrics!r}")
    if len(ks) == 0 or len(metrics) == 0:
        raise ValueError("ks and metrics must both be non-empty")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k must be a positive integer, got {k!r}")
    pairs = parse_metric_names([f"{m}@{int(k)}" for m in metrics for k in ks])
    return _evaluate(scores, relevant, pairs)


def ranking_metrics_by_name(
    scores: Sequence[float],
    relevant: int | Collection[int],
    names: Sequence[str],
) -> dict[str, float]:
    """Like :func:`ranking_metrics`, but for an explicit list of names such as ``["HR@1", "NDCG@10"]``.

    Keys are the canonical names (``"hit@1"``, ``"ndcg@10"``); definitions are those of :func:`ranking_metrics`.
    """
    return _evaluate(scores, relevant, parse_metric_names(names))


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation and comparison
# ----------------------------------------------------------------------------------------------------------------------


class MetricSummary(TypedDict):
    mean: float
    stderr: float
    n: int


class BootstrapComparison(TypedDict):
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float


def _finite_vector(values: Sequence[float], what: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return v


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-key arithmetic mean over queries: ``mean[m] = (1/n) * sum_i rows[i][m]``.

    Every row must have the same keys; the result keeps the first row's key order. Raises ValueError on no rows,
    differing keys, or a non-finite value.
    """
    if len(rows) == 0:
        raise ValueError("no rows to average")
    keys = list(rows[0])
    key_set = set(keys)
    for i, row in enumerate(rows):
        if set(row) != key_set:
            raise ValueError(f"row {i} has keys {sorted(row)}, expected {sorted(key_set)}")
    out: dict[str, float] = {}
    for key in keys:
        values = [float(row[key]) for row in rows]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"metric {key!r} has a NaN or infinite value")
        out[key] = math.fsum(values) / len(values)
    return out


def metric_summary(values: Sequence[float]) -> MetricSummary:
    """Mean, standard error and count of per-query values.

    ``mean = (1/n) * sum x_i``; ``stderr = s / sqrt(n)`` with the sample standard deviation
    ``s = sqrt(sum (x_i - mean)^2 / (n - 1))``. With ``n == 1`` the standard error is undefined and reported as NaN.
    Raises ValueError on empty input or non-finite values.
    """
    v = _finite_vector(values, "values")
    n = int(v.size)
    mean = float(v.mean())
    stderr = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "stderr": stderr, "n": n}


def standard_error(values: Sequence[float]) -> float | None:
    """``metric_summary``'s standard error, or None (not NaN, which JSON cannot hold) below two values."""
    if len(values) < 2:
        return None
    return metric_summary(values)["stderr"]


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapComparison:
    """Paired bootstrap of the mean difference between two methods scored on the same queries (users).

    With ``d_i = a_i - b_i`` (i = 1..n): ``mean_diff = mean(d)``. Each of ``B = n_resamples`` resamples draws n
    indices uniformly with replacement and records ``m_b = mean(d[indices])``. The confidence interval is the
    percentile interval ``[q_{(1-c)/2}, q_{(1+c)/2}]`` of the ``m_b`` (numpy's linear interpolation). The two-sided
    p-value for "mean difference = 0" is read off the same distribution:
    ``p = min(1, 2 * min((1 + #{m_b <= 0}) / (B + 1), (1 + #{m_b >= 0}) / (B + 1)))``; the ``+1`` keeps a
    finite resample count from claiming p = 0. Deterministic for a given ``seed`` (numpy ``default_rng``).

    Raises ValueError on empty, mismatched or non-finite inputs, ``n_resamples < 1``, or ``confidence`` outside (0, 1).
    """
    x = _finite_vector(a, "a")
    y = _finite_vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b differ in length ({x.size} vs {y.size}); a paired test needs the same queries")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    d = x - y
    n = int(d.size)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples, dtype=float)
    rows_per_chunk = max(1, 1_000_000 // n)  # bound memory of the index matrix to about 8 MB
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(n_resamples, start + rows_per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    below = int((boot <= 0.0).sum())
    above = int((boot >= 0.0).sum())
    p = min(1.0, 2.0 * min((1 + below) / (n_resamples + 1), (1 + above) / (n_resamples + 1)))
    return {"mean_diff": float(d.mean()), "ci_low": float(ci_low), "ci_high": float(ci_high), "p_value": p}


# ----------------------------------------------------------------------------------------------------------------------
# Rating
# ----------------------------------------------------------------------------------------------------------------------


def _paired_finite(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = _finite_vector(y_true, "y_true")
    p = _finite_vector(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    return t, p


def mae(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean absolute error: ``(1/n) * sum |y_true_i - y_pred_i|``.

    Raises ValueError on empty or mismatched inputs, or NaN / infinite values.
    """
    t, p = _paired_finite(y_true, y_pred)
    return float(np.abs(t - p).mean())


def rmse(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Root mean squared error: ``sqrt((1/n) * sum (y_true_i - y_pred_i)^2)``.

    Raises ValueError on empty or mismatched inputs, or NaN / infinite values.
    """
    t, p = _paired_finite(y_true, y_pred)
    return float(math.sqrt(float(np.square(t - p).mean())))


# ----------------------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------------------


def _paired_labels(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> tuple[list[Hashable], list[Hashable]]:
    if isinstance(y_true, str) or isinstance(y_pred, str):
        raise ValueError("y_true and y_pred must be sequences of labels, not single strings")
    t, p = list(y_true), list(y_pred)
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred differ in length ({len(t)} vs {len(p)})")
    if not t:
        raise ValueError("y_true and y_pred are empty")
    return t, p


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Fraction of exact matches: ``(1/n) * #{i : y_true_i == y_pred_i}``.

    Raises ValueError on empty or mismatched inputs.
    """
    t, p = _paired_labels(y_true, y_pred)
    return sum(1 for a, b in zip(t, p, strict=True) if a == b) / len(t)


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean over labels of the per-label F1 (one-vs-rest).

    For label ``c``: ``TP = #{y_true = c and y_pred = c}``, ``FP = #{y_true != c and y_pred = c}``,
    ``FN = #{y_true = c and y_pred != c}``, and ``F1_c = 2 TP / (2 TP + FP + FN)``, taken as 0 when the denominator
    is 0. Then ``macro_f1 = (1/|L|) * sum over c in L of F1_c``.

    ``L`` is the set of labels seen in ``y_true`` or ``y_pred`` when ``labels`` is None. When ``labels`` is given,
    ``L`` is exactly that list: a listed label absent from both ``y_true`` and ``y_pred`` counts with F1 = 0, and
    unlisted labels are left out of the average (their samples still count as FP/FN of the listed labels). This
    matches scikit-learn's ``f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)``.

    Raises ValueError on empty or mismatched inputs, or an empty or duplicated ``labels``.
    """
    t, p = _paired_labels(y_true, y_pred)
    if labels is None:
        label_list: list[Hashable] = list(dict.fromkeys([*t, *p]))
    else:
        if isinstance(labels, str):
            raise ValueError("labels must be a sequence of labels, not a single string")
        label_list = list(labels)
        if not label_list:
            raise ValueError("labels is empty")
        if len(set(label_list)) != len(label_list):
            raise ValueError("labels contains duplicates")
    tp: dict[Hashable, int] = dict.fromkeys(label_list, 0)
    fp: dict[Hashable, int] = dict.fromkeys(label_list, 0)
    fn: dict[Hashable, int] = dict.fromkeys(label_list, 0)
    for a, b in zip(t, p, strict=True):
        if a == b:
            if a in tp:
                tp[a] += 1
            continue
        if b in fp:
            fp[b] += 1
        if a in fn:
            fn[a] += 1
    f1s = []
    for c in label_list:
        denom = 2 * tp[c] + fp[c] + fn[c]
        f1s.append(2 * tp[c] / denom if denom else 0.0)
    return math.fsum(f1s) / len(f1s)


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative, ties
    counting one half (the Mann–Whitney U statistic divided by n_pos · n_neg)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError("labels and scores differ in length")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
