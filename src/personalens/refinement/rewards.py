"""DeePer's rewards for one persona update S_{t-1} → S_t (paper §3.3), as MAE reductions on three windows.

With ε_{w|S} the mean absolute error of the ratings predicted with persona S on window w:

* r_prev = ε_{t-1|S_{t-1}} − ε_{t-1|S_t}   (Previous Preservation: the update keeps what was right)
* r_curr = ε_{t|S_{t-1}}   − ε_{t|S_t}     (Current Reflection: the update fixes what the new window exposed)
* r_fut  = ε_{t+1|S_{t-1}} − ε_{t+1|S_t}   (Future Advancement: the update predicts the next window better)

A positive reward means the new persona predicts that window better. The total is a weighted sum; the paper's
balanced setting weights the three equally, and §5.1 compares a future-only and a decayed setting (0.25, 0.5, 1)
that favours recent goals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

RewardSetting = Literal["balanced", "future", "decayed"]

#: weights (previous, current, future) of each named setting
REWARD_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "balanced": (1.0, 1.0, 1.0),
    "future": (0.0, 0.0, 1.0),
    "decayed": (0.25, 0.5, 1.0),
}


@dataclass(frozen=True, slots=True)
class WindowErrors:
    """MAE of one persona on the previous, current and future windows (``None``: window not available or not
    scored, e.g. the future at inference time)."""

    previous: float | None
    current: float | None
    future: float | None = None

    def __post_init__(self) -> None:
        for name in ("previous", "current", "future"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} error must be a finite non-negative number, not {value!r}")

    def known(self, *, include_future: bool) -> float:
        """The sum of the errors on the windows given (the future only when asked): what the verified gate compares."""
        parts = [self.previous, self.current] + ([self.future] if include_future else [])
        present = [p for p in parts if p is not None]
        if not present:
            raise ValueError("no window error to compare")
        return float(sum(present))


@dataclass(frozen=True, slots=True)
class Rewards:
    previous: float | None
    current: float | None
    future: float | None

    def total(self, setting: RewardSetting | tuple[float, float, float] = "balanced") -> float:
        """Σ w_i · r_i over the rewards that exist (a missing window contributes nothing)."""
        if isinstance(setting, str):
            if setting not in REWARD_WEIGHTS:
                raise ValueError(f"unknown reward setting {setting!r}; choose from {sorted(REWARD_WEIGHTS)}")
            weights = REWARD_WEIGHTS[setting]
        else:
            weights = setting
        values = (self.previous, self.current, self.future)
        return float(sum(w * v for w, v in zip(weights, values, strict=True) if v is not None))

    def to_dict(self) -> dict[str, float | None]:
        return {
            "r_prev": self.previous,
            "r_curr": self.current,
            "r_fut": self.future,
            "r_total": self.total("balanced"),
            "r_future_only": self.total("future"),
            "r_decayed": self.total("decayed"),
        }


def _reduction(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return before - after


def rewards(before: WindowErrors, after: WindowErrors) -> Rewards:
    """The rewards of an update whose old persona has errors ``before`` and new persona ``after``."""
    return Rewards(
        _reduction(before.previous, after.previous),
        _reduction(before.current, after.current),
        _reduction(before.future, after.future),
    )


def mean_absolute_error(predicted: list[float] | tuple[float, ...], actual: list[float] | tuple[float, ...]) -> float:
    """ε = (1/N) Σ |ô_j − o_j| over one window."""
    if len(predicted) != len(actual) or not predicted:
        raise ValueError(f"need as many predictions as ratings (got {len(predicted)} and {len(actual)})")
    return float(sum(abs(float(p) - float(a)) for p, a in zip(predicted, actual, strict=True)) / len(actual))


__all__ = ["REWARD_WEIGHTS", "RewardSetting", "Rewards", "WindowErrors", "mean_absolute_error", "rewards"]
