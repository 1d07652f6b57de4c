"""One retry helper for every remote call: bounded attempts, exponential backoff with jitter, Retry-After honoured."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` counts the first try. Delay for attempt k (1-based) is ``min(max_delay, base * 2**(k-1))``
    scaled by a jitter in [0.5, 1], unless the server named a Retry-After, which wins (capped at ``max_delay``)."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.5 + 0.5 * rng.random())


class Retryable(Exception):
    """Raised inside a retried call to ask for another attempt; ``retry_after`` in seconds if the server said."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: either delta-seconds or an HTTP date. ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, Retryable, float], None] | None = None,
) -> tuple[T, int]:
    """Call ``fn`` until it returns, retrying only on :class:`Retryable`. Returns the value and the attempts used.

    The last :class:`Retryable` is re-raised when the attempts run out; any other exception passes straight through.
    """
    rng = rng or random.Random()
    attempt = 1
    while True:
        try:
            return fn(), attempt
        except Retryable as exc:
            if attempt >= policy.max_attempts:
                raise
            wait = policy.delay(attempt, exc.retry_after, rng)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
            attempt += 1
