"""Profilers turn a group of behaviours into persona text; rankers score candidates given the persona each one uses.

Profilers:

* :class:`BehaviourProfiler` (no LLM): the persona is the behaviours' own text, one line per item, oldest first.
  With ``encoding="mean"`` the experiment also attaches the mean of the behaviours' embeddings, so the embedding
  ranker compares against every selected behaviour rather than against a text the embedder truncates (MiniLM reads
  256 word pieces, about 17 MovieLens titles with genres).
* :class:`SummaryProfiler`: an LLM summarises the behaviours into a bounded persona
  (:func:`personalens.profiling.summarize_history`), the Agent4Rec-style Summarization.

Rankers (both score a candidate with the persona its plan assigns it):

* :class:`EmbeddingRanker`: cosine between the persona text's embedding and the candidate text's embedding (the role
  EasyRec plays in the PersonaX paper, here with the configured embedder).
* :class:`LLMRanker`: the persona role-plays and the candidate is scored by the expected rating read from the
  probabilities of the rating tokens (:func:`personalens.prediction.predict_ratings`), never from free text.
  Candidates sharing a persona are scored one after another so the backend reuses the cached persona prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from personalens.data.records import Interaction, Item
from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel, Usage
from personalens.prediction import predict_ratings
from personalens.profiling import PROMPTS_VERSION, summarize_history


@dataclass(slots=True)
class PersonaText:
    """A persona as a ranker sees it. ``vector``, when set, is the persona's embedding given directly (the mean of
    its behaviours' embeddings in the LLM-free ``mean`` encoding), used by :class:`EmbeddingRanker` instead of
    embedding ``text``."""

    text: str
    usage: Usage = field(default_factory=Usage)
    truncated: bool = False
    vector: np.ndarray | None = None


class Profiler(Protocol):
    name: str

    def config(self) -> dict[str, Any]: ...

    def persona(self, behaviours: Sequence[Interaction], items: Mapping[str, Item]) -> PersonaText: ...


class BehaviourProfiler:
    """The selected behaviours' text, joined by newlines (at most ``max_items``, the most recent kept)."""

    name = "behaviours"

    def __init__(
        self, item_fields: Sequence[str] = ("genres",), max_items: int | None = None, encoding: str = "text"
    ) -> None:
        if encoding not in ("text", "mean"):
            raise ValueError(f"encoding must be text or mean, not {encoding!r}")
        self.item_fields = tuple(item_fields)
        self.max_items = max_items
        self.encoding = encoding

    def config(self) -> dict[str, Any]:
        return {
            "profiler": self.name,
            "item_fields": list(self.item_fields),
            "max_items": self.max_items,
            "encoding": self.encoding,
        }

    def persona(self, behaviours: Sequence[Interaction], items: Mapping[str, Item]) -> PersonaText:
        chosen = list(behaviours)
        truncated = self.max_items is not None and len(chosen) > self.max_items
        if self.max_items is not None:
            chosen = chosen[-self.max_items :]
        lines = [(items.get(x.item_id) or Item(x.item_id)).text(self.item_fields) for x in chosen]
        return PersonaText("\n".join(lines), truncated=truncated)


class SummaryProfiler:
    """An LLM-written persona from at most ``max_items`` behaviours (the most recent ones when there are more:
    what fits a small model's context; the cut is reported as ``truncated``)."""

    name = "summarize"

    def __init__(
        self,
        model: ChatModel,
        *,
        domain: str = "movies",
        max_words: int = 100,
        max_items: int = 30,
        item_fields: Sequence[str] = ("genres",),
        like_above: float | None = None,
    ) -> None:
        self.model = model
        self.domain = domain
        self.max_words = max_words
        self.max_items = max_items
        self.item_fields = tuple(item_fields)
        self.like_above = like_above

    def config(self) -> dict[str, Any]:
        return {
            "profiler": self.name,
            "model": self.model.model_id,
            "domain": self.domain,
            "max_words": self.max_words,
            "max_items": self.max_items,
            "item_fields": list(self.item_fields),
            "like_above": self.like_above,
            "prompts_version": PROMPTS_VERSION,
        }

    def persona(self, behaviours: Sequence[Interaction], items: Mapping[str, Item]) -> PersonaText:
        result = summarize_history(
            self.model,
            behaviours,
            items,
            domain=self.domain,
            max_words=self.max_words,
            max_items=self.max_items,
            like_threshold=self.like_above,
            item_fields=self.item_fields,
        )
        return PersonaText(result.text, result.usage, len(behaviours) > self.max_items or result.truncated)


class Ranker(Protocol):
    name: str

    def config(self) -> dict[str, Any]: ...

    def score(
        self, personas: Sequence[PersonaText], assign: Sequence[int], candidates: Sequence[Item]
    ) -> tuple[np.ndarray, Usage]: ...


class EmbeddingRanker:
    """score(c) = cos(E(persona of c), E(text of c))."""

    name = "embedding"

    def __init__(self, embedder: Embedder, item_fields: Sequence[str] = ("genres",)) -> None:
        self.embedder = embedder
        self.item_fields = tuple(item_fields)

    def config(self) -> dict[str, Any]:
        return {"ranker": self.name, "embedder": self.embedder.model_id, "item_fields": list(self.item_fields)}

    def score(
        self, personas: Sequence[PersonaText], assign: Sequence[int], candidates: Sequence[Item]
    ) -> tuple[np.ndarray, Usage]:
        to_embed = [p.text for p in personas if p.vector is None]
        embedded = iter(self.embedder.embed(to_embed) if to_embed else [])
        p = _unit(np.stack([p.vector if p.vector is not None else next(embedded) for p in personas]))
        c = _unit(self.embedder.embed([item.text(self.item_fields) for item in candidates]))
        index = np.asarray(assign, dtype=np.int64)
        return np.einsum("ij,ij->i", p[index], c), Usage()


class LLMRanker:
    """score(c) = the expected rating of c for its persona, from the rating tokens' probabilities."""

    name = "llm"

    def __init__(
        self,
        model: ChatModel,
        *,
        domain: str = "movies",
        scale: tuple[float, float, float] = (1, 5, 1),
        item_fields: Sequence[str] = ("genres",),
    ) -> None:
        self.model = model
        self.domain = domain
        self.scale = scale
        self.item_fields = tuple(item_fields)

    def config(self) -> dict[str, Any]:
        return {
            "ranker": self.name,
            "model": self.model.model_id,
            "domain": self.domain,
            "scale": list(self.scale),
            "item_fields": list(self.item_fields),
            "prompts_version": PROMPTS_VERSION,
        }

    def score(
        self, personas: Sequence[PersonaText], assign: Sequence[int], candidates: Sequence[Item]
    ) -> tuple[np.ndarray, Usage]:
        scores = np.zeros(len(candidates))
        usage = Usage()
        for group in sorted(set(assign)):
            members = [c for c, g in enumerate(assign) if g == group]
            predictions, used = predict_ratings(
                self.model,
                personas[group].text,
                [candidates[c] for c in members],
                scale=self.scale,
                domain=self.domain,
                item_fields=self.item_fields,
            )
            usage = usage + used
            for c, prediction in zip(members, predictions, strict=True):
                scores[c] = prediction.expected
        return scores, usage


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


__all__ = [
    "BehaviourProfiler",
    "EmbeddingRanker",
    "LLMRanker",
    "PersonaText",
    "Profiler",
    "Ranker",
    "SummaryProfiler",
]
