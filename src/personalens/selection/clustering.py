"""PersonaX step 3.1, *behaviour clustering*: hierarchical clustering of one user's behaviour embeddings.

The paper clusters the item embeddings e_1..e_n of a history with Euclidean distance d(e_i, e_j) = ‖e_i − e_j‖₂ and a
threshold τ such that every intra-cluster distance is below τ. Two linkages are offered:

``"complete"`` (the paper's guarantee)
    The height of a merge is the largest distance between members of the two clusters, so cutting the tree below τ
    yields clusters whose every pairwise distance is < τ (intra-cluster constraint of §3.1).
``"ward"`` (the authors' released code)
    Ward's minimum-variance merges (scipy's height units, ``sqrt(2·Δ within-cluster sum of squares)``), cut below τ.
    There is no bound on intra-cluster distances.

Threshold rules (``threshold_rule`` / ``threshold``):

``"distance"``   an absolute τ (the paper uses τ ∈ {0.5, 0.7} with 1024-d EasyRec vectors).
``"quantile"``   τ = the q-quantile of this user's pairwise distances (linear interpolation).
``"n_clusters"`` cut the tree into a target number m of clusters (``"auto"``: m = ⌈√(n/8)⌉); the τ that produces the cut
                 is reported.

**Why the default is ``"n_clusters"`` with ``"auto"``.** On MiniLM embeddings (384-d, unit norm) of item text
(title + genres) pairwise distances are concentrated: over the 134 MovieLens latest-small users with ≥ 200 ratings
(n = 200–2698) the per-user 5 % quantile is 0.85–0.96, the median 1.01–1.10 and the maximum 1.29–1.48. Measured
cluster counts (min / median / max over those users, complete linkage):

* τ = 0.5: 198 / 377 / 2661 clusters and τ = 0.7: 158 / 338 / 2291, i.e. almost every behaviour is its own cluster,
  the budget floor of one behaviour per cluster exceeds n·ratio, and selection degenerates into taking everything;
  Ward gives the same counts.
* quantile rule, q = 0.1 / 0.3 / 0.5: 75–722 / 48–435 / 33–284 clusters (median 140 / 87 / 59): still far from a
  handful, and the count grows with n and depends on the embedder.
* τ = 1.2: 5 / 17 / 73 (and τ = 1.5: a single cluster): a fixed τ that works is a property of the embedder, not of
  the method.
* ``"auto"``, m = ⌈√(n/8)⌉ (5 at n = 200, 8 at 480, 16 at 2 000, 50 at 20 000): 5 / 7 / 19 clusters; the largest
  holds 13–56 % of the history (median 27 %), at most 2 singleton clusters per user; the τ that produces the cut is
  1.20–1.31 (complete) — the embedder-specific τ the paper would have had to tune.

The count rule keeps the paper's semantics (complete linkage: every intra-cluster distance < the reported τ) while
being independent of the embedder's distance scale; one persona is built per cluster, so m is also the number of LLM
calls per user, and it grows slowly with the history length.

**Memory-bounded path** (n > ``block_size``, default 2048). The exact path needs the (n, n) distance matrix and
scipy's condensed float64 copy (8·n²/2 bytes: 1.6 GB at n = 20 000). Above ``block_size``:

1. split the rows into chunks of ≤ ``block_size`` by seeded bisecting 2-means (a median split along the same
   direction when 2-means leaves less than a quarter on one side);
2. cluster each chunk exactly: at τ for the distance/quantile rules (the quantile τ is estimated from 250 000
   random pairs), or, for the count rule, into ~``max_merge``·n_chunk/n sub-clusters;
3. merge the sub-clusters with the same linkage, using exact cluster-to-cluster linkage values (complete: the
   largest member-to-member distance, computed in ~1024 × 1024 blocks; Ward: the size-weighted centroid formula,
   which Lance–Williams continues exactly), by a nearest-neighbour chain on an (M, M) matrix of the M ≤
   ``max_merge`` sub-clusters, cut by the same rule. When a distance rule leaves more than ``max_merge``
   sub-clusters (tiny clusters, e.g. the paper's τ on MiniLM), the sub-clusters are first bisected into groups of
   ≤ ``max_merge`` by their centroids and merged within groups only.

Complete linkage keeps its guarantee on this path (two sub-clusters merge only if every cross distance is < τ), but
the partition is not always the one exact complete linkage would give (chunks can split a cluster the exact method
would have found: on 20 000 synthetic vectors the paper's τ = 0.5 gives 2 615 clusters here). Extra memory, beyond
the input: ≈ 4·n·d (the first bisection's float32 copy) + ~42 MB for a 2048-row chunk (the float32 distances,
freed once condensed; the condensed float32 and float64 copies and scipy's working copy) + 16·max_merge² + 8·M·d
(sub-cluster means, Ward or many sub-clusters only). Measured at n = 20 000, d = 384 on a busy 2-core machine
(benchmarks/bench_selection.py, when a chunk still took ~75 MB):
peak RSS +66 MB and 3.8 s with complete linkage and the default count rule, +87 MB and 1.7 s with Ward, +87 MB and
2.1 s for complete linkage at τ = 0.5 — against ≥ 1.6 GB for the exact path (the released code: 3.3 GB, 100–145 s).

Distances come from BLAS Gram products in the input's precision (float32 for embedder output); wherever a distance
is compared with an absolute τ, the pairs within 1e-4 of τ are recomputed exactly in float64 first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import cdist, squareform

from personalens.selection._distances import (
    REFINE_MARGIN,
    as_embeddings,
    compute_dtype,
    refine_near,
    single_blas_thread,
    sq_distance_matrix,
    sq_distances_between,
    sq_distances_condensed,
)

Linkage = Literal["complete", "ward"]
ThresholdRule = Literal["distance", "quantile", "n_clusters"]

LINKAGES: tuple[str, ...] = ("complete", "ward")
THRESHOLD_RULES: tuple[str, ...] = ("distance", "quantile", "n_clusters")
#: The threshold value used when ``threshold=None``: the paper's τ, the median pairwise distance, ⌈√(n/8)⌉ clusters.
DEFAULT_THRESHOLDS: dict[str, float | str] = {"distance": 0.5, "quantile": 0.5, "n_clusters": "auto"}
DEFAULT_BLOCK_SIZE = 2048
DEFAULT_MAX_MERGE = 1024
#: When a count cut merges everything, the reported τ is the last merge height plus this (Gram-based float32
#: distances are exact to about 1e-6, so τ stays above the exact largest intra-cluster distance).
HEIGHT_MARGIN = 1e-4
_QUANTILE_PAIRS = 250_000
_CENTROID_BLOCK = 8192
_PAIR_BLOCK = 16_384
_MERGE_BLOCK_ROWS = 1024
_REDUCE_LOOP_MAX = 32


def auto_n_clusters(n: int) -> int:
    """The default target number of clusters m = ⌈√(n/8)⌉ within [1, n]: 3 at n = 50, 5 at 200, 8 at 480, 16 at 2000."""
    if n <= 0:
        return 0
    return max(1, min(n, math.ceil(math.sqrt(n / 8))))


def check_threshold(rule: str, value: object) -> float | int | str:
    """Validate ``value`` for ``rule`` (``None`` = the rule's default) and return it normalised."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, not {rule!r}")
    if value is None:
        value = DEFAULT_THRESHOLDS[rule]
    if rule == "n_clusters":
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"threshold for 'n_clusters' must be an integer >= 1 or 'auto', not {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"threshold for {rule!r} must be a number, not {value!r}")
    value = float(value)
    if rule == "distance" and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"threshold τ for 'distance' must be a finite number > 0, not {value!r}")
    if rule == "quantile" and not 0 < value <= 1:
        raise ValueError(f"threshold for 'quantile' must be in (0, 1], not {value!r}")
    return value


