"""A recorded Wikipedia on loopback: the two REST endpoints the Wikipedia tool uses, served from a fixed set of pages.

:class:`RecordedWikipedia` answers, on ``127.0.0.1`` and a free port, with the standard library only:

- ``GET /api/rest_v1/page/summary/{title}`` — the page summary (``type``, ``title``, ``displaytitle``, ``titles``,
  ``pageid``, ``extract``, ``description``, ``content_urls``); ``302`` to the target for an alias (a redirect page);
  ``404`` with a JSON problem body when there is no such page;
- ``GET /w/rest.php/v1/search/page?q=…&limit=…`` — full-text search, ``{"pages": [{"id", "key", "title", "excerpt",
  "matched_title", "description", "thumbnail"}]}``, ranked by case-insensitive word overlap with the title (weight 3)
  and the extract (weight 1);
- ``GET /w/rest.php/v1/search/title?q=…&limit=…`` — title search: titles starting with the query first, then word
  overlap with titles only.

Titles are normalised as MediaWiki does: underscores are spaces, runs of white space collapse, the first letter is
upper case; the rest of the title is case-sensitive. It stands in for Wikipedia in tests and in benchmarks on
machines without internet, where the pages come from the benchmark's own item metadata
(:func:`pages_from_movie_descriptions`, :func:`pages_from_lamp`).

Pages file (JSON lines, one page per line): ``{"title": str, "extract": str, "description": str (optional),
"type": "standard" | "disambiguation" (optional), "aliases": [str, ...] (optional: titles that redirect here)}``.

Test hooks: ``requests`` lists every request path (with query) in arrival order; ``fail_next(n, status)`` answers the
next ``n`` requests with that status; ``delay`` (seconds) holds every answer back, to provoke client timeouts.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from personalens.data._validate import bad_type, iter_jsonl
from personalens.errors import DataError

SUMMARY_PREFIX = "/api/rest_v1/page/summary/"
SEARCH_PAGE = "/w/rest.php/v1/search/page"
SEARCH_TITLE = "/w/rest.php/v1/search/title"
PAGE_TYPES = ("standard", "disambiguation")


@dataclass(frozen=True, slots=True)
class WikiPage:
    """One recorded page. ``aliases`` are other titles that redirect to it."""

    title: str
    extract: str
    description: str = ""
    type: str = "standard"
    aliases: tuple[str, ...] = field(default=())


def normalize_title(title: str) -> str:
    """MediaWiki's title normalisation: ``_`` → space, white space collapsed and trimmed, first letter upper case."""
    text = " ".join(title.replace("_", " ").split())
    return text[:1].upper() + text[1:]


def title_key(title: str) -> str:
    """The title as it appears in URLs: normalised, spaces as underscores."""
    return normalize_title(title).replace(" ", "_")


def load_pages_jsonl(path: str | Path) -> list[WikiPage]:
    """Pages from a JSON-lines file (see the module doc); errors name the file, line and field."""
    path = Path(path)
    pages = []
    for line, raw in iter_jsonl(path):
        for key in ("title", "extract"):
            if key not in raw:
                raise DataError(f"missing key; keys present: {sorted(raw)}", path=path, line=line, field=key)
        values: dict[str, Any] = {}
        for key in ("title", "extract", "description", "type"):
            value = raw.get(key, "")
            if not isinstance(value, str):
                raise bad_type(value, "a string", path, line, key)
            values[key] = value
        if not normalize_title(values["title"]):
            raise DataError("empty title", path=path, line=line, field="title")
        kind = values["type"] or "standard"
        if kind not in PAGE_TYPES:
            raise DataError(f"type must be one of {list(PAGE_TYPES)}, not {kind!r}", path=path, line=line, field="type")
        aliases = raw.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise bad_type(aliases, "a list of strings", path, line, "aliases")
        pages.append(WikiPage(values["title"], values["extract"], values["description"], kind, tuple(aliases)))
    return pages


def write_pages_jsonl(pages: Iterable[WikiPage], path: str | Path) -> None:
    """Write pages in the JSON-lines format :func:`load_pages_jsonl` reads."""
    lines = []
    for page in pages:
        body: dict[str, Any] = {"title": page.title, "extract": page.extract}
        if page.description:
            body["description"] = page.description
        if page.type != "standard":
            body["type"] = page.type
        if page.aliases:
            body["aliases"] = list(page.aliases)
        lines.append(json.dumps(body, ensure_ascii=False))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


