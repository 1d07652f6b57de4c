"""PersonaX §3.2, Algorithm 1 (sampling budget allocation) and the ratio → budget rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalens.selection import allocate_budget, budget_from_ratio
from personalens.selection.allocation import distribute_leftover


def test_algorithm_1_by_hand():
    # sizes [2, 10, 3, 8], k = 12. Ascending visit: c0 (2), c2 (3), c3 (8), c1 (10).
    # c0: q = 12 // 4 = 3, a = min(2, 3) = 2, B = 10
    # c2: q = 10 // 3 = 3, a = min(3, 3) = 3, B = 7
    # c3: q =  7 // 2 = 3, a = min(8, 3) = 3, B = 4
    # c1: q =  4 // 1 = 4, a = min(10, 4) = 4, B = 0
    assert allocate_budget([2, 10, 3, 8], 12).tolist() == [2, 4, 3, 3]


def test_equal_sizes_later_clusters_get_the_remainder():
    # sizes [5, 5, 5], k = 7, visited in label order 0, 1, 2 (stable sort):
    # q = 7 // 3 = 2 -> a0 = 2, B = 5; q = 5 // 2 = 2 -> a1 = 2, B = 3; q = 3 // 1 = 3 -> a2 = 3
    assert allocate_budget([5, 5, 5], 7).tolist() == [2, 2, 3]


def test_budget_below_cluster_count_starves_smallest():
    # sizes [1, 4, 2, 3], k = 2. Visit c0 (1), c2 (2), c3 (3), c1 (4):
    # q = 2 // 4 = 0 -> a0 = 0; q = 2 // 3 = 0 -> a2 = 0; q = 2 // 2 = 1 -> a3 = 1, B = 1; q = 1 -> a1 = 1
    assert allocate_budget([1, 4, 2, 3], 2).tolist() == [0, 1, 0, 1]


def test_edges():
    assert allocate_budget([3, 1, 2], 6).tolist() == [3, 1, 2]  # k = n: everything
    assert allocate_budget([3, 1, 2], 0).tolist() == [0, 0, 0]
    assert allocate_budget([], 0).tolist() == []
    with pytest.raises(ValueError, match="exceeds"):
        allocate_budget([3, 1, 2], 7)
    with pytest.raises(ValueError, match=">= 1"):
        allocate_budget([3, 0], 1)
    with pytest.raises(ValueError, match="non-negative"):
        allocate_budget([3], -1)
    with pytest.raises(ValueError, match="leftover"):
        allocate_budget([3], 1, leftover="largest")  # type: ignore[arg-type]


def test_leftover_policies_differ_when_reached():
    # A state Algorithm 1's first pass never leaves (see the module docstring), to show what each policy does:
    # sizes [1, 3, 5], a = [1, 1, 1], 3 units left.
    sizes, order = np.array([1, 3, 5]), np.array([0, 1, 2])
    paper = np.array([1, 1, 1])
    distribute_leftover(paper, sizes, order, 3, "paper")
    # ascending sweep: c0 full, c1 -> 2, c2 -> 2, second sweep: c1 -> 3
    assert paper.tolist() == [1, 3, 2]
    reference = np.array([1, 1, 1])
    distribute_leftover(reference, sizes, order, 3, "reference")
    # largest first: c2 -> 2, c1 -> 2, c0 full, second sweep: c2 -> 3
    assert reference.tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        distribute_leftover(np.array([1, 3, 5]), sizes, order, 1, "paper")


def test_budget_from_ratio():
    assert budget_from_ratio(10, 2, 0.3) == 3  # 10 · 0.3 = 3.0000000000000004 must not become 4
    assert budget_from_ratio(10, 5, 0.3) == 5  # at least one per cluster
    assert budget_from_ratio(480, 8, 0.5) == 240
    assert budget_from_ratio(7, 3, 1.0) == 7
    assert budget_from_ratio(3, 1, 0.01) == 1
    assert budget_from_ratio(1, 1, 0.5) == 1
    for bad in (0, -0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="ratio"):
            budget_from_ratio(10, 2, bad)
    with pytest.raises(ValueError, match="more clusters"):
        budget_from_ratio(3, 4, 0.5)


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=25), st.data())
def test_allocation_properties(sizes, data):
    k = data.draw(st.integers(0, sum(sizes)))
    a = allocate_budget(sizes, k)
    s = np.array(sizes)
    assert a.sum() == k
    assert (a >= 0).all() and (a <= s).all()
    if k >= len(sizes):
        assert (a >= 1).all()
    # the leftover step is unreachable for k <= sum(sizes), so both policies agree
    assert a.tolist() == allocate_budget(sizes, k, leftover="reference").tolist()
    # balance: a cluster that is not taken whole gets at least as much as any other cluster
    partial = a < s
    if partial.any():
        assert a[partial].min() >= a.max() - 1