def check_linkage(linkage: str) -> str:
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, not {linkage!r}")
    return linkage


@dataclass(frozen=True, eq=False)
class Clustering:
    """The clusters c_1..c_m of one history.

    ``labels[i]`` is the cluster of behaviour i, numbered 0..m−1 by first appearance in the input order (the input is
    chronological, so cluster 0 holds the oldest behaviour). ``centroids[i]`` is μ_i, the mean of the member
    embeddings (float32); ``sizes[i]`` is s_i = |c_i|. ``threshold`` is the τ actually used: the given τ, the computed
    quantile, or for the count rule the midpoint between the last applied and the first refused merge height (any τ
    in between gives the same cut). With Ward it is in scipy's Ward-height units, not a distance.
    ``memory_bounded`` tells whether the chunked path ran, and ``n_chunks`` on how many chunks.
    """

    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    threshold: float
    linkage: str
    threshold_rule: str
    threshold_value: float | int | str
    memory_bounded: bool = False
    n_chunks: int = 1

    @property
    def n_clusters(self) -> int:
        return int(len(self.sizes))


def cluster_behaviours(
    embeddings: object,
    *,
    linkage: Linkage = "complete",
    threshold_rule: ThresholdRule = "n_clusters",
    threshold: float | int | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_merge: int = DEFAULT_MAX_MERGE,
    random_state: int = 0,
) -> Clustering:
    """Cluster an (n, d) embedding matrix (rows in chronological order) hierarchically; see the module docstring.

    ``random_state`` only matters on the memory-bounded path (n > ``block_size``) and for quantile estimation there.
    """
    x = as_embeddings(embeddings)
    clustering, _, _ = cluster_with_distances(
        x,
        linkage=linkage,
        threshold_rule=threshold_rule,
        threshold=threshold,
        block_size=block_size,
        max_merge=max_merge,
        random_state=random_state,
    )
    return clustering


