"""Training contexts for the refiner: (S_{t-1}, O_t) — a persona and the observation of window t (the ratings it
predicted next to the actual ones) — with the windows that score a refinement of it.

Step 1 contexts are (S0, O1): S0 is written from W0, then predicts W1. Step 2 contexts are (S1, O2), where S1 is what
a trained model (iteration 1) made of the step-1 context. Each context carries the old persona's MAE on the
previous, current and future windows, so a candidate's rewards need only the candidate's own predictions.

Contexts are built once and kept in ``contexts.jsonl`` (one line per context, appended as soon as it is built), so
a killed build resumes where it stopped and the sampling stage reads the exact contexts the pairs will refer to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalens._files import read_jsonl_rows
from personalens.errors import DataError, PersonaLensError
from personalens.llm.base import Message, Usage
from personalens.refinement.loop import Predictor
from personalens.refinement.prompts import RatedItem, refine_persona
from personalens.refinement.rewards import WindowErrors, mean_absolute_error
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows

CONTEXTS_FILE = "contexts.jsonl"


@dataclass(frozen=True, slots=True)
class RefineContext:
    """One refinement to learn: refine ``persona`` given ``current`` (with the persona's predictions); the update is
    then judged on ``previous``, ``current`` and ``future``. ``errors`` are the old persona's MAE on them."""

    context_id: str
    user_id: str
    domain: str
    scale: tuple[float, float, float]
    step: int
    persona: str
    previous: tuple[RatedItem, ...]
    current: tuple[RatedItem, ...]
    future: tuple[RatedItem, ...]
    errors: WindowErrors
    source: str = ""

    def messages(self, *, min_words: int, max_words: int) -> list[Message]:
        """The refine prompt this context asks (the same one inference uses)."""
        return refine_persona(
            self.persona, self.current, domain=self.domain, scale=self.scale, min_words=min_words, max_words=max_words
        )

    def windows(self) -> tuple[tuple[RatedItem, ...], ...]:
        return (self.previous, self.current, self.future)

    def to_json(self) -> dict[str, Any]:
        def items(w: Sequence[RatedItem]) -> list[list[Any]]:
            return [[x.text, x.rating, x.predicted] for x in w]

        return {
            "context_id": self.context_id,
            "user_id": self.user_id,
            "domain": self.domain,
            "scale": list(self.scale),
            "step": self.step,
            "persona": self.persona,
            "previous": items(self.previous),
            "current": items(self.current),
            "future": items(self.future),
            "errors": {"previous": self.errors.previous, "current": self.errors.current, "future": self.errors.future},
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "context") -> RefineContext:
        try:

            def items(key: str) -> tuple[RatedItem, ...]:
                return tuple(RatedItem(str(t), float(r), None if p is None else float(p)) for t, r, p in data[key])

            e = data["errors"]
            low, high, step = (float(v) for v in data["scale"])
            return cls(
                context_id=str(data["context_id"]),
                user_id=str(data["user_id"]),
                domain=str(data["domain"]),
                scale=(low, high, step),
                step=int(data["step"]),
                persona=str(data["persona"]),
                previous=items("previous"),
                current=items("current"),
                future=items("future"),
                errors=WindowErrors(e["previous"], e["current"], e["future"]),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a refinement context ({exc!r})") from None


def context_id(user: UserWindows, step: int) -> str:
    return f"{user.source or 'data'}/{user.user_id}/step{step}"


@dataclass(slots=True)
class ContextBuild:
    contexts: list[RefineContext]
    built: int = 0
    reused: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


def _predicted(
    predictor: Predictor, persona: str, window: Sequence[RatedItem], user: UserWindows
) -> tuple[float, list[float], Usage]:
    values, usage = predictor.predict(persona, window, domain=user.domain, scale=user.scale)
    return mean_absolute_error(values, [x.rating for x in window]), values, usage


def build_context(user: UserWindows, persona: str, step: int, predictor: Predictor) -> tuple[RefineContext, Usage]:
    """The context (S_{step-1} = ``persona``, O_step) for ``user``: predictions on W_{step-1}, W_step, W_{step+1}."""
    if step < 1 or step + 1 >= len(user.windows):
        raise PersonaLensError(
            f"user {user.user_id!r} has {len(user.windows)} windows: "
            f"a step-{step} context needs W{step - 1}..W{step + 1}"
        )
    usage = Usage()
    errors = []
    predicted_current: list[float] = []
    for t in (step - 1, step, step + 1):
        mae, values, used = _predicted(predictor, persona, user.windows[t], user)
        usage = usage + used
        errors.append(mae)
        if t == step:
            predicted_current = values
    current = tuple(RatedItem(x.text, x.rating, p) for x, p in zip(user.windows[step], predicted_current, strict=True))
    context = RefineContext(
        context_id(user, step),
        user.user_id,
        user.domain,
        user.scale,
        step,
        persona,
        tuple(user.windows[step - 1]),
        current,
        tuple(user.windows[step + 1]),
        WindowErrors(errors[0], errors[1], errors[2]),
        user.source,
    )
    return context, usage


def build_contexts(
    users: Sequence[UserWindows],
    out_dir: str | Path,
    *,
    predictor: Predictor,
    writer_for: Callable[[UserWindows], PersonaWriter] | None = None,
    step: int = 1,
    personas: Mapping[str, str] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> ContextBuild:
    """Build (or resume building) the step-``step`` contexts of ``users`` into ``out_dir/contexts.jsonl``.

    Step 1 writes S0 from W0 with ``writer_for(user)``; later steps take the persona to refine from ``personas``
    (user id → S_{step-1}). A user whose context fails is recorded and skipped; the file keeps what was built.
    """
    emit = on_event or (lambda kind, payload: None)
    path = Path(out_dir) / CONTEXTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, _ = read_jsonl_rows(path)
    known = {r["context_id"]: RefineContext.from_json(r, where=f"{path}") for r in rows if "context_id" in r}
    result = ContextBuild([])
    with path.open("a", encoding="utf-8") as sink:
        for user in users:
            cid = context_id(user, step)
            if cid in known:
                result.contexts.append(known[cid])
                result.reused += 1
                emit("context", {"user": user.user_id, "reused": True})
                continue
            try:
                if step == 1:
                    if writer_for is None:
                        raise ValueError("step-1 contexts need writer_for to write S0")
                    written = writer_for(user).initial(user.windows[0])
                    result.usage = result.usage + written.usage
                    persona = written.text
                else:
                    if personas is None or user.user_id not in personas:
                        raise PersonaLensError(f"no S{step - 1} persona given for user {user.user_id!r}")
                    persona = personas[user.user_id]
                context, usage = build_context(user, persona, step, predictor)
            except PersonaLensError as exc:
                result.failures[cid] = str(exc)
                emit("failed", {"user": user.user_id, "error": str(exc)})
                continue
            result.usage = result.usage + usage
            sink.write(json.dumps(context.to_json(), ensure_ascii=False) + "\n")
            sink.flush()
            result.contexts.append(context)
            result.built += 1
            emit("context", {"user": user.user_id, "reused": False})
    return result


def read_contexts(out_dir: str | Path) -> dict[str, RefineContext]:
    path = Path(out_dir) / CONTEXTS_FILE
    rows, _ = read_jsonl_rows(path)
    return {r["context_id"]: RefineContext.from_json(r, where=str(path)) for r in rows}


__all__ = [
    "CONTEXTS_FILE",
    "ContextBuild",
    "RefineContext",
    "build_context",
    "build_contexts",
    "context_id",
    "read_contexts",
]