_MOVIE_HEAD = re.compile(r"^(?P<title>.+?) \((?P<year>\d{4})\)\.\s*(?P<rest>.*)$", re.S)


def pages_from_movie_descriptions(descriptions: Iterable[str]) -> list[WikiPage]:
    """Pages from movie descriptions of the form ``"Title (1999). …"`` (as the LaMP-2M-like builder writes them).

    A title used by one film becomes a page ``Title`` (aliases ``Title (1999)`` and ``Title (1999 film)``, the usual
    Wikipedia spelling); a title shared by films of several years becomes a disambiguation page ``Title`` listing
    pages ``Title (1999 film)``. Descriptions that do not start that way are ignored.
    """
    films: dict[str, dict[str, str]] = {}
    for text in descriptions:
        found = _MOVIE_HEAD.match(" ".join(text.split()))
        if not found:
            continue
        title, year = normalize_title(found.group("title")), found.group("year")
        films.setdefault(title, {}).setdefault(year, " ".join(text.split()))
    pages: list[WikiPage] = []
    for title in sorted(films):
        by_year = films[title]
        if len(by_year) == 1:
            year, extract = next(iter(by_year.items()))
            pages.append(
                WikiPage(title, extract, f"{year} film", aliases=(f"{title} ({year})", f"{title} ({year} film)"))
            )
            continue
        listing = "; ".join(f"{title} ({year} film)" for year in sorted(by_year))
        pages.append(
            WikiPage(
                title, f"{title} may refer to: {listing}.", "Topics referred to by the same term", "disambiguation"
            )
        )
        for year in sorted(by_year):
            pages.append(
                WikiPage(f"{title} ({year} film)", by_year[year], f"{year} film", aliases=(f"{title} ({year})",))
            )
    return pages


def pages_from_lamp(examples: Iterable[Any]) -> list[WikiPage]:
    """Movie pages from LaMP-2-style examples: every profile ``description`` and the ``description:`` part of every
    input (:class:`~personalens.data.lamp.LampExample` or anything with ``input`` and ``profile``)."""
    texts: list[str] = []
    for example in examples:
        marker = example.input.rfind("description:")
        if marker >= 0:
            texts.append(example.input[marker + len("description:") :].strip())
        for entry in example.profile:
            value = entry.get("description")
            if isinstance(value, str):
                texts.append(value)
    return pages_from_movie_descriptions(texts)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[^\W_]+", text.casefold()))


