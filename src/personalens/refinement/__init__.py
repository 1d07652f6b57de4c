"""DeePer-style dynamic persona refinement: rewards for an update, the verified update gate, window bookkeeping."""

from personalens.refinement.rewards import (
    REWARD_WEIGHTS,
    Rewards,
    WindowErrors,
    mean_absolute_error,
    rewards,
)
from personalens.refinement.verify import GateDecision, verify_update

__all__ = [
    "REWARD_WEIGHTS",
    "GateDecision",
    "Rewards",
    "WindowErrors",
    "mean_absolute_error",
    "rewards",
    "verify_update",
]
