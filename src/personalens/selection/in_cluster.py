"""PersonaX step 3.3, *in-cluster selection* (the paper's Algorithm 2): a greedy balance of prototypicality and
diversity inside one cluster c_i with centroid μ_i and budget a_i.

Weights: w_p = α^-10 and w_d = 1 − w_p. α → 1 (e.g. 1.001, w_p ≈ 0.990) approximates centroid selection, α ≈ 1.4
(w_p ≈ 0.035) boundary selection; the paper tunes α in 1.06–1.08 (w_p ≈ 0.56–0.46).

1. The first pick is the member nearest the centroid, argmin d(e, μ_i).
2. Each further pick maximises  g_p(e) + g_d(e)  over the members not yet picked, where
   g_p(e) = w_p / (1 + d(e, μ_i))  and the diversity gain is
   * ``"paper"``:     g_d(e) = (2·w_d / a_i) · Σ_{b∈S} d(e, b)                      (Algorithm 2, line 12)
   * ``"reference"``: g_d(e) = w_d · Σ_{pairs in S∪{e}} d / |S∪{e}|                (the authors' released code)

Both are computed incrementally: a running vector Σ_{b∈S} d(e, b) over all members gets one distance row added per
pick, so a cluster costs O(a_i·n_c·d) (or O(n_c²·d) once through BLAS when the rows are precomputed), never the
O(a_i³·n_c·d) of re-evaluating pairwise sums per candidate. For ``"reference"`` the sum over pairs already in S is
the same for every candidate; it is kept so the scores equal the code's, and does not change the argmax.

Ties go to the earliest member (``np.argmax``/``np.argmin`` return the first index); the members of a cluster are
passed in chronological order, so ties favour the older behaviour. d(e, μ_i) is computed from differences (exact);
member-to-member distances through a float64 Gram matrix.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from personalens.selection._distances import (
    as_embeddings,
    distances_to_point,
    single_blas_thread,
    sq_distance_matrix,
    sq_norms,
)

DiversityVariant = Literal["paper", "reference"]
DIVERSITY_VARIANTS: tuple[str, ...] = ("paper", "reference")
#: Above this many members the member-to-member distances are computed one row per pick instead of all at once.
PRECOMPUTE_LIMIT = 2048


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
        raise ValueError(f"alpha must be a number > 1, not {alpha!r}")
    value = float(alpha)
    if not (value > 1 and math.isfinite(value)):
        raise ValueError(f"alpha must be a finite number > 1 (w_p = alpha^-10 < 1), not {alpha!r}")
    return value


def selection_weights(alpha: float) -> tuple[float, float]:
    """(w_p, w_d) = (α^-10, 1 − α^-10)."""
    w_p = check_alpha(alpha) ** -10
    return w_p, 1.0 - w_p


def select_in_cluster(
    embeddings: object,
    budget: int,
    *,
    alpha: float,
    diversity: DiversityVariant = "paper",
    centroid: object | None = None,
    distances: np.ndarray | None = None,
) -> np.ndarray:
    """Algorithm 2 on one cluster: the row indices of the ``budget`` = a_i picked members, in pick order (the caller
    sorts them chronologically).

    ``embeddings`` are the cluster's (n_c, d) member vectors, oldest first; ``centroid`` is μ_i (default: their mean,
    as the paper defines it); ``distances`` may pass the precomputed (n_c, n_c) member-to-member distance matrix.
    """
    x = as_embeddings(embeddings)
    n = len(x)
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or not 0 <= budget <= n:
        raise ValueError(f"budget a_i must be an integer in [0, {n}], not {budget!r}")
    if diversity not in DIVERSITY_VARIANTS:
        raise ValueError(f"diversity must be one of {DIVERSITY_VARIANTS}, not {diversity!r}")
    w_p, w_d = selection_weights(alpha)
    if centroid is not None:
        centroid = np.asarray(centroid, dtype=np.float64).reshape(-1)
        if centroid.shape != (x.shape[1],):
            raise ValueError(f"centroid must have {x.shape[1]} components, got shape {centroid.shape}")
    if distances is not None and distances.shape != (n, n):
        raise ValueError(f"distances must be ({n}, {n}), got {distances.shape}")
    return select_unchecked(x, int(budget), w_p, w_d, diversity, centroid=centroid, distances=distances)


def select_unchecked(
    x: np.ndarray,
    budget: int,
    w_p: float,
    w_d: float,
    diversity: str,
    *,
    centroid: np.ndarray | None = None,
    distances: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`select_in_cluster` without argument checks, for callers that validated already."""
    with single_blas_thread():
        return _select(x, budget, w_p, w_d, diversity, centroid, distances)


