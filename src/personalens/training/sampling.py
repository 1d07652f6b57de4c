"""Self-sampling: M candidate refinements per context, each scored with DeePer's rewards.

A candidate is the model's answer to the context's refine prompt, sampled with temperature, top-p and a repetition
penalty (DeePer: 1.0, 0.4, 1.1, M = 15). Its rewards are the MAE reductions on the previous, current and future
windows against the old persona (:mod:`personalens.refinement.rewards`). The future window is part of the reward
here on purpose — this is training data, the reward is the teacher — and is never shown to the model.

At a low top-p a sharp model often writes the same answer twice. Two equal candidates cost two generations and
can never form a pair, so a candidate whose text (up to whitespace) repeats an earlier one of its context is drawn
again, up to ``redraw_duplicates`` times, from sample slots after the first M (so the first M draws stay the cached
ones); a duplicate still left after that is kept and counted. DeePer keeps duplicates; ``redraw_duplicates = 0`` does
the same.

Results go to ``samples.jsonl``, one line per context as soon as all its candidates are scored, so a killed run
resumes at the next context (and the LLM response cache makes a half-finished context's finished samples free).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from personalens._files import read_jsonl_rows
from personalens.errors import PersonaLensError
from personalens.llm.base import Usage
from personalens.refinement.loop import Predictor
from personalens.refinement.rewards import Rewards, WindowErrors, mean_absolute_error, rewards
from personalens.refinement.strategies import PersonaWriter
from personalens.training.contexts import RefineContext

SAMPLES_FILE = "samples.jsonl"
SAMPLE_SLOTS = 1000  # sample slots per seed: seed s draws slots s*1000+1, s*1000+2, ...
# Settings added after runs were sampled, with the value those runs used (a stamp without them is not a change).
LEGACY_SETTINGS: dict[str, Any] = {"redraw_duplicates": 0, "revised_only": False, "drop_naming": False}


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """How candidates are drawn. ``seed`` offsets every sample's seed (and response-cache slot), so a second
    sampling pass with another seed draws fresh candidates instead of reading the first pass's from the cache."""

    candidates: int = 15
    temperature: float = 1.0
    top_p: float = 0.4
    repetition_penalty: float = 1.1
    min_words: int = 200
    max_words: int = 320
    seed: int = 0
    redraw_duplicates: int = 2  # extra draws allowed per candidate that repeats an earlier one of its context
    # keep only the profile under an answer's "revised profile" heading (PersonaWriter's revised_only)
    revised_only: bool = True
    # drop an answer's sentences that name an item the prompt showed (PersonaWriter's drop_naming)
    drop_naming: bool = True

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1")
        if not isinstance(self.revised_only, bool) or not isinstance(self.drop_naming, bool):
            raise ValueError("revised_only and drop_naming must be true or false")
        if self.redraw_duplicates < 0:
            raise ValueError("redraw_duplicates must be >= 0")
        if self.candidates * (1 + self.redraw_duplicates) >= SAMPLE_SLOTS:
            raise ValueError(
                f"candidates x (1 + redraw_duplicates) must stay under {SAMPLE_SLOTS} (the sample slots of one seed)"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0")


@dataclass(slots=True)
class Candidate:
    text: str
    errors: WindowErrors  # the candidate's MAE on previous, current, future
    rewards: Rewards
    short: bool = False
    leaked: tuple[str, ...] = ()

    def reward(self, setting: str = "balanced") -> float:
        return self.rewards.total(setting)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "errors": {"previous": self.errors.previous, "current": self.errors.current, "future": self.errors.future},
            "rewards": self.rewards.to_dict(),
            "short": self.short,
            "leaked": list(self.leaked),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        e, r = data["errors"], data["rewards"]
        return cls(
            data["text"],
            WindowErrors(e["previous"], e["current"], e["future"]),
            Rewards(r["r_prev"], r["r_curr"], r["r_fut"]),
            bool(data.get("short", False)),
            tuple(data.get("leaked", ())),
        )


@dataclass(slots=True)
class SampledContext:
    context_id: str
    candidates: list[Candidate]
    usage: Usage = field(default_factory=Usage)
    redrawn: int = 0  # extra draws made because a candidate repeated an earlier one
    duplicates: int = 0  # candidates kept although they repeat an earlier one (redraws used up)


def score_candidate(text: str, context: RefineContext, predictor: Predictor) -> tuple[WindowErrors, Usage]:
    usage = Usage()
    maes = []
    for window in context.windows():
        values, used = predictor.predict(text, window, domain=context.domain, scale=context.scale)
        usage = usage + used
        maes.append(mean_absolute_error(values, [x.rating for x in window]))
    return WindowErrors(maes[0], maes[1], maes[2]), usage


def sample_context(
    context: RefineContext, writer: PersonaWriter, predictor: Predictor, config: SamplingConfig
) -> SampledContext:
    """Draw ``config.candidates`` refinements of ``context`` and score each one."""
    out = SampledContext(context.context_id, [])
    messages = context.messages(min_words=config.min_words, max_words=config.max_words)
    seen: set[str] = set()
    spare = config.candidates  # the last slot used by a redraw
    for i in range(config.candidates):
        slot = i + 1
        for attempt in range(config.redraw_duplicates + 1):
            if attempt:
                spare += 1
                slot = spare
                out.redrawn += 1
            written = writer.write(
                messages,
                context.current,
                temperature=config.temperature,
                top_p=config.top_p,
                repetition_penalty=config.repetition_penalty,
                sample=config.seed * SAMPLE_SLOTS + slot,
            )
            out.usage = out.usage + written.usage
            key = " ".join(written.text.split())
            if key not in seen:
                break
        else:
            out.duplicates += 1
        seen.add(key)
        errors, usage = score_candidate(written.text, context, predictor)
        out.usage = out.usage + usage
        reward = rewards(context.errors, errors)
        out.candidates.append(Candidate(written.text, errors, reward, written.short, written.leaked))
    return out


@dataclass(slots=True)
class SamplingRun:
    sampled: list[SampledContext]
    written: int = 0
    reused: int = 0
    redrawn: int = 0
    duplicates: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0


def read_samples(out_dir: str | Path) -> dict[str, list[Candidate]]:
    return {s.context_id: s.candidates for s in _read_sampled(out_dir)}


def _read_sampled(out_dir: str | Path) -> list[SampledContext]:
    rows, _ = read_jsonl_rows(Path(out_dir) / SAMPLES_FILE)
    return [
        SampledContext(
            r["context_id"],
            [Candidate.from_json(c) for c in r["candidates"]],
            redrawn=int(r.get("redrawn", 0)),
            duplicates=int(r.get("duplicates", 0)),
        )
        for r in rows
    ]


def run_sampling(
    contexts: Sequence[RefineContext],
    out_dir: str | Path,
    *,
    writer_for: Callable[[RefineContext], PersonaWriter],
    predictor: Predictor,
    config: SamplingConfig,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> SamplingRun:
    """Sample every context not yet in ``out_dir/samples.jsonl``. ``samples.json`` next to it records the config;
    resuming with a different config is refused (the file would mix two sampling distributions)."""
    emit = on_event or (lambda kind, payload: None)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "samples.json"
    if stamp.exists():
        previous = {**LEGACY_SETTINGS, **json.loads(stamp.read_text())}
        if previous != asdict(config):
            raise PersonaLensError(
                f"{out / SAMPLES_FILE} was sampled with {previous}; not resuming it with {asdict(config)} "
                "(use another output directory)"
            )
    else:
        stamp.write_text(json.dumps(asdict(config), indent=2))
    done = {s.context_id: s for s in _read_sampled(out)}
    run = SamplingRun([])
    with (out / SAMPLES_FILE).open("a", encoding="utf-8") as sink:
        for context in contexts:
            if context.context_id in done:
                run.sampled.append(done[context.context_id])
                run.reused += 1
                run.redrawn += done[context.context_id].redrawn
                run.duplicates += done[context.context_id].duplicates
                emit("context", {"context": context.context_id, "reused": True})
                continue
            try:
                sampled = sample_context(context, writer_for(context), predictor, config)
            except PersonaLensError as exc:
                run.failures[context.context_id] = str(exc)
                emit("failed", {"context": context.context_id, "error": str(exc)})
                continue
            row = {
                "context_id": context.context_id,
                "candidates": [c.to_json() for c in sampled.candidates],
                "usage": sampled.usage.to_dict(),
                "redrawn": sampled.redrawn,
                "duplicates": sampled.duplicates,
            }
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            run.sampled.append(sampled)
            run.written += 1
            run.redrawn += sampled.redrawn
            run.duplicates += sampled.duplicates
            run.usage = run.usage + sampled.usage
            emit("context", {"context": context.context_id, "reused": False})
    run.seconds = time.perf_counter() - started
    return run


__all__ = [
    "LEGACY_SETTINGS",
    "SAMPLES_FILE",
    "SAMPLE_SLOTS",
    "Candidate",
    "SampledContext",
    "SamplingConfig",
    "SamplingRun",
    "read_samples",
    "run_sampling",
    "sample_context",
    "score_candidate",
]
