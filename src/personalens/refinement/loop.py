"""The dynamic persona loop: initialise from W0, then per round predict the new window with the current persona,
observe the ratings, update with a strategy (optionally verified), and record errors and rewards.

Errors are MAE on a window's ratings predicted with a persona; they are memoised per (persona text, window), so the
prediction made to drive Refine is reused for the rewards and nothing is predicted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from personalens.data.records import Item
from personalens.llm.base import ChatModel, Usage
from personalens.prediction import predict_ratings
from personalens.refinement.prompts import REFINEMENT_PROMPTS_VERSION, RatedItem
from personalens.refinement.rewards import Rewards, WindowErrors, mean_absolute_error, rewards
from personalens.refinement.strategies import STRATEGIES, UPDATES_OLD_PERSONA, PersonaWriter, Strategy
from personalens.refinement.verify import GateDecision, verify_update
from personalens.refinement.windows import UserWindows


class Predictor(Protocol):
    def config(self) -> dict[str, Any]: ...

    def predict(
        self, persona: str, items: Sequence[RatedItem], *, domain: str, scale: tuple[float, float, float]
    ) -> tuple[list[float], Usage]: ...


class ProbabilityPredictor:
    """Expected rating from the probabilities of the scale's values (the embedded model's strength)."""

    def __init__(self, model: ChatModel) -> None:
        self.model = model

    def config(self) -> dict[str, Any]:
        return {"predictor": "probability", "model": self.model.model_id}

    def predict(
        self, persona: str, items: Sequence[RatedItem], *, domain: str, scale: tuple[float, float, float]
    ) -> tuple[list[float], Usage]:
        shown = [Item(x.text, x.text) for x in items]
        predictions, usage = predict_ratings(self.model, persona, shown, scale=scale, domain=domain, item_fields=())
        return [p.expected for p in predictions], usage


class StructuredPredictor:
    """All ratings of a window in one JSON answer (for remote models without token probabilities): the schema fixes
    the number of ratings and the scale's bounds; answers off the scale's grid are rounded to it. Bad answers are
    re-asked within :func:`~personalens.llm.structured.generate_json`'s bound, then raise ``LLMOutputError``."""

    def __init__(self, model: ChatModel, *, max_attempts: int = 3) -> None:
        self.model = model
        self.max_attempts = max_attempts

    def config(self) -> dict[str, Any]:
        return {"predictor": "structured", "model": self.model.model_id}

    def predict(
        self, persona: str, items: Sequence[RatedItem], *, domain: str, scale: tuple[float, float, float]
    ) -> tuple[list[float], Usage]:
        from personalens.llm.structured import generate_json

        low, high, step = scale
        schema = {
            "type": "object",
            "properties": {
                "ratings": {
                    "type": "array",
                    "items": {"type": "number", "minimum": low, "maximum": high},
                    "minItems": len(items),
                    "maxItems": len(items),
                }
            },
            "required": ["ratings"],
        }
        listing = "\n".join(f"{i + 1}. {x.text}" for i, x in enumerate(items))
        prompt = (
            f"Profile of a person's taste in {domain}:\n{persona.strip()}\n\n"
            f"Predict how this person would rate each of these {domain} on a scale from {low:g} to {high:g}"
            f"{'' if float(step).is_integer() else f' in steps of {step:g}'}:\n{listing}\n\n"
            f'Answer in JSON as {{"ratings": [...]}} with {len(items)} numbers in the order listed.'
        )
        answer = generate_json(
            self.model, prompt, schema, max_attempts=self.max_attempts, max_tokens=16 + 8 * len(items)
        )
        values = [min(high, max(low, low + round((float(v) - low) / step) * step)) for v in answer.value["ratings"]]
        return values, answer.usage


NO_UPDATE = "no-update"  # the label of RefineConfig(frozen=True): S0 kept for every round


@dataclass(frozen=True, slots=True)
class RefineConfig:
    """``verified``: sample ``candidates`` updates (the first greedy, the rest at ``temperature``) and commit the
    best only if it lowers previous + current MAE (see :mod:`personalens.refinement.verify`).

    ``frozen``: the control, labelled ``no-update``: S0 is written and kept for every round, never updated, so each
    round scores it on the round's windows. Against it, an update's future-window MAE says what updating bought,
    apart from how hard the later windows are."""

    strategy: Strategy = "refine"
    verified: bool = False
    candidates: int = 4
    temperature: float = 0.8
    min_gain: float = 0.0
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1")
        if self.frozen and self.verified:
            raise ValueError("a frozen persona is never updated, so it cannot be verified")

    @property
    def label(self) -> str:
        if self.frozen:
            return NO_UPDATE
        return f"verified-{self.strategy}" if self.verified else self.strategy


