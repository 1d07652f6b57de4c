"""DeePer-style dynamic persona refinement (paper: ../shared/papers/deeper.md).

* :mod:`.windows` — a user's behaviour as rated windows W0, W1, …; what each round may see.
* :mod:`.prompts` / :mod:`.strategies` — initialise, Refine, SlideRegen, FullRegen, IncUpdate, HierMerge.
* :mod:`.rewards` — r_prev, r_curr, r_fut as MAE reductions; balanced, future-only and decayed totals.
* :mod:`.verify` — the verified update gate (previous + current windows only).
* :mod:`.loop` — :class:`DynamicRefiner`, predictors (probability scoring, structured JSON).
"""

from personalens.refinement.loop import (
    DynamicRefiner,
    ProbabilityPredictor,
    RefineConfig,
    RoundRecord,
    StructuredPredictor,
    UserTrace,
)
from personalens.refinement.prompts import REFINEMENT_PROMPTS_VERSION, RatedItem
from personalens.refinement.rewards import (
    REWARD_WEIGHTS,
    Rewards,
    WindowErrors,
    mean_absolute_error,
    rewards,
)
from personalens.refinement.strategies import STRATEGIES, PersonaWriter, WrittenPersona
from personalens.refinement.verify import GateDecision, verify_update
from personalens.refinement.windows import RoundWindows, UserWindows, windows_from_deeper, windows_from_history

__all__ = [
    "REFINEMENT_PROMPTS_VERSION",
    "REWARD_WEIGHTS",
    "STRATEGIES",
    "DynamicRefiner",
    "GateDecision",
    "PersonaWriter",
    "ProbabilityPredictor",
    "RatedItem",
    "RefineConfig",
    "Rewards",
    "RoundRecord",
    "RoundWindows",
    "StructuredPredictor",
    "UserTrace",
    "UserWindows",
    "WindowErrors",
    "WrittenPersona",
    "mean_absolute_error",
    "rewards",
    "verify_update",
    "windows_from_deeper",
    "windows_from_history",
]
