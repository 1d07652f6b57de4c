"""PersonaX step 3.2, *sampling budget allocation* (the paper's Algorithm 1).

The total budget k is spread over the clusters c_1..c_m so that small clusters are taken whole and the rest is shared
evenly among the larger ones: visit the clusters by ascending size s_i; with B the budget left and r the clusters left,
give a_i = min(s_i, q) with q = B // r, and B ← B − a_i.

**The leftover step is never reached when k ≤ Σ s_i.** Invariant: before each visit B ≤ Σ (sizes still to visit).
If a_i = s_i it holds trivially; if a_i = q < s_i then B < r·(q+1), so B − q ≤ (r−1)·(q+1) ≤ (r−1)·s_i ≤ the sizes
still to visit (sorted ascending, each ≥ s_i ≥ q+1). At the last cluster B ≤ s_last, so it takes all of B. Both
leftover policies below (the paper's "ascending, only clusters with a_i < s_i", and the released code's "+1 to the
largest clusters") are therefore kept for fidelity but give identical results; k > Σ s_i is refused instead (the
paper's loop would never end, and the code would give a cluster more than it holds).

**Tie-breaking.** Clusters of equal size are visited in label order (a stable sort; labels number clusters by first
appearance in time). Because q never decreases along the visit, among equal-size clusters the *later-appearing* ones
receive the larger share when the budget does not divide evenly. The released code used an unstable sort here.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

LeftoverPolicy = Literal["paper", "reference"]
LEFTOVER_POLICIES: tuple[str, ...] = ("paper", "reference")


def check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float | np.integer | np.floating):
        raise ValueError(f"ratio must be a number in (0, 1], not {ratio!r}")
    value = float(ratio)
    if not 0 < value <= 1:
        raise ValueError(f"ratio must be in (0, 1], not {ratio!r}")
    return value


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def budget_from_ratio(n: int, m: int, ratio: float) -> int:
    """The total budget k = max(m, ⌈n·ratio⌉), capped at n: at least one behaviour per cluster (the released code;
    the paper's text says "k = min(m, n·ratio)" but means every cluster gets one).

    n·ratio is rounded to 9 decimals before the ceiling, so that 10 · 0.3 = 3.0000000000000004 gives 3, not 4."""
    n = _check_count("n", n)
    m = _check_count("m", m)
    ratio = check_ratio(ratio)
    if m > n:
        raise ValueError(f"cannot have more clusters ({m}) than behaviours ({n})")
    return min(n, max(m, math.ceil(round(n * ratio, 9))))


def allocate_budget(sizes: object, k: int, *, leftover: LeftoverPolicy = "paper") -> np.ndarray:
    """Algorithm 1: the per-cluster budgets a_i (int64, in the order of ``sizes``), summing to k, with a_i ≤ s_i.

    When k ≥ m every cluster gets at least one; when k < m the smallest clusters get 0 (q = 0 for them).
    Raises ``ValueError`` for sizes < 1, k < 0 or k > Σ s_i."""
    s = np.asarray(sizes)
    if s.ndim != 1:
        raise ValueError(f"sizes must be a 1-D sequence, got shape {s.shape}")
    if s.size and (not np.issubdtype(s.dtype, np.integer) or s.min() < 1):
        raise ValueError("cluster sizes must be integers >= 1")
    s = s.astype(np.int64)
    k = _check_count("k", k)
    if leftover not in LEFTOVER_POLICIES:
        raise ValueError(f"leftover must be one of {LEFTOVER_POLICIES}, not {leftover!r}")
    total = int(s.sum())
    if k > total:
        raise ValueError(f"budget k={k} exceeds the {total} behaviours in the clusters")
    m = len(s)
    order = np.argsort(s, kind="stable")
    alloc = np.zeros(m, dtype=np.int64)
    remaining = k
    for visited, i in enumerate(order.tolist()):
        q = remaining // (m - visited)
        alloc[i] = min(int(s[i]), q)
        remaining -= int(alloc[i])
    if remaining:  # unreachable for k <= sum(sizes), see the module docstring
        distribute_leftover(alloc, s, order, remaining, leftover)
    return alloc


def distribute_leftover(alloc: np.ndarray, sizes: np.ndarray, order: np.ndarray, remaining: int, policy: str) -> None:
    """Add ``remaining`` single units to ``alloc`` in place, never beyond a cluster's size.

    ``"paper"``: sweep the clusters by ascending size (``order``), +1 to each with a_i < s_i, until nothing is left.
    ``"reference"``: sweep from the largest cluster down, +1 each (the released code, with a capacity check added).
    """
    if remaining > int((sizes - alloc).sum()):
        raise ValueError("the leftover budget does not fit in the clusters")
    sweep = order.tolist() if policy == "paper" else order[::-1].tolist()
    while remaining > 0:
        for i in sweep:
            if alloc[i] < sizes[i]:
                alloc[i] += 1
                remaining -= 1
                if remaining == 0:
                    break


__all__ = ["LEFTOVER_POLICIES", "LeftoverPolicy", "allocate_budget", "budget_from_ratio", "distribute_leftover"]