def check_sizes(block_size: int, max_merge: int) -> None:
    for name, value, low in (("block_size", block_size, 16), ("max_merge", max_merge, 16)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")


def cluster_with_distances(
    x: np.ndarray,
    *,
    linkage: str,
    threshold_rule: str,
    threshold: float | int | str | None,
    block_size: int,
    max_merge: int,
    random_state: int,
) -> tuple[Clustering, np.ndarray | None, Groups | None]:
    """:func:`cluster_behaviours` on a validated matrix, also returning what in-cluster selection reuses when the
    exact path ran (``None`` twice on the memory-bounded path): the condensed squared distances in the input's
    precision (``squareform`` order, not refined; ``None`` for n = 1 too) and the members of each cluster with
    their float64 means (:class:`Groups`)."""
    with single_blas_thread():
        return _cluster_with_distances(x, linkage, threshold_rule, threshold, block_size, max_merge, random_state)


def _cluster_with_distances(
    x: np.ndarray,
    linkage: str,
    threshold_rule: str,
    threshold: float | int | str | None,
    block_size: int,
    max_merge: int,
    random_state: int,
) -> tuple[Clustering, np.ndarray | None, Groups | None]:
    check_linkage(linkage)
    value = check_threshold(threshold_rule, threshold)
    check_sizes(block_size, max_merge)
    n = len(x)
    y2: np.ndarray | None = None
    n_chunks = 1
    if n == 1:
        raw = np.zeros(1, dtype=np.int64)
        tau = float(value) if threshold_rule == "distance" else 0.0
    elif n <= block_size:
        y2 = sq_distances_condensed(x)
        raw, tau, _ = _cut_exact(y2, x, linkage, threshold_rule, value)
    else:
        raw, tau, n_chunks = _cluster_bounded(
            x, linkage, threshold_rule, value, block_size, max_merge, np.random.default_rng(random_state)
        )
    labels = _first_appearance(raw)
    groups: Groups | None = None
    if n <= block_size:
        groups = group_rows(x, labels)
        centroids, sizes = groups.means.astype(np.float32), groups.sizes
    else:
        centroids, sizes = _centroids(x, labels)
    clustering = Clustering(
        labels=labels,
        centroids=centroids,
        sizes=sizes,
        threshold=float(tau),
        linkage=linkage,
        threshold_rule=threshold_rule,
        threshold_value=value,
        memory_bounded=n > block_size,
        n_chunks=n_chunks,
    )
    return clustering, y2, groups


# --- exact path ------------------------------------------------------------------------------------------------


def _cut_exact(
    y: np.ndarray, x: np.ndarray, linkage: str, rule: str, value: float | int | str
) -> tuple[np.ndarray, float, float]:
    """Flat cluster ids (arbitrary order), τ used and the largest merge height applied, from the condensed squared
    distances ``y`` of ``x`` (``squareform`` order; left unchanged).

    Complete linkage runs on squared distances: it only takes maxima, so the tree is the same and heights are
    squared; this saves a square root over n² entries. Ward needs the distances themselves. With an absolute τ the
    pairs within 1e-4 of τ are recomputed exactly first, so "< τ" is decided on exact distances even when the
    matrix came from a float32 Gram product. With the count rule the reported τ is the midpoint between the last
    applied and the first refused merge height (any τ in between gives the same cut), or the last height plus
    :data:`HEIGHT_MARGIN` when everything merged."""
    n = len(x)
    y2 = np.asarray(y, dtype=np.float64)
    tau = 0.0
    if rule != "n_clusters":
        tau = float(value) if rule == "distance" else float(np.quantile(np.sqrt(y2), float(value)))
        if y2 is y:
            y2 = y2.copy()  # refined in place: the caller's y keeps the Gram-based values
        refine_near(y2, x, tau)
    if linkage == "complete":
        z = scipy_linkage(y2, method="complete")
        z[:, 2] = np.sqrt(z[:, 2])
    else:
        z = scipy_linkage(np.sqrt(y2), method="ward")
    heights = z[:, 2]
    if rule == "n_clusters":
        target = auto_n_clusters(n) if value == "auto" else min(int(value), n)
        # like fcluster's "maxclust": the fewest merges leaving ≤ target clusters, plus any merge tied with the last
        applied = n - target
        if applied > 0:
            applied = int(np.searchsorted(heights, heights[applied - 1], side="right"))
        last = float(heights[applied - 1]) if applied > 0 else 0.0
        if applied == n - 1:
            tau = last + HEIGHT_MARGIN  # everything merged: any τ above the last height would do
        else:
            tau = 0.5 * (last + float(heights[applied]))
        return flat_clusters(z, applied), tau, last
    applied = int(np.searchsorted(heights, tau, side="left"))  # every merge with height < τ
    return flat_clusters(z, applied), tau, float(heights[applied - 1]) if applied > 0 else 0.0


def flat_clusters(z: np.ndarray, applied: int) -> np.ndarray:
    """Flat cluster ids (arbitrary order) after the first ``applied`` merges of a monotone linkage matrix ``z``
    (heights ascending, as complete and Ward linkage give): what ``fcluster`` returns, without its Python-level
    validation of ``z``. Roots are found by pointer doubling, O(n log n) vectorised."""
    n = len(z) + 1
    parent = np.arange(2 * n - 1, dtype=np.int64)
    if applied > 0:
        pairs = z[:applied, :2].astype(np.int64)
        new = np.arange(n, n + applied, dtype=np.int64)
        parent[pairs[:, 0]] = new
        parent[pairs[:, 1]] = new
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent[:n]
        parent = nxt


def _first_appearance(raw: np.ndarray) -> np.ndarray:
    """Relabel to 0..m−1 in order of first appearance."""
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int64)
    return rank[inverse.reshape(-1)]


