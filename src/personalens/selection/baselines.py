"""The paper's §5.1.4 sampling baselines, all at the same budget k so they compare with PersonaX at equal data use.

Every sampler has ``sample(embeddings, k, *, timestamps=None, target=None) -> indices`` returning row positions in
time order (ties in time keep input order), and ``config()`` for cache keys. ``k`` larger than the history is capped
at n.

* :class:`FullSampler`: the whole history (k is ignored).
* :class:`RecentSampler`: the k most recent behaviours.
* :class:`RandomSampler`: k behaviours uniformly without replacement, seeded by ``random_state`` (the same seed gives
  the same picks on every call).
* :class:`RelevanceSampler`: online, the k behaviours with the highest cosine similarity to the target item's
  embedding (ties: the more recent first).
* :class:`CentroidSampler`: PersonaX with α = 1.001 (nearest the centroids).
* :class:`BoundarySampler`: PersonaX with α = 1.4 (towards the cluster boundaries).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from personalens.selection._distances import as_embeddings
from personalens.selection.sampler import PersonaXSelector, check_random_state, chronological_order

CENTROID_ALPHA = 1.001
BOUNDARY_ALPHA = 1.4


@runtime_checkable
class Sampler(Protocol):
    name: str

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray: ...

    def config(self) -> dict[str, Any]: ...


def _check_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, not {k!r}")
    return min(int(k), n)


def _time_order(n: int, timestamps: object | None) -> np.ndarray:
    order = chronological_order(n, timestamps)
    return np.arange(n, dtype=np.int64) if order is None else order


def _in_time_order(indices: np.ndarray, order: np.ndarray) -> np.ndarray:
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return order[np.sort(rank[indices])]


class FullSampler:
    """The complete history, oldest first."""

    name = "full"

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray:
        x = as_embeddings(embeddings)
        return _time_order(len(x), timestamps)

    def config(self) -> dict[str, Any]:
        return {"method": self.name}


class RecentSampler:
    """The last k behaviours in time."""

    name = "recent"

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray:
        x = as_embeddings(embeddings)
        k = _check_k(k, len(x))
        order = _time_order(len(x), timestamps)
        return order[len(order) - k :]

    def config(self) -> dict[str, Any]:
        return {"method": self.name}


class RandomSampler:
    """k behaviours drawn uniformly without replacement by ``numpy.random.default_rng(random_state)``."""

    name = "random"

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = check_random_state(random_state)

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray:
        x = as_embeddings(embeddings)
        k = _check_k(k, len(x))
        picks = np.random.default_rng(self.random_state).choice(len(x), size=k, replace=False)
        return _in_time_order(picks.astype(np.int64), _time_order(len(x), timestamps))

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "random_state": self.random_state}


class RelevanceSampler:
    """The k behaviours most similar (cosine) to ``target``, the candidate item's embedding; needs the target, so it
    runs online, once per candidate."""

    name = "relevance"

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray:
        x = as_embeddings(embeddings)
        k = _check_k(k, len(x))
        if target is None:
            raise ValueError("RelevanceSampler needs the target item's embedding (target=...)")
        t = np.asarray(target, dtype=np.float64).reshape(-1)
        if t.shape != (x.shape[1],) or not np.isfinite(t).all():
            raise ValueError(f"target must be a finite vector of {x.shape[1]} components, got shape {t.shape}")
        x64 = np.asarray(x, dtype=np.float64)
        norms = np.linalg.norm(x64, axis=1) * np.linalg.norm(t)
        cosine = np.divide(x64 @ t, norms, out=np.zeros(len(x64)), where=norms > 0)
        order = _time_order(len(x), timestamps)
        recency = np.empty(len(x), dtype=np.int64)
        recency[order] = np.arange(len(x))
        best = np.lexsort((-recency, -cosine))[:k]  # by cosine descending, then the more recent first
        return _in_time_order(best.astype(np.int64), order)

    def config(self) -> dict[str, Any]:
        return {"method": self.name}


class _PersonaXAtAlpha:
    name = "personax"
    alpha = 1.06

    def __init__(self, **selector_params: Any) -> None:
        if "alpha" in selector_params:
            raise ValueError(f"{type(self).__name__} fixes alpha={self.alpha}; use PersonaXSelector for other values")
        self.selector = PersonaXSelector(alpha=self.alpha, **selector_params)

    def sample(
        self, embeddings: object, k: int | None = None, *, timestamps: object | None = None, target: object = None
    ) -> np.ndarray:
        return self.selector.select(embeddings, timestamps, budget=k).selected

    def config(self) -> dict[str, Any]:
        return {**self.selector.config(), "method": self.name}


class CentroidSampler(_PersonaXAtAlpha):
    """PersonaX with α = 1.001 (w_p ≈ 0.990): in each cluster, the members nearest its centroid."""

    name = "centroid"
    alpha = CENTROID_ALPHA


class BoundarySampler(_PersonaXAtAlpha):
    """PersonaX with α = 1.4 (w_p ≈ 0.035): in each cluster, diverse members towards its boundary."""

    name = "boundary"
    alpha = BOUNDARY_ALPHA


SAMPLERS: dict[str, type] = {
    cls.name: cls
    for cls in (FullSampler, RecentSampler, RandomSampler, RelevanceSampler, CentroidSampler, BoundarySampler)
}


def make_sampler(name: str, **params: Any) -> Sampler:
    """A baseline by name (``full``, ``recent``, ``random``, ``relevance``, ``centroid``, ``boundary``) or
    ``personax``, with its parameters."""
    if name == "personax":
        return PersonaXSelector(**params)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted([*SAMPLERS, 'personax'])}")
    return SAMPLERS[name](**params)


__all__ = [
    "BOUNDARY_ALPHA",
    "CENTROID_ALPHA",
    "SAMPLERS",
    "BoundarySampler",
    "CentroidSampler",
    "FullSampler",
    "RandomSampler",
    "RecentSampler",
    "RelevanceSampler",
    "Sampler",
    "make_sampler",
]
