"""A content-addressed response cache on SQLite (JSON only, never pickle), and the wrapper that uses it.

The key is the sha256 of the model id plus the whole request: messages, sampling settings, seed, schema, logprobs,
prefill and the ``sample`` number. Changing any of them misses the cache. To force new answers either bump
``ChatRequest.sample`` (keeps the old answers under their own keys) or wrap with ``refresh=True`` (ignores what is
stored and overwrites it).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from personalens.llm.base import ChatModel, ChatRequest, ChatResult, Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    """SQLite file (WAL) of request → response. Safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get(self, model_id: str, request: ChatRequest) -> ChatResult | None:
        key = request.cache_key(model_id)
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        result = ChatResult.from_json(json.loads(row[0]))
        result.from_cache = True
        return result

    def put(self, model_id: str, request: ChatRequest, result: ChatResult) -> None:
        key = request.cache_key(model_id)
        payload = (
            key,
            model_id,
            json.dumps(request.canonical(), ensure_ascii=False),
            json.dumps(result.to_json(), ensure_ascii=False),
            time.time(),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", payload)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM responses")
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedChatModel:
    """Wraps a chat model with a :class:`ResponseCache`. A hit costs no tokens: its usage counts one cache hit.

    With ``refresh=True`` stored answers are ignored and overwritten by fresh ones.
    """

    def __init__(self, inner: ChatModel, cache: ResponseCache, *, refresh: bool = False) -> None:
        self.inner = inner
        self.cache = cache
        self.refresh = refresh

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def cached(self, request: ChatRequest) -> ChatResult | None:
        """The stored answer to ``request`` (usage: one cache hit), or ``None``; never calls the backend."""
        if self.refresh:
            return None
        hit = self.cache.get(self.model_id, request)
        if hit is not None:
            hit.usage = Usage(cache_hits=1)
        return hit

    def chat(self, request: ChatRequest) -> ChatResult:
        hit = self.cached(request)
        if hit is not None:
            return hit
        result = self.inner.chat(request)
        self.cache.put(self.model_id, request, result)
        return result

    def close(self) -> None:
        self.inner.close()
        self.cache.close()
