"""PersonaX sub-behaviour selection end to end: cluster (§3.1) → allocate the budget (§3.2, Algorithm 1) → select in
each cluster (§3.3, Algorithm 2), configured once like a scikit-learn estimator.

>>> selector = PersonaXSelector(alpha=1.06, ratio=0.5)
>>> selection = selector.select(embeddings, timestamps)          # doctest: +SKIP
>>> history_subset = [history[i] for i in selection.selected]     # doctest: +SKIP

The released code differs from the paper in three places, each a switch here: ``linkage="ward"`` (the code) vs
``"complete"`` (the paper's τ guarantee), ``diversity="reference"`` vs ``"paper"``, ``leftover="reference"`` vs
``"paper"`` (the last never changes a result, see :mod:`personalens.selection.allocation`). The code also keeps picks
in greedy order; here every list of picks is chronological (Algorithm 2, last line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from personalens.selection._distances import as_embeddings, member_sq_distances, single_blas_thread
from personalens.selection.allocation import LEFTOVER_POLICIES, allocate_budget, budget_from_ratio, check_ratio
from personalens.selection.clustering import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_MERGE,
    check_linkage,
    check_sizes,
    check_threshold,
    cluster_with_distances,
)
from personalens.selection.in_cluster import (
    DIVERSITY_VARIANTS,
    PRECOMPUTE_LIMIT,
    check_alpha,
    distance_rows,
    greedy_picks,
    select_unchecked,
    selection_weights,
)

#: Bumped whenever a change would alter which behaviours are selected for the same configuration (cache keys).
ALGORITHM_VERSION = 1


def chronological_order(n: int, timestamps: object | None) -> np.ndarray | None:
    """The stable argsort of ``timestamps`` (ties keep input order), or ``None`` when the input is already in time
    order (no timestamps, or sorted ones)."""
    if timestamps is None:
        return None
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.shape != (n,):
        raise ValueError(f"timestamps must have one value per behaviour ({n}), got shape {ts.shape}")
    if not np.isfinite(ts).all():
        raise ValueError("timestamps contain NaN or infinite values")
    if n < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return None
    return np.argsort(ts, kind="stable")


def check_random_state(random_state: object) -> int:
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer (reproducible cache keys), not {random_state!r}")
    return int(random_state)


@dataclass(frozen=True, eq=False)
class Selection:
    """What PersonaX selected from one history of n behaviours, with every intermediate result.

    All indices are row positions in the embeddings passed to :meth:`PersonaXSelector.select`.

    * ``labels``: (n,) int64 cluster of each behaviour, 0..m−1 numbered by first appearance in time.
    * ``centroids``: (m, d) float32, μ_i = mean embedding of cluster i.
    * ``sizes``: (m,) int64, s_i. ``budgets``: (m,) int64, a_i (Algorithm 1), summing to the total budget k.
    * ``selected_by_cluster``: per cluster, the picked behaviours (Algorithm 2), each array in time order.
    * ``selected``: all picked behaviours, in time order.
    * ``threshold``: the τ actually used by the clustering.
    * ``memory_bounded``: whether the chunked clustering path ran (n > block_size).
    """

    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    budgets: np.ndarray
    selected_by_cluster: tuple[np.ndarray, ...]
    selected: np.ndarray
    threshold: float
    params: Mapping[str, Any]
    memory_bounded: bool = False

    @property
    def n(self) -> int:
        return int(len(self.labels))

    @property
    def n_clusters(self) -> int:
        return int(len(self.sizes))

    @property
    def budget(self) -> int:
        """k, the total number of selected behaviours."""
        return int(self.budgets.sum())

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter that produced this selection (JSON-ready scalars, for hashing into a cache key)."""
        return dict(self.params)


