"""Chat with a user's agent. Until the PersonaAgent exists this is one LLM call whose system prompt is the user's
persona; :func:`agent_reply` is the single seam the agent will replace (same inputs, same :class:`AgentReply`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel, ChatRequest, Usage, system, user
from personalens.llm.usage import UsageMeter
from personalens.store import Persona, PersonaSet

AGENT_SYSTEM_PROMPT = (
    "You are the personal agent of one user. This is what is known about the user's tastes:\n\n"
    "{persona}\n\n"
    "Answer the user's message as their agent: helpful, concise, and consistent with these tastes. Do not invent "
    "facts about the user beyond the description."
)


@dataclass(frozen=True)
class AgentReply:
    text: str
    version: int
    cluster: int
    model: str
    usage: Usage


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
    persona_set: PersonaSet,
    message: str,
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
) -> AgentReply:
    """Answer ``message`` as the user's agent, conditioned on the persona that fits the message best."""
    persona = pick_persona(persona_set, message, embedder)
    meter = UsageMeter(model)
    request = ChatRequest.of(
        [system(AGENT_SYSTEM_PROMPT.format(persona=persona.text)), user(message)],
        max_tokens=max_tokens,
        temperature=temperature,
    )
    result = meter.chat(request)
    return AgentReply(result.text.strip(), persona_set.version, persona.cluster, model.model_id, meter.total)