def _errors_dict(e: WindowErrors) -> dict[str, float | None]:
    return {"previous": e.previous, "current": e.current, "future": e.future}


@dataclass(slots=True)
class RoundRecord:
    round: int
    strategy: str
    committed: bool
    before: WindowErrors
    after: WindowErrors
    rewards: Rewards
    persona: str
    gate: GateDecision | None = None
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    flags: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "strategy": self.strategy,
            "committed": self.committed,
            "mae_before": _errors_dict(self.before),
            "mae_after": _errors_dict(self.after),
            "rewards": self.rewards.to_dict(),
            "gate": self.gate.to_dict() if self.gate else None,
            "persona_words": len(self.persona.split()),
            "persona": self.persona,
            "usage": self.usage.to_dict(),
            "seconds": round(self.seconds, 3),
            "flags": self.flags,
        }


@dataclass(slots=True)
class UserTrace:
    user_id: str
    initial: str
    initial_error: float  # MAE of the starting persona on W_start (S0 on W1), the baseline rounds compare with
    rounds: list[RoundRecord]
    usage: Usage


class DynamicRefiner:
    """Runs the loop for one user at a time. ``on_round(user_id, record)`` reports progress."""

    def __init__(
        self,
        writer: PersonaWriter,
        predictor: Predictor,
        config: RefineConfig | None = None,
        *,
        on_round: Callable[[str, RoundRecord], None] | None = None,
    ) -> None:
        self.writer = writer
        self.predictor = predictor
        self.config = config or RefineConfig()
        self.on_round = on_round or (lambda user, record: None)
        self._errors: dict[tuple[str, tuple[RatedItem, ...]], tuple[float, list[float]]] = {}
        self._usage = Usage()

    def describe(self) -> dict[str, Any]:
        if self.config.frozen:  # only S0's writer and the predictor shape this row
            return {
                "frozen": True,
                "writer": self._writer_config(),
                "predictor": self.predictor.config(),
                "prompts_version": REFINEMENT_PROMPTS_VERSION,
            }
        return {
            "strategy": self.config.strategy,
            "verified": self.config.verified,
            "candidates": self.config.candidates if self.config.verified else 1,
            "temperature": self.config.temperature if self.config.verified else 0.0,
            "min_gain": self.config.min_gain,
            "writer": self._writer_config(),
            "predictor": self.predictor.config(),
            "prompts_version": REFINEMENT_PROMPTS_VERSION,
        }

    def _writer_config(self) -> dict[str, Any]:
        """The writer settings that can change this strategy's personas: a regeneration never sees the old persona,
        so the copy re-ask cannot fire and its settings are left out (rows written before it existed stay valid)."""
        config: dict[str, Any] = {
            "model": self.writer.model.model_id,
            "min_words": self.writer.min_words,
            "short_answers": self.writer.short_answers,
            "extend": self.writer.extend_config(),
        }
        if self.writer.repetition_penalty is not None:
            config["repetition_penalty"] = self.writer.repetition_penalty
        if self.writer.revised_only:
            config["revised_only"] = True
        if self.writer.drop_naming:
            config["drop_naming"] = True
        if self.config.strategy in UPDATES_OLD_PERSONA and self.writer.reask_unchanged and not self.config.frozen:
            config["reask_sampling"] = self.writer.config()["reask_sampling"]
        return config

    def _scored(self, persona: str, window: tuple[RatedItem, ...], user: UserWindows) -> tuple[float, list[float]]:
        key = (persona, window)
        if key not in self._errors:
            predicted, usage = self.predictor.predict(persona, window, domain=user.domain, scale=user.scale)
            self._usage = self._usage + usage
            self._errors[key] = (mean_absolute_error(predicted, [x.rating for x in window]), predicted)
        return self._errors[key]

    def _errors_of(self, persona: str, user: UserWindows, t: int, *, future: bool) -> WindowErrors:
        w = user.round(t)
        fut = self._scored(persona, w.future, user)[0] if future and w.future is not None else None
        return WindowErrors(self._scored(persona, w.previous, user)[0], self._scored(persona, w.current, user)[0], fut)

    def run(
        self, user: UserWindows, *, rounds: int | None = None, initial: str | None = None, start: int = 1
    ) -> UserTrace:
        """Initialise (or start from ``initial``) and run update rounds ``start``..``rounds`` (default: every round
        with a future window). The future window is only ever used to score, never shown to the writer or the gate.
        ``start`` > 1 resumes a user whose earlier rounds are done: ``initial`` is then the persona they produced,
        and :attr:`UserTrace.initial_error` is its MAE on W_start."""
        self._errors.clear()
        self._usage = Usage()
        n = user.n_rounds if rounds is None else rounds
        if not 1 <= n <= len(user.windows) - 1:
            last = len(user.windows) - 1
            raise ValueError(f"user {user.user_id!r} has {len(user.windows)} windows: rounds must be 1..{last}")
        if not 1 <= start <= n:
            raise ValueError(f"start round {start} out of range 1..{n}")
        if start > 1 and initial is None:
            raise ValueError("resuming at a later round needs the persona the earlier rounds produced (initial=)")
        if initial is None:
            written = self.writer.initial(user.windows[0])
            self._usage = self._usage + written.usage
            persona = written.text
        else:
            persona = initial
        s0 = persona
        records = []
        for t in range(start, n + 1):
            started = time.perf_counter()
            usage_before = self._usage
            w = user.round(t)
            _, predicted = self._scored(persona, w.current, user)
            current = tuple(RatedItem(x.text, x.rating, p) for x, p in zip(w.current, predicted, strict=True))
            seen = [*user.up_to(t - 1), current]
            before = self._errors_of(persona, user, t, future=True)
            gate = None
            flags: dict[str, Any] = {}
            if self.config.frozen:
                new, committed = persona, False
            elif not self.config.verified:
                update = self.writer.update(self.config.strategy, persona, seen)
                self._usage = self._usage + update.usage
                new, committed = update.text, True
                flags = {
                    "short": update.short,
                    "leaked": list(update.leaked),
                    "attempts": update.attempts,
                    "unchanged": update.unchanged,
                    "repetitive_extensions": update.repetitive_extensions,
                    "cut_to_revision": update.cut_to_revision,
                    "dropped_sentences": update.dropped_sentences,
                }
            else:
                candidates = []
                for i in range(self.config.candidates):
                    temperature = 0.0 if i == 0 else self.config.temperature
                    update = self.writer.update(self.config.strategy, persona, seen, temperature=temperature, sample=i)
                    self._usage = self._usage + update.usage
                    candidates.append(update.text)
                scored = [self._errors_of(c, user, t, future=False) for c in candidates]
                known = WindowErrors(before.previous, before.current)
                gate = verify_update(known, scored, min_gain=self.config.min_gain)
                committed = gate.committed
                new = candidates[gate.chosen] if gate.chosen is not None else persona
            after = self._errors_of(new, user, t, future=True)
            record = RoundRecord(
                t,
                self.config.label,
                committed,
                before,
                after,
                rewards(before, after),
                new,
                gate,
                self._usage - usage_before,
                time.perf_counter() - started,
                flags,
            )
            records.append(record)
            self.on_round(user.user_id, record)
            persona = new
        baseline = self._scored(s0, user.windows[start], user)[0]
        return UserTrace(user.user_id, s0, baseline, records, self._usage)