@dataclass(frozen=True, eq=False)
class Groups:
    """The clusters' members (exact path). ``order`` lists the members of cluster 0, then of cluster 1, ..., each
    cluster's in input (chronological) order; cluster i is ``order[bounds[i]:bounds[i + 1]]``, of size s_i =
    ``sizes[i]``; ``means[i]`` is its float64 mean μ_i and ``to_mean[bounds[i]:bounds[i + 1]]`` the exact
    (float64, difference-based) distances d(e, μ_i) of its members, in the same order."""

    order: np.ndarray
    bounds: np.ndarray
    sizes: np.ndarray
    means: np.ndarray
    to_mean: np.ndarray

    def members(self, i: int) -> np.ndarray:
        return self.order[self.bounds[i] : self.bounds[i + 1]]


def group_rows(x: np.ndarray, labels: np.ndarray) -> Groups:
    """:class:`Groups` of ``labels`` (0..m−1). Each μ_i sums its rows in order in float64 (``np.add.reduce`` over
    axis 0, or ``np.add.reduceat``, which sums in the same order), so it is bit for bit
    ``x[members].astype(float64).mean(axis=0)``, and d(e, μ_i) is computed as
    :func:`~personalens.selection._distances.distances_to_point` does."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels).astype(np.int64)
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    if len(sizes) > _REDUCE_LOOP_MAX:
        rows = np.asarray(x[order], dtype=np.float64)
        means = np.add.reduceat(rows, bounds[:-1], axis=0) / sizes[:, None]
        rows -= np.repeat(means, sizes, axis=0)
        to_mean = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    else:  # a few clusters: one row-wise reduction each is ~4x faster than np.add.reduceat over axis 0
        means = np.empty((len(sizes), x.shape[1]), dtype=np.float64)
        to_mean = np.empty(len(labels), dtype=np.float64)
        for i in range(len(sizes)):
            block = np.asarray(x[order[bounds[i] : bounds[i + 1]]], dtype=np.float64)
            np.add.reduce(block, axis=0, out=means[i])
            means[i] /= sizes[i]
            block -= means[i]
            to_mean[bounds[i] : bounds[i + 1]] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return Groups(order=order, bounds=bounds, sizes=sizes, means=means, to_mean=to_mean)


def _centroids(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ_i = mean of the member embeddings as float32, and s_i."""
    means, sizes = _means(x, labels)
    return means.astype(np.float32), sizes


