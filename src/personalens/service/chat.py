"""Chat with a user's agent: :class:`~personalens.agent.agent.PersonaAgent` with the user's persona as system
prompt, their episodic memory as a tool (when they have memories) and the encyclopedia lookup when the service has
one configured. The persona is the agent's own latest version when alignment or initialisation wrote one, else the
PersonaX persona whose cluster fits the message best (retrieval, no LLM call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from personalens.agent.agent import AgentConfig, PersonaAgent
from personalens.agent.loop import LoopConfig
from personalens.agent.tools import WikiLookup
from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel, Usage
from personalens.store import Persona, PersonaSet
from personalens.store.base import PersonaStoreProtocol


@dataclass(frozen=True)
class AgentReply:
    text: str
    version: int
    cluster: int
    model: str
    usage: Usage
    steps: list[dict[str, Any]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)


def pick_persona(persona_set: PersonaSet, message: str, embedder: Embedder) -> Persona:
    """The persona whose cluster centroid is nearest the message (PersonaX retrieval, no LLM call); the largest
    cluster's persona when there is one persona or the set comes from another embedding space."""
    if len(persona_set.personas) == 1 or persona_set.embedder_id != embedder.model_id:
        return max(persona_set.personas, key=lambda p: p.cluster_size)
    target = np.asarray(embedder.embed([message])[0], dtype=np.float32)
    centroids = persona_set.centroids()
    norms = np.linalg.norm(centroids, axis=1) * max(float(np.linalg.norm(target)), 1e-12)
    scores = centroids @ target / np.where(norms == 0, 1.0, norms)
    return persona_set.personas[int(np.argmax(scores))]


def agent_reply(
    model: ChatModel,
    embedder: Embedder,
    store: PersonaStoreProtocol,
    user_id: str,
    persona_set: PersonaSet | None,
    message: str,
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    wikipedia: WikiLookup | None = None,
    max_steps: int = 4,
) -> AgentReply:
    """Answer ``message`` as ``user_id``'s agent; the reply carries the traced steps and the memories it read."""
    has_memories = store.count_memories(user_id) > 0
    loop = LoopConfig(
        max_steps=max_steps,
        step_max_tokens=min(max_tokens, 256),
        answer_max_tokens=max_tokens,
        temperature=temperature,
        answer_scoring="text",
    )
    config = AgentConfig(use_memory=has_memories, use_wikipedia=wikipedia is not None, loop=loop)
    agent = PersonaAgent(model, embedder, store, user_id, config=config, wikipedia=wikipedia)
    own = agent.persona()
    if own is not None:
        profile: str | None = own.profile
        version, cluster = own.version, 0
    elif persona_set is not None:
        picked = pick_persona(persona_set, message, embedder)
        profile, version, cluster = picked.text, persona_set.version, picked.cluster
    else:
        profile, version, cluster = None, 0, 0
    answer = agent.answer(message, profile=profile)
    return AgentReply(
        answer.answer.strip(),
        version,
        cluster,
        model.model_id,
        answer.usage,
        [s.to_dict() for s in answer.steps],
        [h.record.memory_id for h in answer.memory_hits],
    )
