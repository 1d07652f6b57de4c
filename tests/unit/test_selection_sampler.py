"""PersonaXSelector end to end, and the baselines at the same budget."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalens.selection import (
    SAMPLERS,
    BoundarySampler,
    CentroidSampler,
    FullSampler,
    PersonaXSelector,
    RandomSampler,
    RecentSampler,
    RelevanceSampler,
    Sampler,
    make_sampler,
    select_in_cluster,
)


def _history(seed: int, n: int, d: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, d))
    x = centres[rng.integers(0, 5, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _check_selection(sel, n):
    assert sel.labels.shape == (n,)
    assert sel.budgets.sum() == sel.budget == len(sel.selected)
    assert (sel.budgets <= sel.sizes).all()
    assert sel.centroids.shape[0] == sel.n_clusters and sel.centroids.dtype == np.float32
    assert len(set(sel.selected.tolist())) == len(sel.selected)  # no duplicates
    assert sorted(np.concatenate(sel.selected_by_cluster).tolist()) == sorted(sel.selected.tolist())
    for c, picked in enumerate(sel.selected_by_cluster):
        assert len(picked) == sel.budgets[c]
        assert (sel.labels[picked] == c).all()  # subsets of their cluster


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 120),
    st.floats(0.05, 1.0),
    st.sampled_from(["complete", "ward"]),
    st.sampled_from(["paper", "reference"]),
)
def test_selection_properties(seed, n, ratio, linkage, diversity):
    x = _history(seed, n)
    sel = PersonaXSelector(linkage=linkage, ratio=ratio, diversity=diversity).select(x)
    _check_selection(sel, n)
    assert np.all(np.diff(sel.selected) > 0)  # chronological (input order)
    for picked in sel.selected_by_cluster:
        assert np.all(np.diff(picked) > 0)
    assert sel.budget == min(n, max(sel.n_clusters, int(np.ceil(round(n * ratio, 9)))))
    assert (sel.budgets >= 1).all()  # k ≥ m always holds with the ratio rule


def test_timestamps_order_everything():
    x = _history(1, 60)
    base = PersonaXSelector().select(x)
    perm = np.random.default_rng(0).permutation(60)
    times = np.arange(60, dtype=float) * 3600.0
    shuffled = PersonaXSelector().select(x[perm], times[perm])
    _check_selection(shuffled, 60)
    # the same behaviours are chosen; indices refer to the shuffled rows, listed in time order
    assert perm[shuffled.selected].tolist() == base.selected.tolist()
    assert np.all(np.diff(times[perm][shuffled.selected]) > 0)
    assert shuffled.labels[np.argsort(perm)].tolist() == base.labels.tolist()
    for a, b in zip(shuffled.selected_by_cluster, base.selected_by_cluster, strict=True):
        assert perm[a].tolist() == b.tolist()


def test_ties_in_time_keep_input_order():
    x = _history(2, 10)
    sel = PersonaXSelector(ratio=1.0).select(x, np.zeros(10))
    assert sel.selected.tolist() == list(range(10))


def test_pipeline_uses_algorithm_2_inside_each_cluster():
    x = _history(3, 80)
    sel = PersonaXSelector(alpha=1.08, ratio=0.3).select(x)
    for c, picked in enumerate(sel.selected_by_cluster):
        members = np.flatnonzero(sel.labels == c)
        if 0 < sel.budgets[c] < len(members):
            local = select_in_cluster(x[members], int(sel.budgets[c]), alpha=1.08)
            assert picked.tolist() == sorted(members[local].tolist())


def test_edge_cases():
    with pytest.raises(ValueError, match="empty"):
        PersonaXSelector().select(np.zeros((0, 8), dtype=np.float32))
    one = PersonaXSelector().select(np.ones((1, 8), dtype=np.float32))
    assert one.selected.tolist() == [0] and one.labels.tolist() == [0] and one.budgets.tolist() == [1]
    same = PersonaXSelector(ratio=0.3).select(np.ones((20, 8), dtype=np.float32))
    assert same.n_clusters == 1 and same.selected.tolist() == list(range(6))  # ties: the earliest
    everything = PersonaXSelector().select(_history(4, 30), budget=100)
    assert everything.selected.tolist() == list(range(30))
    nothing = PersonaXSelector().select(_history(4, 30), budget=0)
    assert nothing.selected.tolist() == [] and nothing.budget == 0
    few = PersonaXSelector(threshold=6).select(_history(4, 30), budget=2)  # k < m: the smallest clusters get 0
    assert few.budget == 2 and (few.budgets == 0).sum() == few.n_clusters - 2
    with pytest.raises(ValueError, match="timestamps"):
        PersonaXSelector().select(_history(4, 30), np.zeros(29))
    with pytest.raises(ValueError, match="NaN"):
        PersonaXSelector().select(_history(4, 3), [0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="budget"):
        PersonaXSelector().select(_history(4, 3), budget=-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"linkage": "single"}, "linkage"),
        ({"threshold_rule": "gap"}, "threshold_rule"),
        ({"threshold_rule": "distance", "threshold": -0.5}, "threshold"),
        ({"threshold_rule": "quantile", "threshold": 2.0}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"leftover": "largest"}, "leftover"),
        ({"diversity": "code"}, "diversity"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": None}, "random_state"),
        ({"block_size": 8}, "block_size"),
    ],
)
def test_hyper_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PersonaXSelector(**kwargs)


def test_config_is_complete_and_hashable():
    selector = PersonaXSelector(alpha=1.08, threshold_rule="distance", threshold=0.7, linkage="ward")
    sel = selector.select(_history(5, 40))
    config = sel.config()
    assert config == selector.config()
    for key in ("linkage", "threshold_rule", "threshold", "alpha", "ratio", "leftover", "diversity", "random_state"):
        assert key in config
    assert config["threshold"] == 0.7 and config["alpha"] == 1.08 and config["method"] == "personax"
    json.dumps(config, sort_keys=True)  # plain scalars only
    assert PersonaXSelector().config()["threshold"] == "auto"
    assert PersonaXSelector().select(_history(5, 40), budget=7).config()["budget"] == 7
    assert sel.threshold == 0.7
    copy = sel.config()
    copy["alpha"] = 2.0  # a fresh dict each time ...
    assert sel.config()["alpha"] == 1.08
    with pytest.raises(TypeError):
        sel.params["alpha"] = 2.0  # type: ignore[index]  # ... over read-only params


def test_results_are_read_only():
    sel = PersonaXSelector().select(_history(6, 30))
    with pytest.raises(ValueError):
        sel.selected[0] = 5


def test_memory_bounded_path_through_the_selector():
    x = _history(7, 300)
    sel = PersonaXSelector(block_size=64, max_merge=32).select(x)
    assert sel.memory_bounded
    _check_selection(sel, 300)


# --- baselines ---------------------------------------------------------------------------------------------------


def test_baselines_return_k_in_time_order():
    x = _history(8, 50)
    times = np.random.default_rng(1).permutation(50).astype(float)
    target = x[3]
    for name in ("recent", "random", "relevance", "centroid", "boundary", "personax"):
        sampler = make_sampler(name)
        assert isinstance(sampler, Sampler)
        for k in (1, 7, 50, 80):
            got = sampler.sample(x, k, timestamps=times, target=target)
            assert len(got) == min(k, 50) == len(set(got.tolist()))
            assert np.all(np.diff(times[got]) > 0)
    assert FullSampler().sample(x, 5, timestamps=times).tolist() == np.argsort(times).tolist()
    assert set(SAMPLERS) == {"full", "recent", "random", "relevance", "centroid", "boundary"}
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("oldest")


def test_recent_and_relevance_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    assert RecentSampler().sample(x, 2).tolist() == [3, 4]
    assert RecentSampler().sample(x, 2, timestamps=[5, 4, 3, 2, 1]).tolist() == [1, 0]
    # cosine to (1, 0): 1, 0, 0.6, 0.8, -1 -> top 2 = rows 0 and 3
    assert RelevanceSampler().sample(x, 2, target=[2.0, 0.0]).tolist() == [0, 3]
    # rows 0 and 2 are identical, so tied in cosine to (0.6, 0.8)
    tied = np.array([[0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    assert RelevanceSampler().sample(tied, 1, target=[0.6, 0.8]).tolist() == [2]  # the more recent wins
    with pytest.raises(ValueError, match="target"):
        RelevanceSampler().sample(x, 2)
    with pytest.raises(ValueError, match="target"):
        RelevanceSampler().sample(x, 2, target=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="k"):
        RecentSampler().sample(x, -1)


def test_random_is_reproducible():
    x = _history(9, 100)
    a = RandomSampler(random_state=3).sample(x, 10)
    assert a.tolist() == RandomSampler(random_state=3).sample(x, 10).tolist()
    assert a.tolist() != RandomSampler(random_state=4).sample(x, 10).tolist()
    assert RandomSampler(3).config() == {"method": "random", "random_state": 3}


def test_centroid_and_boundary_are_personax_at_fixed_alpha():
    x = _history(10, 60)
    assert CentroidSampler().selector.alpha == 1.001 and BoundarySampler().selector.alpha == 1.4
    expected = PersonaXSelector(alpha=1.001).select(x, budget=12).selected
    assert CentroidSampler().sample(x, 12).tolist() == expected.tolist()
    assert BoundarySampler(linkage="ward").config()["linkage"] == "ward"
    assert BoundarySampler().config()["method"] == "boundary"
    with pytest.raises(ValueError, match="alpha"):
        CentroidSampler(alpha=1.2)
    # boundary picks lie farther from their centroids than centroid picks, on average
    cen = PersonaXSelector(alpha=1.001).select(x, budget=20)
    bnd = PersonaXSelector(alpha=1.4).select(x, budget=20)

    def spread(sel):
        return np.mean([np.linalg.norm(x[i] - sel.centroids[sel.labels[i]]) for i in sel.selected])

    assert spread(bnd) > spread(cen)


def test_blas_runs_on_one_thread_during_selection_and_is_restored():
    from personalens.selection._distances import _local_thread_setters, single_blas_thread

    setters = _local_thread_setters()
    if not setters:
        pytest.skip("no OpenBLAS with openblas_set_num_threads_local here")

    def current() -> list[int]:
        values = [fn(1) for fn in setters]  # each call returns the previous value
        for fn, value in zip(setters, values, strict=True):
            fn(value)
        return values

    before = current()
    with single_blas_thread():
        assert current() == [1] * len(setters)
        PersonaXSelector().select(_history(11, 40))
        assert current() == [1] * len(setters)  # nested use inside select() restored the outer setting
    assert current() == before