class PersonaXSelector:
    """PersonaX sub-behaviour selection, configured once and applied to any number of histories.

    Parameters (paper symbols in brackets):

    * ``linkage``: ``"complete"`` (every intra-cluster distance < τ, the paper) or ``"ward"`` (the released code).
    * ``threshold_rule`` / ``threshold`` [τ]: ``"n_clusters"`` with an int m or ``"auto"`` (m = ⌈√(n/8)⌉, the
      default; see :mod:`personalens.selection.clustering` for the measurements behind it), ``"distance"`` with an
      absolute τ (paper: 0.5 or 0.7), or ``"quantile"`` with q in (0, 1] (τ = q-quantile of the pairwise distances).
    * ``alpha`` [α] > 1: w_p = α^-10, w_d = 1 − w_p. 1.001 ≈ centroid selection, 1.4 ≈ boundary selection; the
      paper recommends 1.06–1.08 (default 1.06, as the released code).
    * ``ratio`` in (0, 1]: total budget k = max(m, ⌈n·ratio⌉) capped at n (default 0.5).
    * ``leftover``: Algorithm 1's leftover policy, ``"paper"`` or ``"reference"`` (identical results).
    * ``diversity``: Algorithm 2's diversity gain, ``"paper"`` (2·w_d/a_i · Σ d) or ``"reference"`` (code).
    * ``random_state``: seeds the memory-bounded clustering path (n > ``block_size``); ignored below it.
    * ``block_size`` / ``max_merge``: limits of the memory-bounded path (see the clustering module).
    """

    name = "personax"

    def __init__(
        self,
        *,
        linkage: str = "complete",
        threshold_rule: str = "n_clusters",
        threshold: float | int | str | None = None,
        alpha: float = 1.06,
        ratio: float = 0.5,
        leftover: str = "paper",
        diversity: str = "paper",
        random_state: int = 0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_merge: int = DEFAULT_MAX_MERGE,
    ) -> None:
        self.linkage = check_linkage(linkage)
        self.threshold_rule = threshold_rule
        self.threshold = check_threshold(threshold_rule, threshold)
        self.alpha = check_alpha(alpha)
        self.ratio = check_ratio(ratio)
        if leftover not in LEFTOVER_POLICIES:
            raise ValueError(f"leftover must be one of {LEFTOVER_POLICIES}, not {leftover!r}")
        self.leftover = leftover
        if diversity not in DIVERSITY_VARIANTS:
            raise ValueError(f"diversity must be one of {DIVERSITY_VARIANTS}, not {diversity!r}")
        self.diversity = diversity
        self.random_state = check_random_state(random_state)
        check_sizes(block_size, max_merge)
        self.block_size = int(block_size)
        self.max_merge = int(max_merge)

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (thresholds resolved: ``None`` becomes the rule's default)."""
        return {
            "linkage": self.linkage,
            "threshold_rule": self.threshold_rule,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "ratio": self.ratio,
            "leftover": self.leftover,
            "diversity": self.diversity,
            "random_state": self.random_state,
            "block_size": self.block_size,
            "max_merge": self.max_merge,
        }

    def config(self, *, budget: int | None = None) -> dict[str, Any]:
        """Everything that determines the selection: the parameters, an explicit budget if any, the method and
        :data:`ALGORITHM_VERSION`."""
        return {"method": "personax", "version": ALGORITHM_VERSION, **self.get_params(), "budget": budget}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"PersonaXSelector({args})"

    def select(self, embeddings: object, timestamps: object | None = None, *, budget: int | None = None) -> Selection:
        """Select from one history.

        ``embeddings``: (n, d) array, one row per behaviour (n ≥ 1). ``timestamps``: optional (n,) times; without
        them the rows are taken to be in chronological order already (ties keep input order either way).
        ``budget``: an explicit total k instead of the ratio rule, honoured exactly (capped at n; with k < m the
        smallest clusters get nothing, as Algorithm 1 does) — the baselines use it to compare at equal k.

        BLAS runs on the calling thread only during the call (see
        :func:`personalens.selection._distances.single_blas_thread` for the measurements behind this).
        """
        with single_blas_thread():
            return self._select(embeddings, timestamps, budget)

    def _select(self, embeddings: object, timestamps: object | None, budget: int | None) -> Selection:
        x = as_embeddings(embeddings)
        n = len(x)
        order = chronological_order(n, timestamps)
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0:
                raise ValueError(f"budget must be a non-negative integer, not {budget!r}")
            budget = min(int(budget), n)
        xc = x if order is None else x[order]
        clustering, y2, groups = cluster_with_distances(
            xc,
            linkage=self.linkage,
            threshold_rule=self.threshold_rule,
            threshold=self.threshold,
            block_size=self.block_size,
            max_merge=self.max_merge,
            random_state=self.random_state,
        )
        sizes = clustering.sizes
        k = budget_from_ratio(n, len(sizes), self.ratio) if budget is None else budget
        budgets = allocate_budget(sizes, k, leftover=self.leftover)  # type: ignore[arg-type]
        w_p, w_d = selection_weights(self.alpha)
        if groups is None:  # memory-bounded path
            members = np.split(np.argsort(clustering.labels, kind="stable"), np.cumsum(sizes)[:-1])
        else:
            members = [groups.members(c) for c in range(len(sizes))]
        per_cluster: list[np.ndarray] = []
        for c, mem in enumerate(members):  # each mem is ascending (chronological)
            a = int(budgets[c])
            if a == 0:
                picked = mem[:0]
            elif a == len(mem):
                picked = mem
            else:
                if groups is None:
                    local = select_unchecked(xc[mem], a, w_p, w_d, self.diversity)
                else:
                    # d(e, μ_i) and the member distances come from the clustering (same floats as select_in_cluster)
                    to_mu = groups.to_mean[groups.bounds[c] : groups.bounds[c + 1]]
                    if y2 is not None and len(mem) <= PRECOMPUTE_LIMIT:
                        dist = member_sq_distances(y2, n, mem)
                        local = greedy_picks(to_mu, np.sqrt(dist, out=dist), a, w_p, w_d, self.diversity)
                    else:
                        rows = distance_rows(np.asarray(xc[mem], dtype=np.float64))
                        local = greedy_picks(to_mu, rows, a, w_p, w_d, self.diversity)
                picked = np.sort(mem[local])
            per_cluster.append(picked if order is None else order[picked])
        chosen = np.sort(np.concatenate(per_cluster)) if per_cluster else np.zeros(0, dtype=np.int64)
        labels = clustering.labels
        if order is not None:
            labels = np.empty_like(clustering.labels)
            labels[order] = clustering.labels
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            chosen = order[np.sort(rank[chosen])]
        for arr in (labels, clustering.centroids, sizes, budgets, chosen, *per_cluster):
            arr.setflags(write=False)
        return Selection(
            labels=labels,
            centroids=clustering.centroids,
            sizes=sizes,
            budgets=budgets,
            selected_by_cluster=tuple(per_cluster),
            selected=chosen,
            threshold=clustering.threshold,
            params=MappingProxyType(self.config(budget=budget)),
            memory_bounded=clustering.memory_bounded,
        )

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray:
        """The :class:`~personalens.selection.baselines.Sampler` interface: the selected indices, in time order
        (``k=None`` uses the ratio rule; ``target`` is ignored: PersonaX selects offline)."""
        return self.select(embeddings, timestamps, budget=k).selected


__all__ = ["ALGORITHM_VERSION", "PersonaXSelector", "Selection", "chronological_order"]
