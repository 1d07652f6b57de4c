"""The verified update gate (beyond DeePer, which uses rewards only to train): at inference, score M candidate
refinements on the windows available at that moment — the previous and the current one, never the future — and
commit the best only if it lowers their combined error; otherwise keep the old persona and say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from personalens.refinement.rewards import WindowErrors


@dataclass(frozen=True, slots=True)
class GateDecision:
    """``chosen`` indexes the committed candidate (``None`` when the old persona is kept)."""

    committed: bool
    chosen: int | None
    reason: str
    old_error: float
    candidate_errors: tuple[float, ...]

    @property
    def best_error(self) -> float | None:
        return min(self.candidate_errors) if self.candidate_errors else None

    def to_dict(self) -> dict[str, object]:
        return {
            "committed": self.committed,
            "chosen": self.chosen,
            "reason": self.reason,
            "old_error": self.old_error,
            "candidate_errors": list(self.candidate_errors),
        }


def verify_update(old: WindowErrors, candidates: Sequence[WindowErrors], *, min_gain: float = 0.0) -> GateDecision:
    """Pick the candidate with the lowest previous + current error; commit it only if that is lower than the old
    persona's by more than ``min_gain`` (ties keep the old persona: an update must earn its place). Future errors,
    even when present, are ignored here — they are for evaluation only."""
    if min_gain < 0:
        raise ValueError("min_gain must be >= 0")
    old_error = old.known(include_future=False)
    errors = tuple(c.known(include_future=False) for c in candidates)
    if not errors:
        return GateDecision(False, None, "no candidate refinement to verify", old_error, errors)
    best = min(range(len(errors)), key=lambda i: (errors[i], i))
    gain = old_error - errors[best]
    if gain > min_gain:
        reason = f"candidate {best} lowers previous+current MAE from {old_error:.3f} to {errors[best]:.3f}"
        return GateDecision(True, best, reason, old_error, errors)
    reason = (
        f"kept the old persona: the best of {len(errors)} candidates has previous+current MAE {errors[best]:.3f}, "
        f"old {old_error:.3f} (needed a gain above {min_gain:g})"
    )
    return GateDecision(False, None, reason, old_error, errors)


__all__ = ["GateDecision", "verify_update"]
