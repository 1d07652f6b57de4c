"""Usage accounting and caps for a run: every call's tokens and time add up; a cap stops a run before it crosses it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from personalens.errors import BudgetExceeded
from personalens.llm.base import ChatModel, ChatRequest, ChatResult, Usage


@dataclass(frozen=True, slots=True)
class Budget:
    """Caps for one run; ``None`` means no cap. Checked before each backend call (cache hits are free)."""

    max_tokens: int | None = None
    max_calls: int | None = None
    max_seconds: float | None = None


class UsageMeter:
    """Wraps a chat model; sums the usage of every call into :attr:`total` and enforces a :class:`Budget`.

    Before a call it checks that the tokens already used plus the request's ``max_tokens`` stay within the token cap,
    so a run stops before it crosses a cap rather than after. Answers the wrapped model already has cached (it
    offers ``cached(request)``) are served without the check: they cost nothing.
    """

    def __init__(self, inner: ChatModel, budget: Budget | None = None) -> None:
        self.inner = inner
        self.budget = budget or Budget()
        self.total = Usage()
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def _check(self, request: ChatRequest) -> None:
        b, t = self.budget, self.total
        if b.max_calls is not None and t.calls + 1 > b.max_calls:
            raise BudgetExceeded(f"call cap reached: {t.calls} of {b.max_calls} calls used")
        if b.max_tokens is not None and t.total_tokens + request.max_tokens > b.max_tokens:
            raise BudgetExceeded(
                f"token cap: {t.total_tokens} used + up to {request.max_tokens} requested > {b.max_tokens}"
            )
        if b.max_seconds is not None and t.seconds >= b.max_seconds:
            raise BudgetExceeded(f"time cap reached: {t.seconds:.1f} s of {b.max_seconds} s used")

    def chat(self, request: ChatRequest) -> ChatResult:
        lookup = getattr(self.inner, "cached", None)
        result = lookup(request) if lookup is not None else None
        if result is None:
            with self._lock:
                self._check(request)
            result = self.inner.chat(request)
        with self._lock:
            self.total = self.total + result.usage
        return result

    def reset(self) -> Usage:
        """Return the usage so far and start counting from zero."""
        with self._lock:
            used, self.total = self.total, Usage()
        return used

    def close(self) -> None:
        self.inner.close()
