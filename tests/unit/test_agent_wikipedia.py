"""The Wikipedia tool's client against the recorded Wikipedia on loopback (hand-written pages, no internet)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from personalens._retry import RetryPolicy
from personalens.agent.wikipedia import WikipediaClient, WikipediaError, WikiResult, trim_extract
from personalens.agent.wikiserver import (
    RecordedWikipedia,
    WikiPage,
    load_pages_jsonl,
    normalize_title,
    pages_from_lamp,
    pages_from_movie_descriptions,
    title_key,
    write_pages_jsonl,
)
from personalens.data.lamp import LampExample, LampProfileEntry
from personalens.errors import DataError, PersonaLensError

PAGES = [
    WikiPage(
        "Solaris (1972 film)",
        "Solaris is a 1972 Soviet science fiction film by Andrei Tarkovsky. It is based on the novel by Stanisław Lem. "
        "A psychologist is sent to a space station orbiting an ocean planet.",
        "1972 film by Andrei Tarkovsky",
        aliases=("Solaris 1972",),
    ),
    WikiPage(
        "Solaris",
        "Solaris may refer to: Solaris (novel), a 1961 novel; Solaris (1972 film); Solaris (operating system).",
        "Topics referred to by the same term",
        "disambiguation",
    ),
    WikiPage(
        "Solaris (novel)",
        "Solaris is a 1961 philosophical science fiction novel by the Polish writer Stanisław Lem.",
        "1961 novel by Stanisław Lem",
    ),
    WikiPage("Tea", "Tea is an aromatic beverage prepared by pouring hot water over cured leaves.", "Drink"),
    WikiPage("Kettle", "Kettle may refer to: Kettle (appliance); Kettle (landform).", "", "disambiguation"),
    WikiPage("AC/DC", "AC/DC are an Australian rock band formed in Sydney in 1973.", "Australian rock band"),
]

FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


@pytest.fixture
def wiki() -> Iterator[RecordedWikipedia]:
    with RecordedWikipedia(PAGES) as server:
        yield server


def _client(server: RecordedWikipedia, **options: object) -> WikipediaClient:
    slept: list[float] = []
    options.setdefault("retry", FAST)
    client = WikipediaClient(server.base_url, sleep=slept.append, **options)  # type: ignore[arg-type]
    client.slept = slept  # type: ignore[attr-defined]
    return client


def test_direct_hit(wiki: RecordedWikipedia) -> None:
    with _client(wiki) as client:
        result = client.summary("Solaris (1972 film)")
    assert isinstance(result, WikiResult)
    assert result.title == "Solaris (1972 film)"
    assert result.description == "1972 film by Andrei Tarkovsky"
    assert result.extract.startswith("Solaris is a 1972 Soviet science fiction film")
    assert result.url == f"{wiki.base_url}/wiki/Solaris_%281972_film%29"
    assert (result.type, result.via_search, result.query) == ("standard", False, "Solaris (1972 film)")
    assert result.text().startswith("Solaris (1972 film) (1972 film by Andrei Tarkovsky): Solaris is")
    assert wiki.requests == ["/api/rest_v1/page/summary/Solaris_%281972_film%29"]


def test_title_normalisation_and_redirect(wiki: RecordedWikipedia) -> None:
    assert normalize_title("  tea__ party ") == "Tea party"
    assert title_key("solaris  (novel)") == "Solaris_(novel)"
    with _client(wiki) as client:
        lower_first = client.summary("tea")  # MediaWiki upper-cases the first letter only
        underscores = client.summary("solaris_(novel)")
        alias = client.summary("Solaris 1972")  # a redirect: 302 to the target's summary, followed
        slash = client.summary("AC/DC")  # "/" is encoded in the title, not a path separator
    assert lower_first is not None and lower_first.title == "Tea" and not lower_first.via_search
    assert underscores is not None and underscores.title == "Solaris (novel)" and not underscores.via_search
    assert alias is not None and alias.title == "Solaris (1972 film)" and not alias.via_search
    assert slash is not None and slash.title == "AC/DC"
    assert "/api/rest_v1/page/summary/AC%2FDC" in wiki.requests


def test_404_falls_back_to_search(wiki: RecordedWikipedia) -> None:
    with _client(wiki) as client:
        result = client.summary("tarkovsky space station film")
    assert result is not None
    assert (result.title, result.via_search, result.query) == (
        "Solaris (1972 film)",
        True,
        "tarkovsky space station film",
    )
    assert wiki.requests[0] == "/api/rest_v1/page/summary/tarkovsky_space_station_film"
    assert wiki.requests[1].startswith("/w/rest.php/v1/search/page?q=tarkovsky+space+station+film&limit=")
    assert wiki.requests[2] == "/api/rest_v1/page/summary/Solaris_%281972_film%29"


def test_disambiguation_resolves_to_an_article(wiki: RecordedWikipedia) -> None:
    with _client(wiki) as client:
        result = client.summary("Solaris")
    assert result is not None
    assert result.type == "standard" and result.via_search
    assert result.title in {"Solaris (1972 film)", "Solaris (novel)"}
    assert wiki.requests[0] == "/api/rest_v1/page/summary/Solaris"


def test_disambiguation_without_articles_is_returned_as_such(wiki: RecordedWikipedia) -> None:
    with _client(wiki) as client:
        result = client.summary("Kettle")
    assert result is not None
    assert result.is_disambiguation and result.title == "Kettle" and not result.via_search
    assert result.extract.startswith("Kettle may refer to:")


def test_nothing_found_is_none(wiki: RecordedWikipedia) -> None:
    with _client(wiki) as client:
        assert client.summary("qwxyz zzyzx") is None
        assert client.page_summary("Qwxyz") is None
        assert client.search("qwxyz") == []
        with pytest.raises(ValueError, match="empty"):
            client.summary("   ")


def test_server_error_then_success_is_retried(wiki: RecordedWikipedia) -> None:
    wiki.fail_next(2, status=503)
    with _client(wiki) as client:
        result = client.summary("Tea")
        assert result is not None and result.title == "Tea"
        assert len(client.slept) == 2  # type: ignore[attr-defined]
    assert wiki.requests == ["/api/rest_v1/page/summary/Tea"] * 3


def test_persistent_failure_raises_after_the_bound(wiki: RecordedWikipedia) -> None:
    wiki.fail_next(10, status=500)
    with _client(wiki) as client, pytest.raises(WikipediaError) as info:
        client.summary("Tea")
    assert isinstance(info.value, PersonaLensError)
    assert info.value.status == 500 and info.value.attempts == 3
    assert "failed after 3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert len(wiki.requests) == 3


def test_client_errors_are_not_retried(wiki: RecordedWikipedia) -> None:
    wiki.fail_next(1, status=403)
    with _client(wiki) as client, pytest.raises(WikipediaError) as info:
        client.summary("Tea")
    assert info.value.status == 403 and len(wiki.requests) == 1


def test_timeout_is_retried_then_raises(wiki: RecordedWikipedia) -> None:
    wiki.delay = 2.0
    with _client(wiki, timeout=0.2, retry=RetryPolicy(max_attempts=2, base_delay=0.0)) as client:
        with pytest.raises(WikipediaError, match="timed out") as info:
            client.summary("Tea")
    assert info.value.attempts == 2
    assert len(wiki.requests) == 2


def test_connection_refused_raises_wikipedia_error() -> None:
    with RecordedWikipedia(PAGES) as server:
        base = server.base_url
    client = WikipediaClient(base, retry=RetryPolicy(max_attempts=2, base_delay=0.0), sleep=lambda _: None)
    with client, pytest.raises(WikipediaError, match="after 2 attempts"):
        client.summary("Tea")


def test_extract_is_cut_at_a_sentence_end(wiki: RecordedWikipedia) -> None:
    with _client(wiki, max_chars=120) as client:
        result = client.summary("Solaris (1972 film)")
    assert result is not None
    assert result.extract == (
        "Solaris is a 1972 Soviet science fiction film by Andrei Tarkovsky. It is based on the novel by Stanisław Lem."
    )
    assert trim_extract("One two. Three four five six seven.", 12) == "One two."
    assert trim_extract("Short text", 50) == "Short text"
    assert trim_extract("no sentence end in this long line of words", 20) == "no sentence end in…"
    assert trim_extract("Line one.\n\nLine  two.", 100) == "Line one. Line two."
    assert len(trim_extract("x" * 100, 30)) <= 30


def test_cache_hit_makes_no_request(wiki: RecordedWikipedia) -> None:
    with _client(wiki, cache_size=2) as client:
        first = client.summary("Tea")
        count = len(wiki.requests)
        assert client.summary("tea") == first  # same normalised title
        assert client.summary("qwxyz") is None
        count_after_miss = len(wiki.requests)
        assert client.summary("qwxyz") is None  # "nothing found" is cached too
        assert len(wiki.requests) == count_after_miss
        assert count_after_miss > count
        assert (client.hits, client.misses) == (2, 2)
        client.summary("AC/DC")  # evicts "Tea", the least recently used
        before = len(wiki.requests)
        client.summary("Tea")
        assert len(wiki.requests) == before + 1


def test_mock_transport_and_user_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"type": "standard", "title": "Tea", "extract": "Tea is a drink.", "description": "Drink"}
        return httpx.Response(200, json=body)

    client = WikipediaClient(transport=httpx.MockTransport(handler), user_agent="tests/1.0 (me@example.org)")
    with client:
        result = client.summary("Tea")
    assert result is not None and result.extract == "Tea is a drink." and result.url == ""
    assert seen[0].url == "https://en.wikipedia.org/api/rest_v1/page/summary/Tea"
    assert seen[0].headers["user-agent"] == "tests/1.0 (me@example.org)"


def test_garbled_body_is_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(200, content=b"{not json")
        return httpx.Response(200, json={"type": "standard", "title": "Tea", "extract": "Tea."})

    with WikipediaClient(transport=httpx.MockTransport(handler), retry=FAST, sleep=lambda _: None) as client:
        result = client.summary("Tea")
    assert result is not None and result.title == "Tea" and len(calls) == 2


def test_pages_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    write_pages_jsonl(PAGES, path)
    assert load_pages_jsonl(path) == PAGES
    with RecordedWikipedia(path) as server, _client(server) as client:
        result = client.summary("Solaris 1972")
        assert result is not None and result.title == "Solaris (1972 film)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"title": "A", "extract": "a"}) + "\n" + json.dumps({"title": "B", "extract": 3}) + "\n")
    with pytest.raises(DataError) as info:
        load_pages_jsonl(bad)
    assert (info.value.path, info.value.line, info.value.field) == (str(bad), 2, "extract")
    bad.write_text(json.dumps({"title": "A", "extract": "a", "type": "list"}) + "\n")
    with pytest.raises(DataError, match="type must be one of"):
        load_pages_jsonl(bad)


def test_search_endpoints_rank_by_title_then_extract(wiki: RecordedWikipedia) -> None:
    titles = [p.title for p in wiki.search("Solaris novel")]
    assert titles[0] == "Solaris (novel)"
    assert [p.title for p in wiki.search("Solaris", titles_only=True)][:1] == ["Solaris"]
    assert [p.title for p in wiki.search("Polish writer")] == ["Solaris (novel)"]  # extract words only
    response = httpx.get(f"{wiki.base_url}/w/rest.php/v1/search/title", params={"q": "sol", "limit": "2"})
    assert response.status_code == 200
    assert [p["title"] for p in response.json()["pages"]] == ["Solaris", "Solaris (1972 film)"]
    assert httpx.get(f"{wiki.base_url}/w/rest.php/v1/search/page", params={"q": "x", "limit": "0"}).status_code == 400
    assert httpx.get(f"{wiki.base_url}/elsewhere").status_code == 404


def test_pages_from_movie_descriptions_and_lamp_examples() -> None:
    descriptions = [
        "Solaris (1972). Genres: Drama, Sci-Fi. Director: Andrei Tarkovsky.",
        "Solaris (2002). Genres: Drama, Romance, Sci-Fi.",
        "Stalker (1979). Genres: Drama, Sci-Fi.",
        "no year here",
    ]
    pages = {p.title: p for p in pages_from_movie_descriptions(descriptions)}
    assert set(pages) == {"Solaris", "Solaris (1972 film)", "Solaris (2002 film)", "Stalker"}
    assert pages["Solaris"].type == "disambiguation"
    assert pages["Stalker"].description == "1979 film" and "Stalker (1979 film)" in pages["Stalker"].aliases
    entry = LampProfileEntry("1", {"tag": "classic", "description": descriptions[2]})
    example = LampExample("q", "Pick a tag. tags: [classic] description: " + descriptions[0], (entry,), "classic")
    assert {p.title for p in pages_from_lamp([example])} == {"Solaris", "Stalker"}
    with RecordedWikipedia(pages.values()) as server, _client(server) as client:
        stalker = client.summary("Stalker (1979 film)")
        assert stalker is not None and stalker.title == "Stalker"