def _means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 cluster means and sizes. Rows are summed in blocks of 8192, so the float64 temporaries stay
    O(8192·d) whatever n is."""
    m = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=m).astype(np.int64)
    sums = np.zeros((m, x.shape[1]), dtype=np.float64)
    for start in range(0, len(labels), _CENTROID_BLOCK):
        lab = labels[start : start + _CENTROID_BLOCK]
        order = np.argsort(lab, kind="stable")
        ordered = lab[order]
        block = np.asarray(x[start : start + _CENTROID_BLOCK][order], dtype=np.float64)
        starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        sums[ordered[starts]] += np.add.reduceat(block, starts, axis=0)  # no BLAS: see single_blas_thread
    return sums / sizes[:, None], sizes


# --- memory-bounded path ---------------------------------------------------------------------------------------


def _cluster_bounded(
    x: np.ndarray,
    linkage: str,
    rule: str,
    value: float | int | str,
    block_size: int,
    max_merge: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float, int]:
    n = len(x)
    chunks = partition_rows(x, block_size, rng)
    target = 0
    if rule == "n_clusters":
        target = auto_n_clusters(n) if value == "auto" else min(int(value), n)
        n_sub = max(target, min(max_merge, n))
        tau = 0.0
    else:
        tau = float(value) if rule == "distance" else estimate_distance_quantile(x, float(value), rng)
    sub = np.empty(n, dtype=np.int64)
    offset = 0
    chunk_height = 0.0
    for idx in chunks:
        y = sq_distances_condensed(x[idx])
        if rule == "n_clusters":
            m_c = max(1, min(len(idx), round(n_sub * len(idx) / n)))
            raw, _, applied = _cut_exact(y, x[idx], linkage, "n_clusters", m_c)
        else:
            raw, _, applied = _cut_exact(y, x[idx], linkage, "distance", tau)
        del y
        chunk_height = max(chunk_height, applied)
        local = _first_appearance(raw)
        sub[idx] = local + offset
        offset += int(local.max()) + 1
    n_sub_found = offset
    sub_sizes = np.bincount(sub, minlength=n_sub_found).astype(np.float64)
    sub_means = _means(x, sub)[0] if linkage == "ward" or n_sub_found > max_merge else None
    if rule == "n_clusters" or n_sub_found <= max_merge:
        groups = [np.arange(n_sub_found)]
    else:
        assert sub_means is not None
        groups = partition_rows(sub_means, max_merge, rng)
    final = np.arange(n_sub_found)
    next_height = math.inf
    for group in groups:
        if len(group) == 1:
            continue
        if linkage == "ward":
            assert sub_means is not None
            work = _ward_matrix(sub_means[group], sub_sizes[group])
        else:
            work = _complete_matrix(x, sub, group, None if rule == "n_clusters" else tau)
        merges = nn_chain(work, sub_sizes[group], linkage)
        heights = np.sqrt(np.array([h for _, _, h in merges]))
        if rule == "n_clusters":
            count = len(group) - min(target, len(group))
            if count > 0:
                count = int(np.searchsorted(heights, heights[count - 1], side="right"))  # ties merge together
            if count < len(heights):
                next_height = min(next_height, float(heights[count]))
        else:
            count = int(np.searchsorted(heights, tau, side="left"))
        _apply_merges(final, group, merges[:count])
        if count:
            chunk_height = max(chunk_height, float(heights[count - 1]))
    if rule == "n_clusters":
        if math.isfinite(next_height) and next_height > chunk_height:
            tau = 0.5 * (chunk_height + next_height)
        else:
            tau = chunk_height + HEIGHT_MARGIN
    return final[sub], tau, len(chunks)


def _apply_merges(final: np.ndarray, group: np.ndarray, merges: list[tuple[int, int, float]]) -> None:
    """Union the merged sub-clusters (local indices into ``group``) in ``final`` (sub-cluster → representative)."""
    parent = np.arange(len(group))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b, _ in merges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    roots = np.array([find(i) for i in range(len(group))])
    final[group] = group[roots]


def _ward_matrix(means: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(g, g) squared Ward heights between clusters, in scipy's units: 2·|A||B|/(|A|+|B|)·‖μ_A − μ_B‖² (for two
    singletons, the squared distance). Lance–Williams continues exactly from these (see :func:`nn_chain`)."""
    out = sq_distances_between(means, means)
    out *= 2.0 * np.outer(sizes, sizes) / (sizes[:, None] + sizes[None, :])
    np.fill_diagonal(out, 0.0)
    return out


