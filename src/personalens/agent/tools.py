"""Tools the agent can act with: personal memory search (required once per answer), a general-knowledge lookup, and
any function a user supplies.

Every tool takes one text input and returns an :class:`Observation`; :class:`ToolContext` carries what the caller
knows about the moment being answered (which memories are visible), so a simulated past answer cannot read the
memory it is being checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from personalens.agent.memory import EpisodicMemory, MemoryHit

MEMORY_TOOL = "memory_search"
WIKI_TOOL = "wikipedia"


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may see for this answer: memories strictly before ``before`` (seconds since the epoch) and not
    in ``exclude``; ``k`` overrides the memory tool's top-K."""

    before: float | None = None
    exclude: frozenset[str] = frozenset()
    k: int | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    text: str
    ok: bool = True
    data: Any = None  # e.g. the memory hits, for traces and tests


@runtime_checkable
class Tool(Protocol):
    """One action the agent can take. ``name`` is what the model writes; ``description`` tells it when to use it."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def run(self, query: str, context: ToolContext) -> Observation: ...


def openai_spec(tool: Tool) -> dict[str, Any]:
    """The tool as an OpenAI function spec with one string argument, ``query``."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "what to look up"}},
                "required": ["query"],
            },
        },
    }


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def format_hits(hits: Sequence[MemoryHit], *, max_chars: int = 300) -> str:
    """Memory hits as the model reads them: one numbered line each, with the date when known."""
    if not hits:
        return "No matching memories."
    # bullets, not numbers: a numbered list ("1. …") pulls a small model towards answering "1" on a 1–5 scale
    lines = []
    for hit in hits:
        when = f"[{hit.date}] " if hit.date else ""
        lines.append(
            f"- {when}{_clip(hit.record.query, max_chars)} => the user's answer: {_clip(hit.record.response, 80)}"
        )
    return "\n".join(lines)


@dataclass
class MemorySearchTool:
    """Top-K search of the user's episodic memory (PersonaAgent Eq. 2) by similarity to the model's query."""

    memory: EpisodicMemory
    k: int = 4
    max_chars: int = 300
    name: str = MEMORY_TOOL
    description: str = (
        "Search this user's own past interactions (what they were asked and what they answered). Input: a short "
        "search text, e.g. the key words of the question. Output: the most similar past interactions with the user's "
        "true answers. Use it at least once before answering."
    )

    def run(self, query: str, context: ToolContext) -> Observation:
        hits = self.memory.search(query, k=context.k or self.k, before=context.before, exclude=context.exclude)
        return Observation(format_hits(hits, max_chars=self.max_chars), True, hits)


class WikiLookup(Protocol):
    def summary(self, topic: str) -> Any: ...


@dataclass
class WikipediaTool:
    """A short encyclopedia summary of a topic through :class:`~personalens.agent.wikipedia.WikipediaClient` (or any
    object with the same ``summary(topic)``). Lookup failures become an observation, not a crash: the agent goes on."""

    client: WikiLookup
    name: str = WIKI_TOOL
    description: str = (
        "Look up general background knowledge about a topic in an encyclopedia. Input: a precise topic name, such "
        "as a film title, a person or a product type. Output: a short summary."
    )

    def run(self, query: str, context: ToolContext) -> Observation:
        try:
            result = self.client.summary(query)
        except Exception as exc:  # noqa: BLE001 - any lookup failure is reported to the model and traced
            return Observation(f"The lookup failed: {exc}", False)
        if result is None:
            return Observation(f"Nothing found for {query!r}.", True)
        title = getattr(result, "title", query)
        extract = getattr(result, "extract", str(result))
        return Observation(f"{title}: {extract}", True, result)


@dataclass
class FunctionTool:
    """A user-supplied tool: any function from a text input to a text output."""

    name: str
    description: str
    fn: Callable[[str], str]
    errors_as_observations: bool = True

    def run(self, query: str, context: ToolContext) -> Observation:
        try:
            return Observation(str(self.fn(query)))
        except Exception as exc:
            if not self.errors_as_observations:
                raise
            return Observation(f"The tool {self.name} failed: {exc}", False)


@dataclass
class ToolBox:
    """The agent's tools by name, in the order they are described to the model."""

    tools: Sequence[Tool] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique: {names}")
        for n in names:
            if not n or not n.replace("_", "").isalnum():
                raise ValueError(f"a tool name must be letters, digits and underscores: {n!r}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tools]

    def get(self, name: str) -> Tool:
        for t in self.tools:
            if t.name == name:
                return t
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def describe(self) -> str:
        return "\n".join(f"- {t.name}: {t.description}" for t in self.tools)

    def specs(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(openai_spec(t) for t in self.tools)
