"""PersonaAgent for one user: episodic memory in the persona store, a persona (the system prompt) stored as persona
versions, tools, the action loop and test-time alignment — all behind :class:`PersonaAgent`.

The persona has two parts. The *profile* is the text about the user: initialised from semantic memory
(:func:`~personalens.agent.memory.summarise_memory`) and rewritten by alignment; it is what the store versions. The
*rules* (how to act, the tool protocol) are fixed and appended when the system prompt is rendered, so a rewrite by a
small model cannot lose them. The paper rewrites the whole system prompt; this split is a deliberate deviation.

Agent versions are ordinary persona versions with ``method`` ``agent-init`` / ``agent-align`` (one persona,
cluster 0, whose ``meta`` keeps the semantic memory or the alignment feedback). They become the user's current
version only when the user has no other kind of persona (a PersonaX set stays current for retrieval); the agent
always reads its own latest version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from personalens.agent.alignment import AlignmentConfig, AlignmentExample, AlignmentResult, AlignmentStep, align_persona
from personalens.agent.loop import FREE_TEXT, AgentAnswer, AnswerSpace, LoopConfig, run_agent
from personalens.agent.memory import EpisodicMemory, summarise_memory
from personalens.agent.tools import MemorySearchTool, Tool, ToolBox, ToolContext, WikiLookup, WikipediaTool
from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel, Usage
from personalens.llm.usage import Budget, UsageMeter
from personalens.store.base import PersonaStoreProtocol
from personalens.store.models import Persona, PersonaSet, config_hash

AGENT_METHODS = ("agent-init", "agent-align")
CREATOR = "personaagent"

PERSONA_HEAD = (
    "You are the personal assistant of one specific user. Answer every question the way this user would answer "
    "it, guided by what you know about them:\n"
)
PERSONA_RULES = (
    "Rules: think step by step about what you need to know; search the user's memory at least once before "
    "answering; use the tools deliberately with precise inputs; keep the final answer short."
)
NO_PERSONA = "You are a helpful assistant."


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Switches for the full agent and its ablations (the paper's Table 3): ``use_persona`` (the profile in the
    system prompt), ``use_memory`` (the memory search tool), ``use_actions`` (any tool at all), ``use_wikipedia``;
    ``k`` memories per search (LaMP's 4); the loop and alignment settings."""

    use_persona: bool = True
    use_memory: bool = True
    use_actions: bool = True
    use_wikipedia: bool = True
    k: int = 4
    semantic_max_words: int = 150
    semantic_max_events: int = 40
    loop: LoopConfig = field(default_factory=LoopConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_persona(profile: str | None) -> str:
    """The system prompt for a profile: head, profile, fixed rules."""
    if profile is None:
        return NO_PERSONA
    return f"{PERSONA_HEAD}{profile.strip()}\n\n{PERSONA_RULES}"


@dataclass(frozen=True, slots=True)
class AgentPersona:
    profile: str
    version: int
    method: str
    meta: dict[str, Any]


class PersonaAgent:
    """The agent of ``user_id``. ``wikipedia`` is any object with ``summary(topic)`` (usually a
    :class:`~personalens.agent.wikipedia.WikipediaClient`); ``tools`` adds user-supplied tools. ``variant`` keeps
    the persona versions of differently configured agents of one user apart (an evaluation runs several)."""

    def __init__(
        self,
        model: ChatModel,
        embedder: Embedder,
        store: PersonaStoreProtocol,
        user_id: str,
        *,
        config: AgentConfig | None = None,
        wikipedia: WikiLookup | None = None,
        tools: Sequence[Tool] = (),
        task: str = "",
        variant: str = "default",
    ) -> None:
        self.model = model
        self.variant = variant
        self.embedder = embedder
        self.store = store
        self.user_id = user_id
        self.config = config or AgentConfig()
        self.memory = EpisodicMemory(store, embedder, user_id)
        self.wikipedia = wikipedia
        self.extra_tools = tuple(tools)
        self.task = task

    # ------------------------------------------------------------ tools
    def toolbox(self) -> ToolBox:
        cfg = self.config
        if not cfg.use_actions:
            return ToolBox(())
        tools: list[Tool] = []
        if cfg.use_memory:
            tools.append(MemorySearchTool(self.memory, k=cfg.k))
        if cfg.use_wikipedia and self.wikipedia is not None:
            tools.append(WikipediaTool(self.wikipedia))
        tools.extend(self.extra_tools)
        return ToolBox(tuple(tools))

    # ------------------------------------------------------------ persona versions
    def persona(self) -> AgentPersona | None:
        """The agent's latest persona version, or None before :meth:`initialise`."""
        for info in sorted(self.store.versions(self.user_id), key=lambda v: -v.version):
            if info.method in AGENT_METHODS:
                found = self.store.get(self.user_id, info.version)
                if found is not None and found.personas and found.config.get("variant", "default") == self.variant:
                    p = found.personas[0]
                    return AgentPersona(p.text, found.version, found.method, dict(p.meta))
        return None

    def recorded_usage(self, version: int) -> Usage:
        """The LLM usage recorded in the meta of ``version`` and its agent ancestors back to their ``agent-init``:
        what building that persona cost (semantic memory plus the alignment iterations that changed it). Used to
        account for a persona that is reused from the store instead of being built again."""
        total = Usage()
        current: int | None = version
        seen: set[int] = set()
        while current is not None and current not in seen:
            seen.add(current)
            found = self.store.get(self.user_id, current)
            if found is None or found.method not in AGENT_METHODS or not found.personas:
                break
            total = total + Usage.from_dict(found.personas[0].meta.get("usage"))
            if found.method == "agent-init":
                break
            current = found.parent_version
        return total

    def _make_current(self) -> bool:
        current = self.store.current(self.user_id)
        return current is None or current.method in AGENT_METHODS

    def _save(self, profile: str, method: str, meta: dict[str, Any], note: str, parent: int | None) -> PersonaSet:
        vec = np.asarray(self.embedder.embed([profile])[0], dtype=np.float32)
        config = {
            "agent": self.config.to_dict(),
            "task": self.task,
            "model": self.model.model_id,
            "variant": self.variant,
        }
        persona = Persona(0, profile, vec, (), len(self.memory), 0, vec, meta)
        return self.store.save(
            self.user_id,
            [persona],
            creator=CREATOR,
            method=method,
            config=config,
            config_hash=config_hash(config),
            embedder_id=self.embedder.model_id,
            parent_version=parent,
            note=note,
            make_current=self._make_current(),
        )

    def initialise(self, *, before: float | None = None, force: bool = False) -> AgentPersona:
        """Semantic memory from the episodic memory (the records before ``before`` when given), stored as the
        ``agent-init`` version. Returns the existing persona unless ``force``."""
        existing = self.persona()
        if existing is not None and not force:
            return existing
        records = self.store.memories(self.user_id, before=before) if before is not None else self.memory.all()
        semantic = summarise_memory(
            self.model,
            records,
            task=self.task,
            max_words=self.config.semantic_max_words,
            max_events=self.config.semantic_max_events,
        )
        meta = {"semantic_memory": semantic.text, "n_events": semantic.n_events, "usage": semantic.usage.to_dict()}
        saved = self._save(
            semantic.text,
            "agent-init",
            meta,
            f"semantic memory from {semantic.n_events} interactions",
            existing.version if existing else None,
        )
        return AgentPersona(semantic.text, saved.version, saved.method, meta)

    # ------------------------------------------------------------ acting
    def system_prompt(self, profile: str | None = None) -> str:
        if not self.config.use_persona:
            return NO_PERSONA
        if profile is None:
            current = self.persona()
            profile = current.profile if current else None
        return render_persona(profile)

    def answer(
        self,
        question: str,
        *,
        space: AnswerSpace = FREE_TEXT,
        profile: str | None = None,
        before: float | None = None,
        exclude: Sequence[str] = (),
        search_query: str | None = None,
    ) -> AgentAnswer:
        """Answer ``question`` with the current persona (or ``profile``); memories are limited to those before
        ``before`` and not in ``exclude``."""
        context = ToolContext(before=before, exclude=frozenset(exclude), k=self.config.k)
        return run_agent(
            self.model,
            question,
            persona=self.system_prompt(profile),
            tools=self.toolbox(),
            space=space,
            context=context,
            config=self.config.loop,
            search_query=search_query,
        )

    # ------------------------------------------------------------ test-time alignment
    def align(
        self,
        batch: Sequence[AlignmentExample],
        *,
        space: AnswerSpace = FREE_TEXT,
        on_step: Callable[[AlignmentStep], None] | None = None,
    ) -> AlignmentResult:
        """Algorithm 1 on ``batch`` (usually the latest n interactions); each iteration that changes the persona is
        stored as an ``agent-align`` version whose meta keeps the feedback, the simulated answers and the guards'
        findings. Each simulated answer sees only memories older than its interaction, never the interaction."""
        start = self.persona() or self.initialise()
        version = {"v": start.version}
        caps = self.config.alignment
        model: ChatModel = self.model
        actor = self
        if caps.max_calls is not None or caps.max_tokens is not None:
            # one meter for the whole run: simulated answers, feedback and rewrites all count against the caps
            model = UsageMeter(self.model, Budget(max_tokens=caps.max_tokens, max_calls=caps.max_calls))
            actor = self.with_config()
            actor.model = model
            actor.memory = self.memory

        def simulate(ex: AlignmentExample, profile: str) -> AgentAnswer:
            return actor.answer(
                ex.question,
                space=space,
                profile=profile,
                before=ex.timestamp,
                exclude=(ex.memory_id,),
                search_query=ex.search_query,
            )

        def store_step(step: AlignmentStep) -> None:
            if step.changed:
                meta = step.to_dict()
                note = f"alignment iteration {step.iteration}: " + (
                    f"{sum(1 for s in step.simulated if s['correct'])}/{len(step.simulated)} simulated answers right"
                )
                if step.dropped:
                    note += f"; {len(step.dropped)} statement(s) not carried over, {len(step.restored)} restored"
                saved = self._save(step.persona_after, "agent-align", meta, note, version["v"])
                version["v"] = saved.version
            if on_step is not None:
                on_step(step)

        return align_persona(
            model,
            start.profile,
            batch,
            simulate,
            config=self.config.alignment,
            embedder=self.embedder,
            on_step=store_step,
        )

    def with_config(self, **changes: Any) -> PersonaAgent:
        """A copy of this agent with some settings changed (same model, store, memory and tools)."""
        clone = PersonaAgent(
            self.model,
            self.embedder,
            self.store,
            self.user_id,
            config=replace(self.config, **changes),
            wikipedia=self.wikipedia,
            tools=self.extra_tools,
            task=self.task,
            variant=self.variant,
        )
        return clone
