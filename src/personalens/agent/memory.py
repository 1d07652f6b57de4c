"""Personal memory. *Episodic*: the user's past interactions (query, true response, time, session) with embeddings,
kept in the persona store and searched by similarity (PersonaAgent Eq. 1–2). *Semantic*: a profile summarised from
the episodic memory (Eq. 3, PAG-style), the seed of the persona.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel, ChatRequest, Usage, system, user
from personalens.store.base import PersonaStoreProtocol
from personalens.store.models import MemoryRecord


def memory_text(record: MemoryRecord) -> str:
    """What is embedded for a memory event: the query and the user's response, as ``f_enc(D_i)`` sees it."""
    return f"{record.query}\nResponse: {record.response}"


@dataclass(frozen=True, slots=True)
class MemoryHit:
    record: MemoryRecord
    score: float

    @property
    def date(self) -> str:
        ts = self.record.timestamp
        return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


class EpisodicMemory:
    """One user's episodic memory on top of a persona store.

    :meth:`add` embeds and stores records (idempotent by ``memory_id``); :meth:`search` returns the top-K records by
    cosine similarity between the query's embedding and each record's. Records embedded by another model are
    re-embedded in memory for the search (the stored vectors are left alone). The loaded matrix is cached and
    reloaded when the store's count changes.
    """

    def __init__(self, store: PersonaStoreProtocol, embedder: Embedder, user_id: str) -> None:
        self.store = store
        self.embedder = embedder
        self.user_id = user_id
        self._records: list[MemoryRecord] = []
        self._matrix: np.ndarray | None = None
        self._loaded_count = -1
        self._lock = threading.Lock()

    def add(self, records: Iterable[MemoryRecord]) -> int:
        """Embed (when not embedded by this embedder) and store; returns how many were new."""
        records = list(records)
        todo = [i for i, r in enumerate(records) if r.embedding is None or r.embedder_id != self.embedder.model_id]
        if todo:
            vectors = self.embedder.embed([memory_text(records[i]) for i in todo])
            for i, vec in zip(todo, vectors, strict=True):
                records[i] = replace(
                    records[i], embedding=np.asarray(vec, dtype=np.float32), embedder_id=self.embedder.model_id
                )
        added = self.store.add_memories(self.user_id, records)
        with self._lock:
            self._loaded_count = -1
        return added

    def all(self) -> list[MemoryRecord]:
        return self.store.memories(self.user_id)

    def __len__(self) -> int:
        return self.store.count_memories(self.user_id)

    def _load(self) -> tuple[list[MemoryRecord], np.ndarray | None]:
        count = self.store.count_memories(self.user_id)
        with self._lock:
            if count == self._loaded_count:
                return self._records, self._matrix
        records = self.store.memories(self.user_id)
        if not records:
            matrix = None
        else:
            stale = [i for i, r in enumerate(records) if r.embedding is None or r.embedder_id != self.embedder.model_id]
            vectors: list[np.ndarray] = [
                np.asarray(r.embedding, dtype=np.float32) if r.embedding is not None else np.zeros(0, np.float32)
                for r in records
            ]
            if stale:
                fresh = self.embedder.embed([memory_text(records[i]) for i in stale])
                for i, vec in zip(stale, fresh, strict=True):
                    vectors[i] = np.asarray(vec, dtype=np.float32)
            matrix = np.stack(vectors).astype(np.float32)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        with self._lock:
            self._records, self._matrix, self._loaded_count = records, matrix, len(records)
        return records, matrix

    def search(
        self,
        query: str,
        *,
        k: int = 4,
        before: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[MemoryHit]:
        """The top-``k`` memories most similar to ``query`` among those strictly before ``before`` (records without
        a time are visible only when ``before`` is None) and not in ``exclude``; best first, ties by recency."""
        if k < 1:
            return []
        records, matrix = self._load()
        if matrix is None:
            return []
        excluded = set(exclude)
        mask = np.array(
            [
                r.memory_id not in excluded and (before is None or (r.timestamp is not None and r.timestamp < before))
                for r in records
            ],
            dtype=bool,
        )
        if not mask.any():
            return []
        q = np.asarray(self.embedder.embed([query])[0], dtype=np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = matrix @ q
        order = sorted(np.flatnonzero(mask), key=lambda i: (-float(scores[i]), -i))
        return [MemoryHit(records[i], float(scores[i])) for i in order[:k]]

    def latest(self, n: int, *, before: float | None = None) -> list[MemoryRecord]:
        """The ``n`` most recent memories (oldest first), strictly before ``before`` when given."""
        if n < 1:
            return []
        return list(reversed(self.store.memories(self.user_id, before=before, limit=n, newest_first=True)))


# ---------------------------------------------------------------- semantic memory

SEMANTIC_SYSTEM = (
    "You study one person's history of interactions and describe the stable traits behind them. You write for "
    "another assistant who will act on the person's behalf, so be specific and factual."
)

SEMANTIC_PROMPT = """Below are past interactions of one person, oldest first. Each shows what they were asked and \
what they actually answered.

{task_line}{events}

Write a profile of this person in at most {max_words} words: their lasting preferences and habits, how they tend \
to answer (for example which answers they give often and which they avoid), and anything that sets them apart from \
a typical person. Describe patterns rather than listing the interactions. Write plain prose, no heading."""


@dataclass(frozen=True, slots=True)
class SemanticMemory:
    text: str
    n_events: int
    usage: Usage


def summarise_memory(
    model: ChatModel,
    records: Sequence[MemoryRecord],
    *,
    task: str = "",
    max_words: int = 150,
    max_events: int = 40,
    event_chars: int = 240,
    max_tokens: int = 320,
) -> SemanticMemory:
    """Semantic memory ``P^u = f_s(S_t, D^u)``: one summary of the user's most recent ``max_events`` episodic
    records (clipped to ``event_chars`` each so the prompt fits a small context window)."""
    chosen = list(records)[-max_events:]
    if not chosen:
        return SemanticMemory("No past interactions are known for this person yet.", 0, Usage())
    events = "\n".join(
        f"{i}. {' '.join(r.query.split())[:event_chars]} -> {' '.join(r.response.split())[:80]}"
        for i, r in enumerate(chosen, 1)
    )
    task_line = f"The interactions come from this task: {task}\n\n" if task else ""
    prompt = SEMANTIC_PROMPT.format(task_line=task_line, events=events, max_words=max_words)
    result = model.chat(
        ChatRequest.of([system(SEMANTIC_SYSTEM), user(prompt)], max_tokens=max_tokens, temperature=0.0, seed=0)
    )
    text = result.text.strip()
    if not text:
        raise ValueError("the model returned an empty profile")
    return SemanticMemory(text, len(chosen), result.usage)