class RecordedWikipedia:
    """The Wikipedia REST endpoints over a fixed set of pages, on ``127.0.0.1`` (see the module doc).

    ``pages``: a mapping from a title to its page (a key that differs from the page's own title is an alias), an
    iterable of pages, or the path of a pages JSON-lines file. Use as a context manager; ``base_url`` is then set.
    """

    def __init__(self, pages: Mapping[str, WikiPage] | Iterable[WikiPage] | str | Path, *, port: int = 0) -> None:
        if isinstance(pages, str | Path):
            pages = load_pages_jsonl(pages)
        items: list[tuple[str, WikiPage]] = (
            list(pages.items()) if isinstance(pages, Mapping) else [(p.title, p) for p in pages]
        )
        self._pages: dict[str, WikiPage] = {}  # canonical key -> page
        self._aliases: dict[str, str] = {}  # alias key -> canonical key
        for name, page in items:
            canonical = title_key(page.title)
            if not canonical:
                raise ValueError("a page needs a title")
            self._pages[canonical] = page
            for alias in (name, *page.aliases):
                key = title_key(alias)
                if key and key != canonical:
                    self._aliases[key] = canonical
        self._ids = {key: number for number, key in enumerate(sorted(self._pages), 1)}
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._faults: list[int] = []
        self.requests: list[str] = []
        self.delay = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running: use it as a context manager or call start()")
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> RecordedWikipedia:
        if self._server is not None:
            return self
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a client that gave up (timeout) closed its socket: nothing to report

        self._closing.clear()
        self._server = Server(("127.0.0.1", self._port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="recorded-wikipedia", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is None:
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> RecordedWikipedia:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ test hooks

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` (and a small JSON error body)."""
        with self._lock:
            self._faults.extend([status] * count)

    # ------------------------------------------------------------------ lookups

    def page(self, title: str) -> WikiPage | None:
        """The page with this title or alias, if any."""
        key = title_key(title)
        return self._pages.get(self._aliases.get(key, key))

    def search(self, query: str, limit: int = 10, *, titles_only: bool = False) -> list[WikiPage]:
        """Pages ranked by word overlap with ``query`` (titles weigh 3, extracts 1); title prefix matches first
        with ``titles_only``."""
        words = _words(query)
        prefix = normalize_title(query).casefold()
        scored = []
        for key, page in self._pages.items():
            title_words = _words(page.title)
            score = 3 * len(words & title_words)
            if titles_only:
                if prefix and page.title.casefold().startswith(prefix):
                    score += 100
            else:
                score += len(words & _words(page.extract))
                if normalize_title(page.title).casefold() == prefix:
                    score += 10
            if score > 0:
                scored.append((-score, page.title, key, page))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [page for _, _, _, page in scored[:limit]]

    # ------------------------------------------------------------------ HTTP

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(request.path)
            fault = self._faults.pop(0) if self._faults else None
        if self.delay > 0 and self._closing.wait(self.delay):
            return
        if fault is not None:
            self._send(request, fault, {"type": "about:blank", "title": "Injected failure", "status": fault})
            return
        parts = urlsplit(request.path)
        if parts.path.startswith(SUMMARY_PREFIX):
            self._summary(request, unquote(parts.path[len(SUMMARY_PREFIX) :]))
        elif parts.path in (SEARCH_PAGE, SEARCH_TITLE):
            self._search(request, parse_qs(parts.query), titles_only=parts.path == SEARCH_TITLE)
        else:
            self._send(request, 404, {"httpCode": 404, "httpReason": "Not Found", "messageTranslations": {}})

    def _summary(self, request: BaseHTTPRequestHandler, raw_title: str) -> None:
        key = title_key(raw_title)
        if key in self._aliases:
            location = SUMMARY_PREFIX + quote(self._aliases[key], safe="")
            self._send(request, 302, {"redirect": location}, headers={"Location": location})
            return
        page = self._pages.get(key)
        if page is None:
            body = {
                "type": "https://mediawiki.org/wiki/HyperSwitch/errors/not_found",
                "title": "Not found.",
                "method": "get",
                "detail": "Page or revision not found.",
                "uri": SUMMARY_PREFIX + quote(raw_title, safe=""),
            }
            self._send(request, 404, body)
            return
        self._send(request, 200, self._summary_body(key, page))

    def _summary_body(self, key: str, page: WikiPage) -> dict[str, Any]:
        url = f"{self.base_url}/wiki/{quote(key, safe='')}"
        return {
            "type": page.type,
            "title": page.title,
            "displaytitle": page.title,
            "titles": {"canonical": key, "normalized": normalize_title(page.title), "display": page.title},
            "pageid": self._ids[key],
            "lang": "en",
            "dir": "ltr",
            "description": page.description,
            "extract": page.extract,
            "content_urls": {"desktop": {"page": url}, "mobile": {"page": url}},
        }

    def _search(self, request: BaseHTTPRequestHandler, query: dict[str, list[str]], *, titles_only: bool) -> None:
        text = (query.get("q") or [""])[0]
        try:
            limit = int((query.get("limit") or ["10"])[0])
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            self._send(request, 400, {"httpCode": 400, "httpReason": "Bad Request", "messageTranslations": {}})
            return
        hits = self.search(text, limit, titles_only=titles_only) if text.strip() else []
        pages = [
            {
                "id": self._ids[title_key(p.title)],
                "key": title_key(p.title),
                "title": p.title,
                "excerpt": p.title if titles_only else p.extract[:200],
                "matched_title": None,
                "description": p.description or None,
                "thumbnail": None,
            }
            for p in hits
        ]
        self._send(request, 200, {"pages": pages})

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json; charset=utf-8")
            request.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(data)
        except OSError:  # the client went away (e.g. it timed out)
            return


__all__ = [
    "PAGE_TYPES",
    "RecordedWikipedia",
    "WikiPage",
    "load_pages_jsonl",
    "normalize_title",
    "pages_from_lamp",
    "pages_from_movie_descriptions",
    "title_key",
    "write_pages_jsonl",
]
