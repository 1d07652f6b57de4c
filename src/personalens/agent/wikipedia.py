"""General knowledge for the agent: short Wikipedia summaries through the MediaWiki REST API.

:meth:`WikipediaClient.summary` asks ``GET {base}/api/rest_v1/page/summary/{Title}`` (redirects followed). When there
is no such page (404) it searches ``GET {base}/w/rest.php/v1/search/page?q=…&limit=…`` and summarises the first hit.
A disambiguation page (``type: "disambiguation"``) is replaced by the first search hit that is a real article, when
there is one; otherwise the disambiguation summary itself is returned, marked by its ``type``. Nothing found gives
``None``.

Timeouts, connection errors, HTTP 429 and 5xx, and unreadable bodies are retried a few times
(:mod:`personalens._retry`, Retry-After honoured) and then raise :class:`WikipediaError`, as does any other HTTP
error. Extracts are cut to ``max_chars`` at a sentence end. Results, including "nothing found", are kept in an
in-memory LRU cache, so asking again makes no request.

On a machine without internet, point ``base_url`` at :class:`~personalens.agent.wikiserver.RecordedWikipedia`.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from personalens import __version__
from personalens._retry import Retryable, RetryPolicy, call_with_retries, parse_retry_after
from personalens.errors import PersonaLensError

DEFAULT_BASE_URL = "https://en.wikipedia.org"
#: Wikimedia asks API clients to identify themselves with a contact; deployments should pass their own.
DEFAULT_USER_AGENT = f"personalens/{__version__} (PersonaLens research library; python-httpx)"
SUMMARY_PATH = "/api/rest_v1/page/summary/"
SEARCH_PATH = "/w/rest.php/v1/search/page"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_SEARCH_TRIES = 3  # search hits summarised at most, looking for an article
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")


class WikipediaError(PersonaLensError):
    """A Wikipedia lookup failed: the server could not be reached, kept failing, or refused the request."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class WikiResult:
    """A page summary. ``type`` is the page type (``"standard"``, ``"disambiguation"``, ...); ``query`` is the
    topic asked; ``via_search`` says the page was found by search (the topic was not a title, or was ambiguous)."""

    title: str
    extract: str
    description: str = ""
    url: str = ""
    type: str = "standard"
    query: str = ""
    via_search: bool = False

    @property
    def is_disambiguation(self) -> bool:
        return self.type == "disambiguation"

    def text(self) -> str:
        """``Title (description): extract`` — what an agent reads."""
        head = f"{self.title} ({self.description})" if self.description else self.title
        return f"{head}: {self.extract}" if self.extract else head


