"""The service's view of the LLM and the embedder: built on first use (or injected), and the LLM behind a
concurrency gate shared by every request and job, so chat requests and background jobs together never have more
than ``llm_concurrency`` calls in flight."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel, ChatRequest, ChatResult

T = TypeVar("T")


class GatedChatModel:
    """A chat model that lets at most ``limit`` calls through at once (the rest wait their turn)."""

    def __init__(self, inner: ChatModel, limit: int) -> None:
        self.inner = inner
        self._gate = threading.BoundedSemaphore(limit)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def chat(self, request: ChatRequest) -> ChatResult:
        with self._gate:
            return self.inner.chat(request)

    def cached(self, request: ChatRequest) -> ChatResult | None:
        lookup = getattr(self.inner, "cached", None)
        return None if lookup is None else lookup(request)

    def close(self) -> None:
        self.inner.close()


class Lazy(Generic[T]):
    """A value built once, on first use, by ``factory`` (thread-safe); ``given`` skips the factory."""

    def __init__(self, factory: Callable[[], T], given: T | None = None) -> None:
        self._factory = factory
        self._value = given
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
        return self._value

    def peek(self) -> T | None:
        return self._value


def describe(obj: Any) -> str:
    return str(getattr(obj, "model_id", type(obj).__name__))


__all__ = ["Embedder", "GatedChatModel", "Lazy", "describe"]
