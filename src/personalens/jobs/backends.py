"""Picklable recipes for a worker's backends: each worker of a distributed job rebuilds its own chat model, embedder
and (when it writes) persona store from one of these, instead of receiving live connections or loaded models.

A recipe has three methods: ``chat_model(limiter)`` (the limiter, when given, must hold a slot around each backend
call; it sits below the response cache so cache hits never wait), ``embedder()`` and ``open_store()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel
from personalens.store import PersonaStoreProtocol

if TYPE_CHECKING:
    from personalens.jobs.executors import LLMLimiter
    from personalens.settings import Settings


@runtime_checkable
class WorkerBackends(Protocol):
    def chat_model(self, limiter: LLMLimiter | None) -> ChatModel: ...

    def embedder(self) -> Embedder: ...

    def open_store(self) -> PersonaStoreProtocol: ...


@dataclass(frozen=True, slots=True)
class SettingsBackends:
    """The backends the settings name (as the CLI builds them), with the store at ``store`` (default: settings).

    The API keys travel inside the settings (read from the environment of the driver when not set there), so the
    workers of a cluster use the same server without needing the variables themselves.
    """

    settings: Settings
    store: str | None = None

    def chat_model(self, limiter: LLMLimiter | None) -> ChatModel:
        from personalens.factory import build_chat_model

        return build_chat_model(self.settings, limiter=limiter)

    def embedder(self) -> Embedder:
        from personalens.factory import build_embedder

        return build_embedder(self.settings)

    def open_store(self) -> PersonaStoreProtocol:
        from personalens.factory import build_store

        return build_store(self.settings, self.store)


def portable_settings(settings: Settings) -> Settings:
    """A copy of ``settings`` with the API keys resolved from the driver's environment (for remote workers)."""
    import copy

    out = copy.deepcopy(settings)
    out.llm.api_key = settings.llm_api_key()
    out.embed.api_key = settings.embed_api_key()
    return out


__all__ = ["SettingsBackends", "WorkerBackends", "portable_settings"]