def trim_extract(text: str, max_chars: int) -> str:
    """``text`` with white space collapsed, cut to at most ``max_chars`` at the last sentence end that fits; when no
    sentence ends in time, at the last word that fits, with ``…``."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = 0
    for found in _SENTENCE_END.finditer(text, 0, max_chars + 1):
        if found.end() <= max_chars:
            cut = found.end()
    if cut:
        return text[:cut]
    head = text[: max(1, max_chars - 1)]
    space = head.rfind(" ")
    if space > max_chars // 2:
        head = head[:space]
    return head.rstrip() + "…"


def _url_title(title: str) -> str:
    text = " ".join(title.replace("_", " ").split())
    return quote(text.replace(" ", "_"), safe="")


class WikipediaClient:
    """Short Wikipedia summaries (see the module doc). Thread-safe; use as a context manager or call :meth:`close`.

    ``retry`` bounds the attempts per request (default 3, short backoff); ``sleep`` is what waits between them.
    ``cache_size`` results are kept (0 turns the cache off).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 10.0,
        user_agent: str = DEFAULT_USER_AGENT,
        max_chars: int = 1200,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        cache_size: int = 256,
        search_limit: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, not {max_chars}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be at least 0, not {cache_size}")
        self.base_url = base_url.rstrip("/")
        self.max_chars = max_chars
        self.retry = retry or RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5.0)
        self.search_limit = max(1, search_limit)
        self._sleep = sleep
        self._cache: OrderedDict[str, WikiResult | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            follow_redirects=True,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"WikipediaClient({self.base_url!r})"

    def __enter__(self) -> WikipediaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ public

    def summary(self, topic: str) -> WikiResult | None:
        """The summary of the page best matching ``topic``, or ``None`` when nothing matches (see the module doc)."""
        query = " ".join(topic.split())
        if not query:
            raise ValueError("the topic is empty")
        key = query[:1].upper() + query[1:]
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.hits += 1
                return self._cache[key]
            self.misses += 1
        result = self._lookup(query)
        if self._cache_size:
            with self._lock:
                self._cache[key] = result
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result

    def page_summary(self, title: str) -> WikiResult | None:
        """The summary of exactly this title (redirects followed), no search; ``None`` when there is no such page."""
        body = self._get_json(SUMMARY_PATH + _url_title(title))
        return self._result(body, title) if body is not None else None

    def search(self, query: str, limit: int | None = None) -> list[tuple[str, str]]:
        """Full-text search: ``(key, title)`` of the hits, best first."""
        body = self._get_json(SEARCH_PATH, {"q": query, "limit": str(limit or self.search_limit)})
        if body is None:
            return []
        pages = body.get("pages")
        if not isinstance(pages, list):
            raise WikipediaError(f"search for {query!r}: the answer has no 'pages' list")
        hits = []
        for page in pages:
            if isinstance(page, dict) and isinstance(page.get("title"), str):
                key = page.get("key") if isinstance(page.get("key"), str) else page["title"]
                hits.append((str(key), page["title"]))
        return hits

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------ lookup logic

    def _lookup(self, query: str) -> WikiResult | None:
        direct = self.page_summary(query)
        if direct is not None and not direct.is_disambiguation:
            return direct
        # no page of that title, or an ambiguous one: the first search hits that are articles
        first: WikiResult | None = None
        tried = 0
        for key, title in self.search(query.replace("_", " ")):
            if direct is not None and title == direct.title:
                continue
            if tried >= _SEARCH_TRIES:
                break
            tried += 1
            found = self.page_summary(key)
            if found is None:
                continue
            found = dataclasses.replace(found, query=query, via_search=True)
            if not found.is_disambiguation:
                return found
            first = first or found
        return direct if direct is not None else first

    def _result(self, body: dict[str, Any], asked: str) -> WikiResult:
        title = body.get("title")
        if not isinstance(title, str) or not title:
            raise WikipediaError(f"summary of {asked!r}: the answer has no title")
        urls = body.get("content_urls")
        desktop = urls.get("desktop") if isinstance(urls, dict) else None
        url = desktop.get("page") if isinstance(desktop, dict) else None
        return WikiResult(
            title=title,
            extract=trim_extract(_text(body.get("extract")), self.max_chars),
            description=_text(body.get("description")),
            url=url if isinstance(url, str) else "",
            type=_text(body.get("type")) or "standard",
            query=asked,
        )

    # ------------------------------------------------------------------ HTTP

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The JSON object at ``path``; ``None`` on 404. Retries transient failures, then raises WikipediaError."""
        url = self.base_url + path

        def attempt() -> dict[str, Any] | None:
            try:
                response = self._client.get(url, params=params)
            except httpx.TimeoutException as exc:
                raise Retryable(f"timed out ({type(exc).__name__})") from exc
            except httpx.RequestError as exc:  # connection refused/reset, protocol errors, too many redirects
                raise Retryable(f"{type(exc).__name__}: {exc}") from exc
            status = response.status_code
            if status == 404:
                return None
            if status in _RETRY_STATUSES:
                raise Retryable(
                    f"HTTP {status}", retry_after=parse_retry_after(response.headers.get("retry-after")), status=status
                )
            if status >= 400:
                raise WikipediaError(f"GET {url} failed with HTTP {status}: {_short(response.text)}", status=status)
            try:
                data = response.json()
            except ValueError as exc:  # a cut or garbled body: try again
                raise Retryable(f"HTTP {status} with a body that is not JSON", status=status) from exc
            if not isinstance(data, dict):
                raise WikipediaError(f"GET {url} returned JSON that is not an object", status=status)
            return data

        try:
            value, _ = call_with_retries(attempt, self.retry, sleep=self._sleep)
        except Retryable as exc:
            raise WikipediaError(
                f"GET {url} failed after {self.retry.max_attempts} attempts: {exc}",
                status=exc.status,
                attempts=self.retry.max_attempts,
            ) from exc
        return value


def _text(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_USER_AGENT",
    "WikiResult",
    "WikipediaClient",
    "WikipediaError",
    "trim_extract",
]
