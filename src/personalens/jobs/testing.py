"""Deterministic backends for tests of distributed jobs, picklable so Ray workers can rebuild them.

:class:`DeterministicBackends` gives a :class:`~personalens.llm.testing.ScriptedChatModel` whose answers depend only
on the request (so any worker, in any order, answers the same request the same way), the hashed bag-of-words
embedder, and a SQLite store. ``inflight`` names a file in which every process records how many calls are in flight
at once (:class:`InFlightRecorder`); ``delay`` makes each call last that long (so calls overlap).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from personalens.embed.base import Embedder
from personalens.embed.testing import HashEmbedder
from personalens.llm.base import ChatModel, ChatRequest, ChatResult
from personalens.llm.testing import ScriptedChatModel
from personalens.llm.usage import UsageMeter
from personalens.store import PersonaStore, PersonaStoreProtocol

if TYPE_CHECKING:
    from personalens.jobs.executors import LLMLimiter


class InFlightRecorder:
    """Counts calls in flight across threads and processes in a small file (``current peak total``), under an
    exclusive ``flock``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def _update(self, delta: int) -> None:
        with open(self.path, "a+", encoding="ascii") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            fields = f.read().split()
            current, peak, total = (int(x) for x in fields) if len(fields) == 3 else (0, 0, 0)
            current += delta
            peak = max(peak, current)
            total += int(delta > 0)
            f.seek(0)
            f.truncate()
            f.write(f"{current} {peak} {total}")
            f.flush()

    def enter(self) -> None:
        self._update(1)

    def exit(self) -> None:
        self._update(-1)

    def read(self) -> tuple[int, int, int]:
        """(in flight now, the most ever in flight at once, calls started)."""
        try:
            with open(self.path, encoding="ascii") as f:
                fields = f.read().split()
        except FileNotFoundError:
            return 0, 0, 0
        return (int(fields[0]), int(fields[1]), int(fields[2])) if len(fields) == 3 else (0, 0, 0)


def persona_answer(request: ChatRequest) -> str:
    """A persona text that depends only on the request: the genres of the listed behaviours plus a digest."""
    prompt = "\n".join(m.content for m in request.messages)
    genres = sorted({line.split("genres:")[1].strip() for line in prompt.splitlines() if "genres:" in line})
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    topic = ", ".join(genres[:3]) or "many"
    return f"Likes {topic} stories with tension and a clear plot; careful viewer {digest}. " * 2


def next_token_distribution(request: ChatRequest) -> dict[str, float]:
    """Rating-digit probabilities that depend only on the request."""
    h = hashlib.sha256(repr(request.canonical()).encode()).digest()
    weights = {str(d): 1.0 + h[d] / 64 for d in range(1, 6)}
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


class _Recording:
    """Wraps a chat model: records in-flight calls and optionally makes each call last ``delay`` seconds."""

    def __init__(self, inner: ChatModel, recorder: InFlightRecorder | None, delay: float) -> None:
        self.inner = inner
        self.recorder = recorder
        self.delay = delay

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def chat(self, request: ChatRequest) -> ChatResult:
        if self.recorder is not None:
            self.recorder.enter()
        try:
            if self.delay:
                time.sleep(self.delay)
            return self.inner.chat(request)
        finally:
            if self.recorder is not None:
                self.recorder.exit()

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True, slots=True)
class DeterministicBackends:
    store: str
    dim: int = 32
    delay: float = 0.0
    inflight: str | None = None
    model_id: str = "scripted-deterministic"

    def chat_model(self, limiter: LLMLimiter | None = None) -> ChatModel:
        model: ChatModel = ScriptedChatModel(
            persona_answer, next_tokens=next_token_distribution, model_id=self.model_id
        )
        recorder = InFlightRecorder(self.inflight) if self.inflight else None
        model = _Recording(model, recorder, self.delay)
        if limiter is not None:
            from personalens.jobs.executors import LimitedChatModel

            model = LimitedChatModel(model, limiter)
        return UsageMeter(model)

    def embedder(self) -> Embedder:
        return HashEmbedder(self.dim)

    def open_store(self) -> PersonaStoreProtocol:
        return PersonaStore(self.store)


__all__ = ["DeterministicBackends", "InFlightRecorder", "next_token_distribution", "persona_answer"]
