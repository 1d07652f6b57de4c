"""PersonaX §3.1 (behaviour clustering): hand-worked cuts, the complete-linkage guarantee, the memory-bounded path."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist, pdist

from personalens.selection import auto_n_clusters, cluster_behaviours
from personalens.selection.clustering import nn_chain, partition_rows

# chronological input; the three groups are {0, 0.1, 0.2}, {5, 5.1} and {10}
POINTS = np.array([[5.0], [0.0], [10.0], [0.1], [5.1], [0.2]])


def test_complete_linkage_at_tau_by_hand():
    c = cluster_behaviours(POINTS, linkage="complete", threshold_rule="distance", threshold=0.5)
    # numbered by first appearance: 5 -> cluster 0, 0 -> 1, 10 -> 2
    assert c.labels.tolist() == [0, 1, 2, 1, 0, 1]
    assert c.sizes.tolist() == [2, 3, 1]
    assert c.centroids[:, 0] == pytest.approx([5.05, 0.1, 10.0])
    assert c.centroids.dtype == np.float32
    assert c.threshold == 0.5


def test_target_count_by_hand():
    # complete merge heights: (0, 0.1) 0.1, (5, 5.1) 0.1, ({0, 0.1}, 0.2) 0.2, ({5, 5.1}, 10) 5.0, all 10.0
    c = cluster_behaviours(POINTS, threshold_rule="n_clusters", threshold=2)
    assert c.labels.tolist() == [0, 1, 0, 1, 0, 1]
    # any τ in (5.0, 10.0] gives this cut; the midpoint is reported
    assert c.threshold == pytest.approx(7.5)
    one = cluster_behaviours(POINTS, threshold_rule="n_clusters", threshold=1)
    assert one.labels.tolist() == [0] * 6 and one.threshold > 10.0


def test_quantile_threshold():
    # 15 pairwise distances; the median (8th smallest) is |5.1 - 0.2| = 4.9
    c = cluster_behaviours(POINTS, threshold_rule="quantile", threshold=0.5)
    assert c.threshold == pytest.approx(np.quantile(pdist(POINTS), 0.5)) == pytest.approx(4.9)
    assert c.labels.tolist() == [0, 1, 2, 1, 0, 1]  # merges need a max distance < 4.9


def test_ward_has_no_intra_cluster_guarantee():
    # 0, 1, 2.2, 3.2: pairs (0, 1) and (2.2, 3.2) merge at 1. Ward joins the two pairs at
    # sqrt(2·2·2/4)·|0.5 − 2.7| = 1.4142·2.2 = 3.111, complete linkage at max distance 3.2.
    x = np.array([[0.0], [1.0], [2.2], [3.2]])
    ward = cluster_behaviours(x, linkage="ward", threshold_rule="distance", threshold=3.15)
    assert ward.n_clusters == 1  # 3.111 < 3.15, although |0 − 3.2| = 3.2 ≥ τ
    complete = cluster_behaviours(x, linkage="complete", threshold_rule="distance", threshold=3.15)
    assert complete.labels.tolist() == [0, 0, 1, 1]


def test_auto_count():
    assert [auto_n_clusters(n) for n in (1, 8, 50, 200, 480, 2000, 20000)] == [1, 1, 3, 5, 8, 16, 50]


def test_edges():
    one = cluster_behaviours(np.ones((1, 4), dtype=np.float32))
    assert one.labels.tolist() == [0] and one.sizes.tolist() == [1]
    same = cluster_behaviours(np.ones((30, 4), dtype=np.float32))  # all merges at height 0: one cluster
    assert same.n_clusters == 1 and same.sizes.tolist() == [30]
    assert cluster_behaviours(np.ones((30, 4)), threshold_rule="distance", threshold=0.5).n_clusters == 1
    with pytest.raises(ValueError, match="empty"):
        cluster_behaviours(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="2-D"):
        cluster_behaviours(np.zeros(4))
    with pytest.raises(ValueError, match="linkage"):
        cluster_behaviours(POINTS, linkage="single")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold_rule"):
        cluster_behaviours(POINTS, threshold_rule="gap")  # type: ignore[arg-type]
    for rule, bad in (("distance", 0), ("distance", -1.0), ("quantile", 0.0), ("quantile", 1.5), ("n_clusters", 0)):
        with pytest.raises(ValueError, match="threshold"):
            cluster_behaviours(POINTS, threshold_rule=rule, threshold=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_behaviours(POINTS, threshold_rule="n_clusters", threshold=2.5)
    with pytest.raises(ValueError, match="block_size"):
        cluster_behaviours(POINTS, block_size=4)


def _random(seed: int, n: int, d: int, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d))
    x = centres[rng.integers(0, 4, n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _check_structure(c, x):
    n = len(x)
    labels = c.labels
    assert labels.shape == (n,) and labels.min() == 0 and labels.max() == c.n_clusters - 1
    firsts = [int(np.flatnonzero(labels == k)[0]) for k in range(c.n_clusters)]
    assert firsts == sorted(firsts)  # numbered by first appearance
    assert c.sizes.tolist() == np.bincount(labels).tolist()
    for k in range(c.n_clusters):
        np.testing.assert_allclose(c.centroids[k], x[labels == k].astype(np.float64).mean(axis=0), atol=1e-6)


def _max_intra(x, labels, k):
    """The largest distance inside cluster k (-1 for a singleton, which satisfies any τ ≥ 0)."""
    members = x[labels == k].astype(np.float64)
    return pdist(members).max() if len(members) > 1 else -1.0


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 60),
    st.integers(1, 8),
    st.floats(0.2, 1.6),
    st.sampled_from([np.float32, np.float64]),
)
def test_complete_linkage_guarantees(seed, n, d, tau, dtype):
    x = _random(seed, n, d, dtype)
    c = cluster_behaviours(x, linkage="complete", threshold_rule="distance", threshold=tau)
    _check_structure(c, x)
    exact = x.astype(np.float64)
    for k in range(c.n_clusters):
        assert _max_intra(exact, c.labels, k) < tau  # intra-cluster constraint of §3.1
    for p in range(c.n_clusters):  # inter-cluster: complete-linkage distance ≥ τ between any two clusters
        for q in range(p + 1, c.n_clusters):
            assert cdist(exact[c.labels == p], exact[c.labels == q]).max() >= tau - 1e-6


@settings(max_examples=40, deadline=None, database=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 60), st.integers(2, 8), st.integers(1, 10))
def test_target_count(seed, n, d, m):
    x = _random(seed, n, d)
    for method in ("complete", "ward"):
        c = cluster_behaviours(x, linkage=method, threshold_rule="n_clusters", threshold=m)
        _check_structure(c, x)
        assert c.n_clusters == min(m, n)  # continuous random data: no tied merge heights
        if method == "complete":
            for k in range(c.n_clusters):
                assert _max_intra(x, c.labels, k) < c.threshold


def test_ward_matches_scipy_on_raw_vectors():
    # the reference code: linkage(E, 'ward') on the raw vectors, fcluster(t=τ, 'distance')
    x = _random(3, 80, 16)
    for tau in (0.6, 0.9, 1.3):
        ours = cluster_behaviours(x, linkage="ward", threshold_rule="distance", threshold=tau)
        ref = fcluster(linkage(x, "ward"), tau, criterion="distance")
        assert _same_partition(ours.labels, ref)


def _same_partition(a, b) -> bool:
    pairs = {(int(i), int(j)) for i, j in zip(a, b, strict=True)}
    return len(pairs) == len({i for i, _ in pairs}) == len({j for _, j in pairs})


@pytest.mark.parametrize("method", ["complete", "ward"])
def test_nn_chain_matches_scipy(method):
    x = _random(5, 50, 6)
    heights = np.sqrt([h for _, _, h in nn_chain(cdist(x, x) ** 2, np.ones(50), method)])
    np.testing.assert_allclose(heights, linkage(x, method)[:, 2], rtol=1e-9)


def test_partition_rows_is_bounded_and_complete():
    x = _random(9, 700, 5)
    chunks = partition_rows(x, 64, np.random.default_rng(0))
    assert max(len(c) for c in chunks) <= 64
    assert sorted(np.concatenate(chunks).tolist()) == list(range(700))
    again = partition_rows(x, 64, np.random.default_rng(0))
    assert [c.tolist() for c in chunks] == [c.tolist() for c in again]


@pytest.mark.parametrize("method", ["complete", "ward"])
@pytest.mark.parametrize(("rule", "value"), [("n_clusters", "auto"), ("n_clusters", 7), ("distance", 0.9)])
def test_memory_bounded_path(method, rule, value):
    x = _random(11, 400, 8, np.float32)
    c = cluster_behaviours(x, linkage=method, threshold_rule=rule, threshold=value, block_size=64, max_merge=48)
    assert c.memory_bounded and c.n_chunks >= 7
    _check_structure(c, x)
    if rule == "n_clusters":
        assert c.n_clusters == (auto_n_clusters(400) if value == "auto" else value)
    if method == "complete":
        tau = c.threshold
        assert all(_max_intra(x, c.labels, k) < tau for k in range(c.n_clusters))
    again = cluster_behaviours(x, linkage=method, threshold_rule=rule, threshold=value, block_size=64, max_merge=48)
    assert again.labels.tolist() == c.labels.tolist()


def test_memory_bounded_path_with_more_sub_clusters_than_max_merge():
    # τ = 0.3 leaves nearly every behaviour alone: the merge stage works in groups of ≤ max_merge sub-clusters
    x = _random(12, 300, 8)
    c = cluster_behaviours(x, threshold_rule="distance", threshold=0.3, block_size=64, max_merge=32)
    _check_structure(c, x)
    assert all(_max_intra(x, c.labels, k) < 0.3 for k in range(c.n_clusters))
    q = cluster_behaviours(x, threshold_rule="quantile", threshold=0.1, block_size=64, max_merge=32)
    assert q.threshold == pytest.approx(np.quantile(pdist(x), 0.1))  # ≤ 250 000 pairs: exact


def test_exact_path_helpers_match_the_plain_formulas() -> None:
    """The shared pieces the sampler reuses are bit for bit what the plain computations give."""
    from scipy.spatial.distance import squareform

    from personalens.selection._distances import (
        distances_to_point,
        member_sq_distances,
        sq_distance_matrix,
        sq_distances_condensed,
    )
    from personalens.selection.clustering import group_rows

    rng = np.random.default_rng(3)
    for n, m, dtype in ((2, 1, np.float32), (37, 5, np.float32), (120, 40, np.float32), (60, 4, np.float64)):
        x = rng.standard_normal((n, 16)).astype(dtype)
        y2 = sq_distances_condensed(x)
        assert np.array_equal(y2, squareform(sq_distance_matrix(x, full=False), checks=False))
        labels = np.unique(rng.integers(0, m, n), return_inverse=True)[1].reshape(-1)
        groups = group_rows(x, labels)
        full = squareform(y2)
        for c in range(len(groups.sizes)):
            mem = groups.members(c)
            assert np.array_equal(member_sq_distances(y2, n, mem), full[np.ix_(mem, mem)])
            x64 = x[mem].astype(np.float64)
            assert np.array_equal(groups.means[c], x64.mean(axis=0))
            span = slice(groups.bounds[c], groups.bounds[c + 1])
            assert np.array_equal(groups.to_mean[span], distances_to_point(x64, x64.mean(axis=0)))
