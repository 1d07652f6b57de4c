"""The comparison methods of PersonaAgent's Table 2, on the same backbone and the same answer reading:

* **Prompt** — the question alone;
* **ICL** — a few solved questions from *other* users before it (no personal signal);
* **RAG-k** — the user's k most similar past interactions (LaMP's retrieval augmentation);
* **PAG-k** — a profile summarised from the user's history plus RAG-k (profile-augmented generation);
* **ReAct** — a general tool-using agent (memory search and encyclopedia available, nothing required, no persona);
* **MemBank** — a MemoryBank-style memory agent: a user portrait plus memories ranked by similarity weighted with
  a forgetting curve (retention ``exp(-Δt / S)``), no tools.

and one reference without any model: **History** — the answer the user gave most often before, the floor any
personalised method has to clear.

Each returns an :class:`~personalens.agent.loop.AgentAnswer`, so they are scored exactly like the agent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from personalens.agent.loop import DEFAULT_LOOP, AgentAnswer, AnswerSpace, LoopConfig, answer_directly, run_agent
from personalens.agent.memory import EpisodicMemory, MemoryHit
from personalens.agent.tools import ToolBox, ToolContext, format_hits
from personalens.llm.base import ChatModel, Usage, system, user
from personalens.llm.scoring import rating_choices
from personalens.store.models import MemoryRecord

GENERIC_SYSTEM = "You are a helpful assistant."
PERSONAL_SYSTEM = "You are a personal assistant. Answer the question the way this particular user would."

ICL_BLOCK = "Here are solved examples of the same kind of question:\n{demos}\n\nNow the question to answer:\n"
RAG_BLOCK = (
    "Past interactions of this user that resemble the question, with what the user actually answered:\n{hits}\n\n"
)
PROFILE_BLOCK = "What is known about this user:\n{profile}\n\n"
QUESTION = "{question}\n{instruction}"


@dataclass(frozen=True, slots=True)
class Case:
    """One question to answer for a user: the question text, its answer space, what to search memory for, and the
    moment it is asked (memories at or after ``before`` are invisible)."""

    question: str
    space: AnswerSpace
    search_query: str
    before: float | None = None


def _ask(model: ChatModel, system_text: str, body: str, case: Case, config: LoopConfig) -> AgentAnswer:
    content = body + QUESTION.format(question=case.question, instruction=case.space.instruction())
    return answer_directly(model, [system(system_text), user(content.strip())], case.space, config=config)


def prompt_only(model: ChatModel, case: Case, *, config: LoopConfig = DEFAULT_LOOP) -> AgentAnswer:
    return _ask(model, GENERIC_SYSTEM, "", case, config)


def in_context(
    model: ChatModel, case: Case, demos: Sequence[tuple[str, str]], *, config: LoopConfig = DEFAULT_LOOP
) -> AgentAnswer:
    """ICL: ``demos`` are (question, answer) pairs, normally drawn from other users."""
    text = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in demos)
    return _ask(model, GENERIC_SYSTEM, ICL_BLOCK.format(demos=text) if demos else "", case, config)


def retrieval_augmented(
    model: ChatModel, case: Case, memory: EpisodicMemory, k: int, *, config: LoopConfig = DEFAULT_LOOP
) -> AgentAnswer:
    hits = memory.search(case.search_query, k=k, before=case.before)
    answer = _ask(model, PERSONAL_SYSTEM, RAG_BLOCK.format(hits=format_hits(hits)), case, config)
    answer.memory_hits = list(hits)
    return answer


def profile_augmented(
    model: ChatModel,
    case: Case,
    memory: EpisodicMemory,
    k: int,
    profile: str,
    *,
    config: LoopConfig = DEFAULT_LOOP,
) -> AgentAnswer:
    hits = memory.search(case.search_query, k=k, before=case.before)
    body = PROFILE_BLOCK.format(profile=profile.strip()) + RAG_BLOCK.format(hits=format_hits(hits))
    answer = _ask(model, PERSONAL_SYSTEM, body, case, config)
    answer.memory_hits = list(hits)
    return answer


def react(model: ChatModel, case: Case, tools: ToolBox, *, config: LoopConfig = DEFAULT_LOOP) -> AgentAnswer:
    """A general ReAct agent: the same loop and tools, no persona, no required memory search."""
    from dataclasses import replace

    return run_agent(
        model,
        case.question,
        persona=None,
        tools=tools,
        space=case.space,
        context=ToolContext(before=case.before),
        config=replace(config, require_memory_search=False),
        search_query=case.search_query,
    )


def forgetting_rank(
    hits: Sequence[MemoryHit], now: float | None, k: int, *, strength_days: float = 365.0
) -> list[MemoryHit]:
    """MemoryBank-style recall: similarity × (½ + ½·retention), retention = exp(-Δt / S) with Δt in days since the
    memory (Ebbinghaus curve, strength ``S``); undated memories or an unknown ``now`` count as fully retained."""

    def weight(hit: MemoryHit) -> float:
        ts = hit.record.timestamp
        if now is None or ts is None:
            return 1.0
        days = max(0.0, (now - ts) / 86400.0)
        return 0.5 + 0.5 * math.exp(-days / strength_days)

    ranked = sorted(hits, key=lambda h: -(h.score * weight(h)))
    return ranked[:k]


def memory_bank(
    model: ChatModel,
    case: Case,
    memory: EpisodicMemory,
    k: int,
    portrait: str,
    *,
    pool: int = 20,
    strength_days: float = 365.0,
    config: LoopConfig = DEFAULT_LOOP,
) -> AgentAnswer:
    candidates = memory.search(case.search_query, k=pool, before=case.before)
    hits = forgetting_rank(candidates, case.before, k, strength_days=strength_days)
    body = PROFILE_BLOCK.format(profile=portrait.strip()) + RAG_BLOCK.format(hits=format_hits(hits))
    answer = _ask(model, PERSONAL_SYSTEM, body, case, config)
    answer.memory_hits = list(hits)
    return answer


def history_majority(records: Sequence[MemoryRecord], space: AnswerSpace) -> AgentAnswer:
    """No LLM call: the allowed answer the user gave most often in ``records`` (a tie goes to the one given most
    recently). ``scores`` are the answers' shares of the user's history; on a rating scale the expectation is the
    mean past rating. Past answers outside the space are ignored; with none left the answer is unreadable."""
    if space.kind == "free":
        raise ValueError("the history reference needs a closed answer space (labels or a rating scale)")
    dated = sorted(enumerate(records), key=lambda ir: (ir[1].timestamp is None, ir[1].timestamp or 0.0, ir[0]))
    counts: Counter[str] = Counter()
    latest: dict[str, int] = {}
    for order, (_, record) in enumerate(dated):
        label = space.match(record.response)
        if label is not None:
            counts[label] += 1
            latest[label] = order
    if not counts:
        return AgentAnswer("", [], Usage(), parsed=False)
    best = max(counts, key=lambda c: (counts[c], latest[c]))
    total = sum(counts.values())
    expectation = None
    if space.kind == "rating" and space.scale is not None:
        choices, values, _ = rating_choices(*space.scale)
        value = dict(zip(choices, values, strict=True))
        expectation = sum(value[c] * n for c, n in counts.items()) / total
    return AgentAnswer(best, [], Usage(), {c: n / total for c, n in counts.items()}, expectation)