def _complete_matrix(x: np.ndarray, sub: np.ndarray, group: np.ndarray, tau: float | None) -> np.ndarray:
    """(g, g) complete linkage between the sub-clusters in ``group``: the largest squared distance between their
    members, computed in the input's precision in blocks of about 1024 × 1024 member pairs (a sub-cluster is never
    split across blocks). With ``tau`` the pairs whose value lies within 1e-4 of τ are recomputed exactly."""
    g = len(group)
    local = np.full(int(sub.max()) + 1, -1, dtype=np.int64)
    local[group] = np.arange(g)
    rows = np.flatnonzero(local[sub] >= 0)
    lab = local[sub[rows]]
    order = rows[np.argsort(lab, kind="stable")]
    counts = np.bincount(lab, minlength=g)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    blocks = _aligned_blocks(counts, _MERGE_BLOCK_ROWS)
    dtype = compute_dtype(x)
    out = np.zeros((g, g), dtype=np.float64)
    for ci, (c0, c1) in enumerate(blocks):
        cols: np.ndarray = np.asarray(x[order[starts[c0] : starts[c1 - 1] + counts[c1 - 1]]], dtype=dtype)
        cols_t = np.ascontiguousarray(cols.T)
        col_starts = starts[c0:c1] - starts[c0]
        for r0, r1 in blocks[: ci + 1]:
            rws = x[order[starts[r0] : starts[r1 - 1] + counts[r1 - 1]]]
            block = sq_distances_between(rws, cols, cols_t, dtype=dtype)
            block = np.maximum.reduceat(block, col_starts, axis=1)
            block = np.maximum.reduceat(block, starts[r0:r1] - starts[r0], axis=0)
            out[r0:r1, c0:c1] = block
            out[c0:c1, r0:r1] = block.T
    if tau is not None:
        lo, hi = max(tau - REFINE_MARGIN, 0.0) ** 2, (tau + REFINE_MARGIN) ** 2
        for a, b in zip(*np.nonzero(np.triu((out > lo) & (out < hi), 1)), strict=True):
            members_a = x[order[starts[a] : starts[a] + counts[a]]].astype(np.float64)
            members_b = x[order[starts[b] : starts[b] + counts[b]]].astype(np.float64)
            out[a, b] = out[b, a] = cdist(members_a, members_b, "sqeuclidean").max()
    return out