def _select(
    x: np.ndarray,
    budget: int,
    w_p: float,
    w_d: float,
    diversity: str,
    centroid: np.ndarray | None,
    distances: np.ndarray | None,
) -> np.ndarray:
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    x64 = np.asarray(x, dtype=np.float64)
    mu = x64.mean(axis=0) if centroid is None else centroid
    rows = distances if distances is not None else distance_rows(x64)
    return greedy_picks(distances_to_point(x64, mu), rows, budget, w_p, w_d, diversity)


def distance_rows(x64: np.ndarray) -> np.ndarray | _RowsOnDemand:
    """The member-to-member distances of float64 rows: a matrix up to :data:`PRECOMPUTE_LIMIT` members, else
    computed one row per pick."""
    if len(x64) <= PRECOMPUTE_LIMIT:
        return np.sqrt(sq_distance_matrix(x64))
    return _RowsOnDemand(x64)


class _RowsOnDemand:
    """``rows[j]``: the distances from member j to every member, computed when asked (O(n_c·d) each)."""

    def __init__(self, x: np.ndarray) -> None:
        self._x = x
        self._sq = sq_norms(x)

    def __getitem__(self, j: int) -> np.ndarray:
        d2 = self._sq + self._sq[j] - 2.0 * (self._x @ self._x[j])
        np.maximum(d2, 0.0, out=d2)
        d2[j] = 0.0
        return np.sqrt(d2)


def greedy_picks(
    to_mu: np.ndarray, rows: np.ndarray | _RowsOnDemand, budget: int, w_p: float, w_d: float, diversity: str
) -> np.ndarray:
    """The greedy loop of Algorithm 2, given d(e, μ) per member and a source of distance rows."""
    picks = np.empty(budget, dtype=np.int64)
    first = int(np.argmin(to_mu))
    picks[0] = first
    if budget == 1:
        return picks
    g_p = w_p / (1.0 + to_mu)
    if diversity == "paper":
        coef = 2.0 * w_d / budget
        score = g_p.copy()
        score[first] = -np.inf
        j = first
        if isinstance(rows, np.ndarray):
            # one pass instead of a multiply per pick (in the rows' precision, as coef * rows[j] would be), widened
            # once so each pick adds float64 to float64
            scaled = np.asarray(rows * coef, dtype=np.float64)
            np.fill_diagonal(scaled, -np.inf)  # adding row j sets score[j] = -inf: picked members stay out
            for t in range(1, budget):
                score += scaled[j]
                j = int(score.argmax())
                picks[t] = j
            return picks
        for t in range(1, budget):
            score += coef * rows[j]
            score[j] = -np.inf
            j = int(score.argmax())
            picks[t] = j
        return picks
    running = np.array(rows[first], dtype=np.float64)  # Σ_{b∈S} d(e, b)
    running[first] = -np.inf
    pair_sum = 0.0  # Σ over pairs already in S
    for t in range(1, budget):
        score = running + pair_sum
        score *= w_d / (t + 1)
        score += g_p
        j = int(score.argmax())
        picks[t] = j
        pair_sum += float(running[j])
        running += rows[j]
        running[j] = -np.inf
    return picks


__all__ = [
    "DIVERSITY_VARIANTS",
    "PRECOMPUTE_LIMIT",
    "DiversityVariant",
    "check_alpha",
    "greedy_picks",
    "select_in_cluster",
    "distance_rows",
    "selection_weights",
]