HISTORY_MEAN = "history-mean"


def history_mean_trace(user: UserWindows, *, rounds: int | None = None) -> UserTrace:
    """The reference without any model, in the loop's own terms: the "persona" after round t is the mean of every
    rating in W0..Wt, predicted for each item of a window. Its errors and rewards are computed exactly as a
    strategy's are (S0 = the mean of W0 scored on W1, S_t on W_{t-1}, W_t, W_{t+1}), so it can stand in every
    table; the "persona" text is empty (no words, no LLM call). A persona that cannot beat this has not learned
    more than the user's usual rating."""
    n = user.n_rounds if rounds is None else rounds
    if not 1 <= n <= len(user.windows) - 1:
        raise ValueError(
            f"user {user.user_id!r} has {len(user.windows)} windows: rounds must be 1..{len(user.windows) - 1}"
        )

    def mean_upto(t: int) -> float:
        ratings = [x.rating for window in user.up_to(t) for x in window]
        return sum(ratings) / len(ratings)

    def mae(value: float, window: Sequence[RatedItem] | None) -> float | None:
        if window is None:
            return None
        return mean_absolute_error([value] * len(window), [x.rating for x in window])

    def errors(value: float, t: int) -> WindowErrors:
        w = user.round(t)
        return WindowErrors(mae(value, w.previous), mae(value, w.current), mae(value, w.future))

    records = []
    for t in range(1, n + 1):
        before, after = errors(mean_upto(t - 1), t), errors(mean_upto(t), t)
        records.append(RoundRecord(t, HISTORY_MEAN, True, before, after, rewards(before, after), ""))
    initial_error = mae(mean_upto(0), user.windows[1])
    assert initial_error is not None
    return UserTrace(user.user_id, "", initial_error, records, Usage())


__all__ = [
    "HISTORY_MEAN",
    "NO_UPDATE",
    "DynamicRefiner",
    "Predictor",
    "ProbabilityPredictor",
    "RefineConfig",
    "RoundRecord",
    "StructuredPredictor",
    "UserTrace",
    "history_mean_trace",
]
