"""PersonaX §3.3, Algorithm 2 (in-cluster selection): hand-worked cases, a brute-force cross-check, properties."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalens.selection import select_in_cluster, selection_weights

LINE = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])  # 1-D members; μ = 16 / 5 = 3.2


def test_weights():
    w_p, w_d = selection_weights(1.06)
    assert w_p == pytest.approx(1.06**-10) == pytest.approx(0.558395, abs=1e-6)
    assert w_p + w_d == pytest.approx(1.0)
    for bad in (1.0, 0.9, float("nan"), float("inf"), "1.1", None):
        with pytest.raises(ValueError, match="alpha"):
            selection_weights(bad)  # type: ignore[arg-type]


def test_alpha_1001_is_centroid_selection_by_hand():
    # d(e, μ) = [3.2, 2.2, 1.2, 0.2, 6.8]; w_p = 1.001^-10 = 0.990055, w_d = 0.009945; paper coef 2·w_d/3 = 0.006630
    # pick 1: argmin d(e, μ) -> index 3 (x = 3)
    # pick 2: g_p = w_p/(1+d): i0 0.23573, i1 0.30939, i2 0.45003, i4 0.12693
    #         g_d = 0.00663·|x-3|: i0 0.01989, i1 0.01326, i2 0.00663, i4 0.04641 -> totals 0.2556 0.3227 0.4567 0.1733
    #         -> index 2 (x = 2)
    # pick 3: Σd to {3, 2}: i0 5, i1 3, i4 15 -> totals 0.2689, 0.3293, 0.2264 -> index 1 (x = 1)
    # = the three members nearest μ (d 0.2, 1.2, 2.2), in that order
    assert select_in_cluster(LINE, 3, alpha=1.001).tolist() == [3, 2, 1]
    assert select_in_cluster(LINE, 3, alpha=1.001, diversity="reference").tolist() == [3, 2, 1]


def test_alpha_14_leans_to_the_boundary_by_hand():
    # w_p = 1.4^-10 = 0.034572, w_d = 0.965428, paper coef 2·w_d/3 = 0.643619
    # pick 1: index 3 (x = 3, nearest μ)
    # pick 2: g_d = 0.643619·|x-3|: i0 1.93086, i1 1.28724, i2 0.64362, i4 4.50533 (g_p < 0.016 everywhere)
    #         -> index 4 (x = 10)
    # pick 3: Σd to {3, 10}: i0 13, i1 11, i2 9 -> 8.3753, 7.0906, 5.8083 -> index 0 (x = 0)
    # = both extremes, where centroid selection took {1, 2, 3}
    assert select_in_cluster(LINE, 3, alpha=1.4).tolist() == [3, 4, 0]
    # reference gain w_d·(pairs in S∪{e})/|S∪{e}|: pick 2 i4 0.0044 + 0.965428·7/2 = 3.3834 (best);
    # pick 3 (pairs in S = 7): i0 0.0082 + 0.965428·20/3 = 6.444, i1 5.803, i2 5.165 -> index 0 again
    assert select_in_cluster(LINE, 3, alpha=1.4, diversity="reference").tolist() == [3, 4, 0]


def test_alpha_14_takes_the_corners_in_2d():
    # a centre point, four inner points at radius 0.1 and four corners at (±1, ±1); budget 5.
    inner = [[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [0.0, -0.1]]
    corners = [[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]
    x = np.array([[0.0, 0.0], *inner, *corners])  # μ = (0, 0)
    # α = 1.4: after the centre, a corner has Σd = √2 vs 0.1 for an inner point; coef 2·0.9654/5 = 0.386, so the
    # diversity gain (0.546 vs 0.039) dwarfs any prototypicality difference (w_p = 0.035); every later corner adds
    # distances ≥ 2 to the picked corners, an inner point ≤ 1.5 -> centre + 4 corners
    assert sorted(select_in_cluster(x, 5, alpha=1.4).tolist()) == [0, 5, 6, 7, 8]
    # α = 1.001: g_p of an inner point 0.990/1.1 = 0.900 vs a corner 0.990/2.414 = 0.410; diversity adds at most
    # 2·0.00995/5 · 4·2.83 = 0.045 -> centre + 4 inner points
    assert sorted(select_in_cluster(x, 5, alpha=1.001).tolist()) == [0, 1, 2, 3, 4]


def test_paper_and_reference_gains_differ_by_hand():
    # members 1, 6, 7, 8, 9 (μ = 6.2), α = 1.06 (w_p = 0.558395, w_d = 0.441605), budget 4
    x = np.array([[1.0], [6.0], [7.0], [8.0], [9.0]])
    # picks 1-3 agree: 6 (nearest μ), then 1 (Σd 5), then 9 (Σd 3 + 8 = 11)
    # pick 4, candidates 7 (i2: g_p 0.558395/1.8 = 0.310219, Σd to {6,1,9} = 1+6+2 = 9)
    #                 and 8 (i3: g_p 0.558395/2.8 = 0.199427, Σd = 2+7+1 = 10):
    # paper,     coef 2·w_d/a_i = 0.220803: i2 0.310219 + 1.987225 = 2.297444, i3 0.199427 + 2.208025 = 2.407452 -> 8
    # reference, w_d/|S∪{e}| = 0.110401:   i2 0.310219 + 0.993609 = 1.303828, i3 0.199427 + 1.104013 = 1.303440 -> 7
    # (the shared pairs-in-S term is the same for both candidates)
    assert select_in_cluster(x, 4, alpha=1.06).tolist() == [1, 0, 4, 3]
    assert select_in_cluster(x, 4, alpha=1.06, diversity="reference").tolist() == [1, 0, 4, 2]


def brute_force(x: np.ndarray, budget: int, alpha: float, diversity: str) -> list[int]:
    """Algorithm 2 written out literally: every candidate's score recomputed from scratch at every step."""
    w_p, w_d = alpha**-10, 1 - alpha**-10
    mu = x.mean(axis=0)
    dist = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    chosen = [int(np.argmin([dist(e, mu) for e in x]))]
    while len(chosen) < budget:
        best, best_score = -1, -np.inf
        for j in range(len(x)):
            if j in chosen:
                continue
            g_p = w_p / (1 + dist(x[j], mu))
            if diversity == "paper":
                g_d = 2 * w_d / budget * sum(dist(x[j], x[b]) for b in chosen)
            else:
                group = [*chosen, j]
                g_d = w_d * sum(dist(x[a], x[b]) for a, b in itertools.combinations(group, 2)) / len(group)
            if g_p + g_d > best_score:
                best, best_score = j, g_p + g_d
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("diversity", ["paper", "reference"])
@pytest.mark.parametrize("alpha", [1.001, 1.06, 1.08, 1.4])
def test_matches_brute_force(diversity, alpha):
    rng = np.random.default_rng(int(alpha * 1000))
    for n, d in ((9, 2), (16, 8)):
        x = rng.standard_normal((n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for budget in (1, 2, n // 2, n - 1):
            got = select_in_cluster(x, budget, alpha=alpha, diversity=diversity).tolist()
            assert got == brute_force(x, budget, alpha, diversity)


def test_float32_input_and_precomputed_distances_agree():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x64 = x.astype(np.float64)
    dist = np.linalg.norm(x64[:, None] - x64[None], axis=2)
    a = select_in_cluster(x, 12, alpha=1.06)
    b = select_in_cluster(x, 12, alpha=1.06, distances=dist)
    assert a.tolist() == b.tolist()


def test_edges_and_errors():
    assert select_in_cluster(LINE, 0, alpha=1.06).tolist() == []
    assert sorted(select_in_cluster(LINE, 5, alpha=1.06).tolist()) == [0, 1, 2, 3, 4]
    same = np.ones((4, 3))
    assert select_in_cluster(same, 2, alpha=1.06).tolist() == [0, 1]  # all tied: earliest first
    with pytest.raises(ValueError, match="budget"):
        select_in_cluster(LINE, 6, alpha=1.06)
    with pytest.raises(ValueError, match="budget"):
        select_in_cluster(LINE, -1, alpha=1.06)
    with pytest.raises(ValueError, match="diversity"):
        select_in_cluster(LINE, 2, alpha=1.06, diversity="code")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        select_in_cluster(np.zeros((0, 3)), 0, alpha=1.06)
    with pytest.raises(ValueError, match="centroid"):
        select_in_cluster(LINE, 2, alpha=1.06, centroid=[0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        select_in_cluster(np.array([[np.nan]]), 1, alpha=1.06)


@st.composite
def symmetric_shells(draw):
    """Pairs ±r_k·v_k (so μ = 0 exactly) with radii ≤ 1 growing by ≥ 1.5×: then w_p's prototypicality gap between
    radii exceeds anything α = 1.001's diversity term can add (see the module test notes)."""
    pairs = draw(st.integers(2, 8))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    growth = rng.uniform(1.5, 2.5, pairs)
    radii = np.cumprod(growth)
    radii = radii / radii[-1]
    vecs = rng.standard_normal((pairs, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    x = np.concatenate([vecs * radii[:, None], -vecs * radii[:, None]])
    return x[rng.permutation(len(x))]


@settings(max_examples=60, deadline=None, database=None)
@given(symmetric_shells(), st.data())
def test_alpha_1001_takes_the_items_nearest_the_centroid(x, data):
    # With radii r_j ≥ 1.5·r_i and r ≤ 1: prototypicality gap w_p·(r_j − r_i)/((1+r_i)(1+r_j)) ≥ w_p·(r_j − r_i)/4,
    # diversity advantage of the farther one ≤ (2·w_d/a)·|S|·(r_i + r_j) ≤ 2·w_d·(r_i + r_j); with w_d/w_p ≈ 0.01
    # the first wins whenever (r_j − r_i)/(r_j + r_i) > 0.08, i.e. r_j/r_i > 1.18.
    budget = data.draw(st.integers(1, len(x)))
    picked = select_in_cluster(x, budget, alpha=1.001)
    dist = np.linalg.norm(x - x.mean(axis=0), axis=1)
    rest = np.setdiff1d(np.arange(len(x)), picked)
    if len(rest):
        assert dist[picked].max() <= dist[rest].min() + 1e-12


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**32 - 1), st.data())
def test_picks_are_distinct_members(n, d, seed, data):
    x = np.random.default_rng(seed).standard_normal((n, d))
    budget = data.draw(st.integers(0, n))
    alpha = data.draw(st.sampled_from([1.001, 1.06, 1.4]))
    for diversity in ("paper", "reference"):
        picked = select_in_cluster(x, budget, alpha=alpha, diversity=diversity)
        assert len(picked) == budget == len(set(picked.tolist()))
        assert ((picked >= 0) & (picked < n)).all()
        if budget:
            to_mu = np.linalg.norm(x - x.mean(axis=0), axis=1)
            assert to_mu[picked[0]] <= to_mu.min() + 1e-12  # the first pick is nearest μ (exact ties: either)
