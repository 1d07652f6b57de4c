"""PersonaX sub-behaviour selection: pick a compact, representative subset of a long behaviour history.

The three steps of the paper (PersonaX, §3.1–3.3), one module each:

* :mod:`~personalens.selection.clustering` — §3.1 behaviour clustering (complete or Ward linkage, threshold τ);
* :mod:`~personalens.selection.allocation` — §3.2 sampling budget allocation (Algorithm 1);
* :mod:`~personalens.selection.in_cluster` — §3.3 in-cluster selection (Algorithm 2, α, w_p, w_d);

then :mod:`~personalens.selection.sampler` (:class:`PersonaXSelector`, the whole pipeline) and
:mod:`~personalens.selection.baselines` (Full, Recent, Random, Relevance, Centroid, Boundary at the same budget).
"""

from personalens.selection.allocation import LEFTOVER_POLICIES, allocate_budget, budget_from_ratio
from personalens.selection.baselines import (
    BOUNDARY_ALPHA,
    CENTROID_ALPHA,
    SAMPLERS,
    BoundarySampler,
    CentroidSampler,
    FullSampler,
    RandomSampler,
    RecentSampler,
    RelevanceSampler,
    Sampler,
    make_sampler,
)
from personalens.selection.clustering import (
    DEFAULT_THRESHOLDS,
    LINKAGES,
    THRESHOLD_RULES,
    Clustering,
    auto_n_clusters,
    cluster_behaviours,
)
from personalens.selection.in_cluster import DIVERSITY_VARIANTS, select_in_cluster, selection_weights
from personalens.selection.sampler import ALGORITHM_VERSION, PersonaXSelector, Selection

__all__ = [
    "ALGORITHM_VERSION",
    "BOUNDARY_ALPHA",
    "CENTROID_ALPHA",
    "DEFAULT_THRESHOLDS",
    "DIVERSITY_VARIANTS",
    "LEFTOVER_POLICIES",
    "LINKAGES",
    "SAMPLERS",
    "THRESHOLD_RULES",
    "BoundarySampler",
    "CentroidSampler",
    "Clustering",
    "FullSampler",
    "PersonaXSelector",
    "RandomSampler",
    "RecentSampler",
    "RelevanceSampler",
    "Sampler",
    "Selection",
    "allocate_budget",
    "auto_n_clusters",
    "budget_from_ratio",
    "cluster_behaviours",
    "make_sampler",
    "select_in_cluster",
    "selection_weights",
]
