"""Which behaviours each persona is written from, and which persona each candidate is ranked with.

A *plan* is the sampling half of a persona method, with no LLM involved: groups of behaviour indices (one persona
will be written per group) and, for every candidate item, the group whose persona the ranker uses for it.

* Full, Random, Recent (and the single-persona ablations): one group for every candidate.
* Relevance (online, target-dependent): ``per_candidate`` selects the k behaviours nearest each candidate, so each
  candidate gets its own group, as the paper's Relevance baseline does (N_I profiles per request);
  ``candidate_set`` selects once, nearest the mean of the candidates (one profile per request, a cheaper variant).
* PersonaX, Centroid (α = 1.001), Boundary (α = 1.4): one group per cluster that received budget; each candidate uses
  the cluster whose centroid is most cosine-similar to it (retrieval by the target, no LLM call).

All samplers of one (user, ratio) get the same budget k: PersonaX's own rule, k = max(m, ⌈n·ratio⌉) capped at n,
computed with the reference clustering (the first threshold of the experiment). Full ignores k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from personalens.selection import PersonaXSelector, make_sampler
from personalens.selection.baselines import BOUNDARY_ALPHA, CENTROID_ALPHA

SAMPLER_NAMES = ("full", "random", "recent", "relevance", "centroid", "boundary", "personax", "personax-single")
CLUSTERED = {"centroid": CENTROID_ALPHA, "boundary": BOUNDARY_ALPHA}
Relevance = Literal["per_candidate", "candidate_set"]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One sampling configuration. ``threshold_rule``/``threshold`` and ``alpha`` only matter to the clustered
    samplers (PersonaX, Centroid, Boundary); ``ratio`` to all but Full."""

    sampler: str
    ratio: float = 0.5
    threshold_rule: str = "n_clusters"
    threshold: float | int | str | None = None
    alpha: float = 1.06
    linkage: str = "complete"
    relevance: Relevance = "per_candidate"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLER_NAMES)}")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], not {self.ratio!r}")
        if self.relevance not in ("per_candidate", "candidate_set"):
            raise ValueError(f"relevance must be per_candidate or candidate_set, not {self.relevance!r}")

    @property
    def clustered(self) -> bool:
        return self.sampler in ("personax", "personax-single", "centroid", "boundary")

    @property
    def effective_alpha(self) -> float:
        return CLUSTERED.get(self.sampler, self.alpha)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sampler": self.sampler}
        if self.sampler != "full":
            out["ratio"] = self.ratio
        if self.clustered:
            out |= {
                "threshold_rule": self.threshold_rule,
                "threshold": self.threshold,
                "alpha": self.effective_alpha,
                "linkage": self.linkage,
            }
        if self.sampler == "relevance":
            out["relevance"] = self.relevance
        if self.sampler == "random":
            out["seed"] = self.seed
        return out

    def selector(self) -> PersonaXSelector:
        return PersonaXSelector(
            linkage=self.linkage,
            threshold_rule=self.threshold_rule,
            threshold=self.threshold,
            alpha=self.effective_alpha,
            ratio=self.ratio,
            random_state=self.seed,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """``groups[g]``: behaviour indices (time order) for persona g. ``assign[c]``: the group of candidate c."""

    groups: tuple[tuple[int, ...], ...]
    assign: tuple[int, ...]
    budget: int

    @property
    def n_behaviours(self) -> int:
        """How many distinct behaviours the plan reads (the data actually used)."""
        return len({i for g in self.groups for i in g})


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def make_plan(
    spec: MethodSpec,
    behaviours: np.ndarray,
    times: np.ndarray,
    candidates: np.ndarray,
    budget: int,
) -> Plan:
    """The plan for one user: ``behaviours`` (n, d) embeddings of the profiled behaviours with their ``times``,
    ``candidates`` (N_I, d) embeddings of the items to rank, ``budget`` the shared k."""
    n = len(behaviours)
    n_cand = len(candidates)
    k = min(int(budget), n)
    if spec.sampler == "full":
        return Plan((tuple(range(n)),), (0,) * n_cand, n)
    if spec.sampler in ("random", "recent"):
        params = {"random_state": spec.seed} if spec.sampler == "random" else {}
        picks = make_sampler(spec.sampler, **params).sample(behaviours, k, timestamps=times)
        return Plan((tuple(int(i) for i in picks),), (0,) * n_cand, k)
    if spec.sampler == "relevance":
        sampler = make_sampler("relevance")
        if spec.relevance == "candidate_set":
            target = _unit(_unit(candidates).mean(axis=0))
            picks = sampler.sample(behaviours, k, timestamps=times, target=target)
            return Plan((tuple(int(i) for i in picks),), (0,) * n_cand, k)
        groups: dict[tuple[int, ...], int] = {}
        assign = []
        for c in range(n_cand):
            group = tuple(int(i) for i in sampler.sample(behaviours, k, timestamps=times, target=candidates[c]))
            assign.append(groups.setdefault(group, len(groups)))
        return Plan(tuple(groups), tuple(assign), k)
    selection = spec.selector().select(behaviours, times, budget=None if spec.sampler == "personax" else k)
    if spec.sampler == "personax-single":
        return Plan((tuple(int(i) for i in selection.selected),), (0,) * n_cand, selection.budget)
    kept = [c for c, picks in enumerate(selection.selected_by_cluster) if len(picks)]
    groups_list = tuple(tuple(int(i) for i in selection.selected_by_cluster[c]) for c in kept)
    centroids = _unit(np.asarray(selection.centroids, dtype=np.float64)[kept])
    similarity = _unit(candidates) @ centroids.T
    assign_arr = np.argmax(similarity, axis=1)
    return Plan(groups_list, tuple(int(a) for a in assign_arr), selection.budget)


def specs_for(
    samplers: Sequence[str],
    ratios: Sequence[float],
    thresholds: Sequence[float | int | str | None],
    alphas: Sequence[float],
    *,
    threshold_rule: str = "n_clusters",
    linkage: str = "complete",
    relevance: Relevance = "per_candidate",
    seed: int = 0,
) -> list[MethodSpec]:
    """The experiment grid: PersonaX sweeps thresholds × alphas × ratios; Centroid and Boundary sweep thresholds ×
    ratios (their α is fixed); the others sweep ratios only (Full runs once)."""
    out: list[MethodSpec] = []
    common: dict[str, Any] = {"threshold_rule": threshold_rule, "linkage": linkage, "relevance": relevance}
    for sampler in samplers:
        if sampler == "full":
            out.append(MethodSpec("full", 1.0, threshold=thresholds[0], seed=seed, **common))
            continue
        for ratio in ratios:
            if sampler in ("personax", "personax-single"):
                for threshold in thresholds:
                    for alpha in alphas:
                        out.append(MethodSpec(sampler, ratio, threshold=threshold, alpha=alpha, seed=seed, **common))
            elif sampler in CLUSTERED:
                for threshold in thresholds:
                    out.append(MethodSpec(sampler, ratio, threshold=threshold, seed=seed, **common))
            else:
                out.append(MethodSpec(sampler, ratio, threshold=thresholds[0], seed=seed, **common))
    return out


__all__ = ["SAMPLER_NAMES", "MethodSpec", "Plan", "make_plan", "specs_for"]