def _aligned_blocks(counts: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Consecutive runs of sub-clusters holding about ``target`` rows (a sub-cluster is never split)."""
    blocks, start, rows = [], 0, 0
    for i, c in enumerate(counts):
        rows += int(c)
        if rows >= target:
            blocks.append((start, i + 1))
            start, rows = i + 1, 0
    if start < len(counts):
        blocks.append((start, len(counts)))
    return blocks


def nn_chain(work: np.ndarray, sizes: np.ndarray, linkage: str) -> list[tuple[int, int, float]]:
    """Agglomerate g weighted clusters by the nearest-neighbour chain; returns the g−1 merges (a, b, squared height)
    sorted by height (stable), with a, b local indices of the clusters' representatives.

    ``work`` holds squared linkage values (:func:`_ward_matrix`, :func:`_complete_matrix`). Lance–Williams updates:
    complete → max(d(A,C), d(B,C)); Ward → ((|A|+|C|)·d(A,C) + (|B|+|C|)·d(B,C) − |C|·d(A,B)) / (|A|+|B|+|C|) on
    squared heights. Both linkages are reducible, so the chain finds the same merges as the greedy algorithm (up to
    ties). O(g²) memory, O(g²) numpy work."""
    g = len(work)
    d = np.array(work, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    size = np.asarray(sizes, dtype=np.float64).copy()
    alive = np.ones(g, dtype=bool)
    merges: list[tuple[int, int, float]] = []
    chain: list[int] = []
    while len(merges) < g - 1:
        if not chain:
            chain.append(int(np.flatnonzero(alive)[0]))
        a = chain[-1]
        row = d[a]
        b = int(np.argmin(row))
        if len(chain) > 1 and row[chain[-2]] <= row[b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            h = float(d[a, b])
            if linkage == "complete":
                new = np.maximum(d[a], d[b])
            else:
                total = size[a] + size[b] + size
                with np.errstate(invalid="ignore"):
                    new = ((size[a] + size) * d[a] + (size[b] + size) * d[b] - size * h) / total
            new[~alive] = np.inf
            keep, drop = min(a, b), max(a, b)
            new[keep] = new[drop] = np.inf
            d[keep, :] = new
            d[:, keep] = new
            d[drop, :] = np.inf
            d[:, drop] = np.inf
            size[keep] += size[drop]
            alive[drop] = False
            merges.append((keep, drop, h))
        else:
            chain.append(b)
    merges.sort(key=lambda m: m[2])
    return merges


def partition_rows(x: np.ndarray, max_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split the rows of ``x`` into chunks of at most ``max_size`` rows by bisecting 2-means (farthest-point start,
    8 Lloyd steps); a split that leaves less than a quarter on one side is replaced by a median split along the same
    direction, so the depth stays O(log(n / max_size)). Deterministic for a given ``rng`` state."""
    out: list[np.ndarray] = []
    stack = [np.arange(len(x))]
    while stack:
        idx = stack.pop()
        if len(idx) <= max_size:
            out.append(idx)
            continue
        left = _bisect(np.asarray(x[idx], dtype=np.float32), rng)
        stack.append(idx[~left])
        stack.append(idx[left])
    return out


def _bisect(xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask splitting the rows of ``xs`` in two; squared distances to a point c are ranked through
    ‖x‖² − 2·x·c (matrix-vector products), so no (n, d) temporaries are made."""
    n = len(xs)
    sq = np.einsum("ij,ij->i", xs, xs)

    def farthest(point: np.ndarray) -> np.ndarray:
        return xs[int(np.argmax(sq - 2.0 * (xs @ point)))]

    c1 = farthest(xs[int(rng.integers(n))])
    c2 = farthest(c1)
    left = np.zeros(n, dtype=bool)
    for _ in range(8):
        direction = c2 - c1
        new_left = xs @ direction < 0.5 * (float(c2 @ c2) - float(c1 @ c1))
        count = int(new_left.sum())
        if count in (0, n) or (new_left == left).all():
            left = new_left
            break
        left = new_left
        weights = left.astype(xs.dtype)
        c1 = (weights @ xs) / count
        c2 = ((1 - weights) @ xs) / (n - count)
    small = min(int(left.sum()), n - int(left.sum()))
    if small < n // 4:
        direction = c2 - c1
        if not np.any(direction):
            direction = np.asarray(rng.standard_normal(xs.shape[1]), dtype=xs.dtype)
        order = np.argsort(xs @ direction, kind="stable")
        left = np.zeros(n, dtype=bool)
        left[order[: n // 2]] = True
    return left


def estimate_distance_quantile(x: np.ndarray, q: float, rng: np.random.Generator) -> float:
    """The q-quantile of pairwise distances, exact when there are at most 250 000 pairs, else estimated from
    250 000 random pairs (i ≠ j), computed in blocks; memory O(block·d)."""
    n = len(x)
    total = n * (n - 1) // 2
    if total <= _QUANTILE_PAIRS:
        return float(np.quantile(np.sqrt(squareform(sq_distance_matrix(x, full=False), checks=False)), q))
    i = rng.integers(0, n, _QUANTILE_PAIRS)
    j = (i + rng.integers(1, n, _QUANTILE_PAIRS)) % n
    dist = np.empty(_QUANTILE_PAIRS, dtype=np.float64)
    for s in range(0, _QUANTILE_PAIRS, _PAIR_BLOCK):
        diff = x[i[s : s + _PAIR_BLOCK]].astype(np.float64) - x[j[s : s + _PAIR_BLOCK]]
        dist[s : s + _PAIR_BLOCK] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return float(np.quantile(dist, q))


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MAX_MERGE",
    "DEFAULT_THRESHOLDS",
    "LINKAGES",
    "THRESHOLD_RULES",
    "Clustering",
    "Groups",
    "Linkage",
    "ThresholdRule",
    "auto_n_clusters",
    "cluster_behaviours",
    "estimate_distance_quantile",
    "group_rows",
    "nn_chain",
    "partition_rows",
]
