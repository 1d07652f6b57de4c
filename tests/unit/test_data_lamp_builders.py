"""LaMP-like task builders (Amazon ratings → LaMP-3, HetRec tags → LaMP-2M) on small files the tests write themselves,
the official-format writer, and the ``personalens data lamp-like`` command."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from personalens.cli import app
from personalens.data.lamp import LampExample, LampProfileEntry, lamp_to_dataset, load_lamp
from personalens.data.lamp_builders import (
    LAMP2M_INSTRUCTION,
    LAMP2M_TAGS,
    LAMP3_INSTRUCTION,
    LampBuild,
    Movie,
    build_lamp2m_hetrec,
    build_lamp3_amazon,
    movie_description,
    tag_match_counts,
    write_lamp,
)
from personalens.errors import DataError

DAY = 86_400_000  # ms
T0 = 1_600_000_000_000  # 2020-09-13T12:26:40Z


# --------------------------------------------------------------------------------------------------- Amazon fixture


def _review(asin: str, rating: Any, ms: int, text: str = "", **extra: Any) -> dict[str, Any]:
    body = {
        "parent_asin": asin,
        "rating": rating,
        "timestamp_ms": ms,
        "review_excerpt": text[:20],
        "review_full": text or f"Review of {asin}.",
        "review_title": f"About {asin}",
        "product": {"title": f"Product {asin}", "brand": None, "price": None, "main_category": "X"},
    }
    body.update(extra)
    return body


def _record(user: str, category: str, history: list[dict[str, Any]], heldout: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": user, "category": category, "history": history, "heldout": heldout}


def _jsonl(path: Path, rows: Sequence[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _amazon(tmp_path: Path, *, training: list[Any] | None = None, test: list[Any] | None = None) -> Path:
    directory = tmp_path / "amazon"
    directory.mkdir(exist_ok=True)
    if training is None:
        training = [
            # user A in two categories (two records), interleaved in time
            _record(
                "A",
                "Books",
                [_review(f"b{i}", 4.0, T0 + i * DAY) for i in range(4)],
                _review("b9", 5.0, T0 + 10 * DAY, "Loved this book, five stars."),
            ),
            _record(
                "A",
                "Toys",
                [_review(f"t{i}", 2.0, T0 + i * DAY + 3600_000) for i in range(4)],
                _review("t9", 1.0, T0 + 20 * DAY, "Broke on day one."),
            ),
            _record(
                "B", "Books", [_review(f"c{i}", 3, T0 + i * DAY) for i in range(4)], _review("c9", 3, T0 + 9 * DAY)
            ),
        ]
    if test is None:
        test = [
            _record("C", "Toys", [_review(f"d{i}", 5, T0 + i * DAY) for i in range(4)], _review("d9", 4, T0 + 5 * DAY))
        ]
    _jsonl(directory / "training.jsonl", training)
    # user A again, in another category and another file, before everything else
    music = [_review(f"m{i}", 3, T0 - (10 - i) * DAY) for i in range(4)]
    _jsonl(directory / "validation.jsonl", [_record("A", "Music", music, _review("m9", 2, T0 - 5 * DAY))])
    _jsonl(directory / "test.jsonl", test)
    return directory


def test_amazon_user_mode_merges_records_in_time_order(tmp_path: Path) -> None:
    build = build_lamp3_amazon(_amazon(tmp_path))
    assert build.task == "LaMP_3"
    by_id = {x.id: x for x in build.examples}
    assert sorted(by_id) == ["A_0", "B_0", "C_0"]
    a = by_id["A_0"]
    assert a.output == "1" and a.task == "LaMP_3"
    assert a.input == f"{LAMP3_INSTRUCTION} review: Broke on day one."
    # every other review of A, across all three records and two files, oldest first; earlier held-out reviews too
    music = ["m0", "m1", "m2", "m3", "m9"]
    assert [e.id for e in a.profile] == [*music, "b0", "t0", "b1", "t1", "b2", "t2", "b3", "t3", "b9"]
    assert [e.get("score") for e in a.profile][-1] == "5"
    assert a.profile[5].fields == {"text": "Review of b0.", "score": "4", "date": "2020-09-13T12:26:40"}
    assert a.profile[5].date == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    dates = [e.date for e in a.profile]
    assert dates == sorted(dates)
    assert build.time_order_violations() == []
    assert all(e.date < build.query_dates[x.id] for x in build.examples for e in x.profile)  # type: ignore[operator]
    stats = build.stats
    assert (stats["users"], stats["examples"], stats["source_users"]) == (3, 3, 3)
    assert stats["users_in_several_records"] == 1 and stats["users_in_several_files"] == 1
    assert stats["records"] == {"training.jsonl": 3, "validation.jsonl": 1, "test.jsonl": 1}
    assert stats["time_order_violations"] == 0 and stats["profile_size"]["max"] == 14
    assert stats["labels"] == {"1": 1, "3": 1, "4": 1}
    assert stats["skipped"] == {}


def test_amazon_record_mode_and_several_queries(tmp_path: Path) -> None:
    directory = _amazon(tmp_path)
    records = build_lamp3_amazon(directory, unit="record")
    assert [x.id for x in records.examples] == ["A_Books", "A_Toys", "A_Music", "B_Books", "C_Toys"]
    assert [e.id for e in records.examples[1].profile] == ["t0", "t1", "t2", "t3"]
    assert records.stats["users"] == 3 and records.stats["examples"] == 5
    with pytest.raises(ValueError, match="test_per_user must be 1"):
        build_lamp3_amazon(directory, unit="record", test_per_user=2)

    two = build_lamp3_amazon(directory, test_per_user=2, min_profile=3)
    a = [x for x in two.examples if x.id.startswith("A_")]
    assert [x.output for x in a] == ["5", "1"]  # the last two reviews, oldest first
    assert a[0].profile == a[1].profile and len(a[0].profile) == 13
    assert two.time_order_violations() == []


def test_amazon_ties_non_integer_ratings_and_min_profile(tmp_path: Path) -> None:
    no_text = {"review_full": "", "review_excerpt": None, "review_title": " "}
    training = [
        # a3 has the held-out review's very time: the record breaks its own order; a3 is dropped and counted
        _record(
            "A",
            "Books",
            [
                _review("a0", 4, T0),
                _review("a1", 4.5, T0 + DAY),  # half stars: skipped
                _review("a2", 3, T0 + 2 * DAY),
                _review("a3", 2, T0 + 3 * DAY + 900),
            ],
            _review("a9", 5, T0 + 3 * DAY + 900),
        ),
        # B's held-out rating is unusable, so B's latest usable review becomes the query
        _record("B", "Books", [_review(f"b{i}", 5, T0 + i * DAY) for i in range(4)], _review("b9", 3.5, T0 + 9 * DAY)),
        # C has no usable review at all
        _record("C", "Books", [_review(f"c{i}", 5, T0 + i * DAY, **no_text) for i in range(4)], _review("c9", 6, T0)),
    ]
    directory = _amazon(tmp_path, training=training)
    build = build_lamp3_amazon(directory, files=("training.jsonl",), min_profile=2)
    assert [x.id for x in build.examples] == ["A_0", "B_0"]
    assert [e.id for e in build.examples[0].profile] == ["a0", "a2"]
    assert [e.id for e in build.examples[1].profile] == ["b0", "b1", "b2"] and build.examples[1].output == "5"
    assert build.stats["skipped"] == {
        "heldout_rating_not_1_to_5": 2,
        "history_rating_not_1_to_5": 1,
        "history_without_text": 4,
        "profile_not_before_query": 1,
    }
    assert build.stats["record_time_order_violations"] == 1
    strict = build_lamp3_amazon(directory, files=("training.jsonl",), min_profile=3)
    assert [x.id for x in strict.examples] == ["B_0"] and strict.stats["skipped"]["too_few_profile_entries"] == 1
    records = build_lamp3_amazon(directory, files=("training.jsonl",), unit="record", min_profile=2)
    assert [x.id for x in records.examples] == ["A_Books"]
    assert [e.id for e in records.examples[0].profile] == ["a0", "a2"]


def test_amazon_max_users_is_deterministic(tmp_path: Path) -> None:
    training = [
        _record(
            u, "Books", [_review(f"{u}{i}", 4, T0 + i * DAY) for i in range(4 + n)], _review(f"{u}9", 5, T0 + 50 * DAY)
        )
        for n, u in enumerate("PQRST")
    ]
    directory = _amazon(tmp_path, training=training)
    longest = build_lamp3_amazon(directory, files=("training.jsonl",), max_users=2)
    assert [x.id for x in longest.examples] == ["S_0", "T_0"] and longest.stats["user_selection"] == "longest profiles"
    sampled = [build_lamp3_amazon(directory, files=("training.jsonl",), max_users=3, seed=7).examples for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 3
    with pytest.raises(ValueError, match="max_users"):
        build_lamp3_amazon(directory, max_users=0)


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ('{"user_id": "A", "category": "X", "history": []}', "heldout", "missing key"),
        (
            json.dumps(_record("A", "X", [_review("a", "four", T0)], _review("b", 4, T0 + 1))),
            "history[0].rating",
            "not a number",
        ),
        (json.dumps(_record("A", "X", [], _review("b", 4, "yesterday"))), "heldout.timestamp_ms", "milliseconds"),
        (json.dumps(_record("A", "X", [7], _review("b", 4, T0))), "history[0]", "expected a JSON object"),
        (
            json.dumps(_record("A", "X", [], _review("b", 4, T0, review_full=["x"]))),
            "heldout.review_full",
            "string or null",
        ),
        (json.dumps(_record(None, "X", [], _review("b", 4, T0))), "user_id", "missing value"),
        ('{"user_id": "A", ', None, "malformed JSON"),
    ],
)
def test_amazon_malformed_lines_name_file_line_and_field(
    tmp_path: Path, line: str, field: str | None, reason: str
) -> None:
    directory = _amazon(tmp_path)
    path = directory / "test.jsonl"
    good = json.dumps(_record("Z", "X", [_review("z", 4, T0)], _review("y", 4, T0 + DAY)))
    path.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=reason) as info:
        build_lamp3_amazon(directory)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)


# --------------------------------------------------------------------------------------------------- HetRec fixture

MOVIES_HEADER = "id\ttitle\timdbID\tspanishTitle\timdbPictureURL\tyear\trtID"


def _tsv(path: Path, header: str, rows: Sequence[Sequence[Any]], encoding: str = "utf-8") -> None:
    text = header + "\n" + "".join("\t".join(str(v) for v in row) + "\n" for row in rows)
    path.write_bytes(text.encode(encoding))


def _hetrec(tmp_path: Path, assignments: Sequence[tuple[int, int, int, int]], *, movies: int = 30) -> Path:
    """HetRec files: tags 1..N (see TAGS), movies 1..movies, and the given (user, movie, tag, seconds) rows."""
    directory = tmp_path / "hetrec"
    directory.mkdir(exist_ok=True)
    tag_rows = [(i, t) for i, t in TAGS.items()]
    _tsv(directory / "tags.dat", "id\tvalue", tag_rows)
    with (directory / "tags.dat").open("ab") as handle:  # a Latin-1 line among UTF-8 ones, as in the real file
        handle.write("99\tmist\xe9rio\n".encode("latin-1"))
    movie_rows = [
        (m, f"Film {m}", f"{m:07d}", f"Película {m}", "http://x", 1990 + m % 10, f"film_{m}")
        for m in range(1, movies + 1)
    ]
    movie_rows[0] = (1, "Amélie", "0211915", "Amélie", "http://x", 2001, "amelie")
    _tsv(directory / "movies.dat", MOVIES_HEADER, movie_rows, "latin-1")
    _tsv(
        directory / "movie_genres.dat",
        "movieID\tgenre",
        [(m, g) for m in range(1, movies + 1) for g in ("Drama", "Comedy")],
    )
    _tsv(
        directory / "movie_directors.dat",
        "movieID\tdirectorID\tdirectorName",
        [(1, "jpj", "Jean-Pierre Jeunet")],
        "latin-1",
    )
    _tsv(directory / "movie_countries.dat", "movieID\tcountry", [(1, "France"), (2, "")])
    rows = [(u, m, t, s * 1000) for u, m, t, s in assignments]
    _tsv(directory / "user_taggedmovies-timestamps.dat", "userID\tmovieID\ttagID\tunixTimeStamp", rows)
    return directory


TAGS = {
    1: " Sci-Fi ",  # case and spaces: an exact match after normalisation
    2: "scifi",  # synonym of sci-fi
    3: "classic",
    4: "comedy",
    5: "funny",  # not a LaMP tag
    6: "adapted from:book",  # synonym of based on a book
    7: "dystopia",
    8: "twist ending",
    9: "sequelto:casino royale[2006]",  # brackets: never a label in a list
}
S0 = 1_200_000_000


def _timeline(
    user: int, tags: Sequence[int], start: int = S0, step: int = 100, first_movie: int = 1
) -> list[tuple[int, int, int, int]]:
    return [(user, first_movie + i, tag, start + i * step) for i, tag in enumerate(tags)]


def test_hetrec_tag_restriction_synonyms_and_time_order(tmp_path: Path) -> None:
    # user 1: 6 LaMP-tagged movies (one only through a synonym) and one "funny" movie; user 2: too few
    rows = _timeline(1, [1, 3, 5, 4, 2, 7, 8]) + _timeline(2, [3, 4], first_movie=20)
    directory = _hetrec(tmp_path, rows)
    build = build_lamp2m_hetrec(directory, min_profile=5)
    assert build.task == "LaMP_2"
    assert [x.id for x in build.examples] == ["1-7"]
    example = build.examples[0]
    assert example.output == "twist ending"
    assert [(e.id, e.get("tag")) for e in example.profile] == [
        ("1", "sci-fi"),
        ("2", "classic"),
        ("4", "comedy"),
        ("5", "sci-fi"),
        ("6", "dystopia"),
    ]
    assert [e.get("date") for e in example.profile][:2] == ["2008-01-10T21:20:00", "2008-01-10T21:21:40"]
    assert all(e.date < build.query_dates[example.id] for e in example.profile)  # type: ignore[operator]
    assert example.input.startswith(
        f"{LAMP2M_INSTRUCTION} tags: [{', '.join(LAMP2M_TAGS)}] description: Film 7 (1997)."
    )
    assert build.stats["skipped"]["too_few_profile_entries"] == 1

    exact = build_lamp2m_hetrec(directory, min_profile=4, synonyms=False)
    assert [e.get("tag") for e in exact.examples[0].profile] == ["sci-fi", "classic", "comedy", "dystopia"]

    counts = tag_match_counts([("1", "1", "sci-fi"), ("1", "2", "scifi"), ("2", "3", "funny"), ("2", "4", "classic")])
    assert counts["exact"]["assignments"] == 2 and counts["with_synonyms"]["assignments"] == 3
    assert counts["with_synonyms"]["users"] == 2 and counts["synonym_hits"] == {"scifi": 1}
    matching = build.stats["tag_matching"]
    assert matching["assignments"] == 9 and matching["exact"]["assignments"] == 7
    assert matching["with_synonyms"]["assignments"] == 8 and matching["synonym_hits"] == {"scifi": 1}
    assert matching["exact"]["users"] == 2 and matching["with_synonyms"]["user_movie_pairs"] == 8


def test_hetrec_earliest_tag_rule_and_ties(tmp_path: Path) -> None:
    rows = _timeline(1, [3, 3, 3, 3, 3])  # movies 1..5 "classic"
    rows += [(1, 1, 4, S0 - 50)]  # movie 1 also "comedy", earlier: comedy wins
    rows += [
        (1, 2, 1, S0 + 100)
    ]  # movie 2 also "sci-fi" at the same second as "classic": sci-fi is first in LaMP order
    rows += [(1, 9, 7, S0 + 1000)]  # the query
    build = build_lamp2m_hetrec(_hetrec(tmp_path, rows), min_profile=5)
    profile = build.examples[0].profile
    assert [(e.id, e.get("tag")) for e in profile] == [
        ("1", "comedy"),
        ("2", "sci-fi"),
        ("3", "classic"),
        ("4", "classic"),
        ("5", "classic"),
    ]
    assert profile[0].get("date") == "2008-01-10T21:19:10"
    assert build.stats["notes"]["pairs_with_several_allowed_tags"] == 2


def test_hetrec_same_second_as_query_is_not_profile(tmp_path: Path) -> None:
    rows = _timeline(1, [3, 3, 3, 4]) + [(1, 8, 3, S0 + 300)]  # movies 4 and 8 tagged in the same second
    build = build_lamp2m_hetrec(_hetrec(tmp_path, rows), min_profile=3)
    assert [x.id for x in build.examples] == ["1-8"]
    assert [e.id for e in build.examples[0].profile] == ["1", "2", "3"]
    assert build.stats["skipped"]["profile_not_before_query"] == 1
    assert build.stats["time_order_violations"] == 0


def test_hetrec_min_profile_max_users_and_test_per_user(tmp_path: Path) -> None:
    rows = _timeline(1, [3] * 12) + _timeline(2, [4] * 11, first_movie=5) + _timeline(3, [7] * 8)
    directory = _hetrec(tmp_path, rows)
    default = build_lamp2m_hetrec(directory)  # min_profile 10
    assert [x.id for x in default.examples] == ["1-12", "2-15"]
    assert default.stats["skipped"]["too_few_profile_entries"] == 1
    assert [x.id for x in build_lamp2m_hetrec(directory, max_users=1).examples] == ["1-12"]
    two = build_lamp2m_hetrec(directory, test_per_user=2, min_profile=6)
    assert [x.id for x in two.examples] == ["1-11", "1-12", "2-14", "2-15", "3-7", "3-8"]
    assert len(two.examples[0].profile) == 10 and two.examples[0].profile == two.examples[1].profile


def test_hetrec_frequent_labels_come_from_before_the_queries(tmp_path: Path) -> None:
    # user 1 tags with "funny" (5) a lot and "classic" (3) less; the last movie's tag decides whether it is a query
    rows = _timeline(1, [5, 5, 5, 3, 5, 3, 5, 5, 3, 5, 5, 3]) + [(1, 30, 5, S0 + 5000), (1, 30, 8, S0 + 5000)]
    rows += _timeline(2, [5, 3, 5, 3, 5, 3, 5, 3, 5, 3, 5], first_movie=10) + [(2, 21, 8, S0 + 9000)]
    rows += [(1, m, 9, S0 + 1 + m) for m in range(1, 6)]  # user 1's second most used tag, but it cannot be listed
    build = build_lamp2m_hetrec(_hetrec(tmp_path, rows), labels="frequent", top_n=2)
    assert [x.id for x in build.examples] == ["1-30"]
    example = build.examples[0]
    assert example.output == "funny"  # movie 30 has "funny" and "twist ending" at once: funny is in the label set
    assert "tags: [funny, classic] description:" in example.input
    assert {e.get("tag") for e in example.profile} == {"funny", "classic"}
    # user 2's last movie is tagged only "twist ending", which never appeared before: no question, counted
    assert build.stats["skipped"]["query_tag_not_in_labels"] == 1
    assert build.stats["options"]["top_n"] == 2


def _ml1m(tmp_path: Path) -> tuple[Path, Path]:
    movies = tmp_path / "ml1m_movies.dat"
    movies.write_bytes(
        "1::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
        "3::Film 3, The (1993)::Drama|Comedy\n"
        "5::Another Film (1950)::Drama\n".encode("latin-1")
    )
    items = tmp_path / "item.csv"
    items.write_text(
        "id,title,genre,description\n"
        "0,Amélie,Comedy|Romance,<Amélie> is a whimsical romantic comedy set in Paris.\n"
        "1,The Film 3,Drama|Comedy,A family drama.\n"
        '2,Something else,Horror,"Row that does not match line 3, so it is not used."\n',
        encoding="utf-8",
    )
    return movies, items


def test_hetrec_descriptions_with_and_without_yulan(tmp_path: Path) -> None:
    rows = [(1, 1, 3, S0), (1, 2, 4, S0 + 100), (1, 3, 7, S0 + 200), (1, 5, 8, S0 + 300)]
    directory = _hetrec(tmp_path, rows)
    plain = build_lamp2m_hetrec(directory, min_profile=3)
    first = plain.examples[0].profile[0]
    assert (
        first.get("description")
        == "Amélie (2001). Genres: Drama, Comedy. Director: Jean-Pierre Jeunet. Country: France."
    )
    assert plain.examples[0].profile[1].get("description") == "Film 2 (1992). Genres: Drama, Comedy."
    assert plain.stats["notes"]["latin1_fallback_lines"] >= 2  # movies.dat line 2 and the Latin-1 tag

    movies, items = _ml1m(tmp_path)
    rich = build_lamp2m_hetrec(directory, min_profile=3, descriptions=items, ml1m_movies=movies)
    profile = rich.examples[0].profile
    assert profile[0].get("description") == (
        "Amélie (2001). Genres: Drama, Comedy. Director: Jean-Pierre Jeunet. Country: France. "
        "Amélie is a whimsical romantic comedy set in Paris."
    )
    # movie 3: HetRec says 1993 and MovieLens agrees, so HetRec's title stays; the description is appended
    assert profile[2].get("description") == "Film 3 (1993). Genres: Drama, Comedy. A family drama."
    assert rich.stats["notes"]["descriptions"] == {"rows": 3, "rows_not_matching_ml1m": 1, "movies_described": 2}
    # movie 5: HetRec says 1995, MovieLens 1950: another film's metadata; MovieLens title and year are used instead
    query = rich.examples[0]
    assert query.input.endswith("description: Another Film (1950). Genres: Drama, Comedy.")
    assert rich.stats["notes"]["metadata_corrected_movies"] == 1
    assert rich.stats["movies_used_with_corrected_metadata"] == 1
    with pytest.raises(ValueError, match="ml1m_movies"):
        build_lamp2m_hetrec(directory, descriptions=items)
    assert movie_description(Movie("7", "", None)) == "Movie 7."


@pytest.mark.parametrize(
    ("name", "text", "line", "field", "reason"),
    [
        (
            "user_taggedmovies-timestamps.dat",
            "userID\tmovieID\ttagID\tunixTimeStamp\n1\t2\t3\tsoon\n",
            2,
            "unixTimeStamp",
            "not an integer",
        ),
        (
            "user_taggedmovies-timestamps.dat",
            "userID\tmovieID\ttagID\tunixTimeStamp\n1\t2\t3\n",
            2,
            "unixTimeStamp",
            "expected 4 fields",
        ),
        (
            "user_taggedmovies-timestamps.dat",
            "userID\tmovieID\ttagID\twhen\n1\t2\t3\t4\n",
            1,
            "unixTimeStamp",
            "missing required",
        ),
        (
            "user_taggedmovies-timestamps.dat",
            "userID\tmovieID\tunixTimeStamp\n1\t2\t3\n",
            1,
            "tagID",
            "missing required",
        ),
        ("movies.dat", MOVIES_HEADER + "\n1\tA\t1\tA\tx\tnineteen\ta\n", 2, "year", "not an integer"),
        ("tags.dat", "id\tvalue\n1\ta\n1\tb\n", 3, "id", "duplicate tag id"),
        ("movie_genres.dat", "movieID\tgenre\n\tDrama\n", 2, "movieID", "missing value"),
    ],
)
def test_hetrec_malformed_lines_name_file_line_and_field(
    tmp_path: Path, name: str, text: str, line: int, field: str, reason: str
) -> None:
    directory = _hetrec(tmp_path, _timeline(1, [3] * 12))
    (directory / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=reason) as info:
        build_lamp2m_hetrec(directory)
    assert (info.value.path, info.value.line, info.value.field) == (str(directory / name), line, field)


def test_hetrec_missing_required_file(tmp_path: Path) -> None:
    directory = _hetrec(tmp_path, _timeline(1, [3] * 12))
    (directory / "tags.dat").unlink()
    with pytest.raises(DataError, match="file not found"):
        build_lamp2m_hetrec(directory)


# --------------------------------------------------------------------------------------------------- writer


def test_writer_round_trip_through_load_lamp(tmp_path: Path) -> None:
    amazon = build_lamp3_amazon(_amazon(tmp_path))
    hetrec = build_lamp2m_hetrec(_hetrec(tmp_path, _timeline(1, [1, 3, 4, 7, 8, 2, 6])), min_profile=3)
    for build in (amazon, hetrec):
        questions, outputs = tmp_path / f"{build.task}_q.json", tmp_path / f"{build.task}_o.json"
        write_lamp(build.examples, questions, outputs)
        assert load_lamp(questions, outputs) == build.examples
        assert json.loads(outputs.read_text())["task"] == build.task
    raw = json.loads((tmp_path / "LaMP_3_q.json").read_text())
    assert set(raw[0]) == {"id", "input", "profile"} and set(raw[0]["profile"][0]) == {"id", "text", "score", "date"}
    raw2 = json.loads((tmp_path / "LaMP_2_q.json").read_text())
    assert set(raw2[0]["profile"][0]) == {"id", "tag", "description", "date"}
    dataset = lamp_to_dataset(load_lamp(tmp_path / "LaMP_2_q.json", tmp_path / "LaMP_2_o.json"))
    assert dataset.meta["task"] == "LaMP_2" and dataset.items["1"].fields["description"].startswith("Amélie (2001).")
    ratings = lamp_to_dataset(load_lamp(tmp_path / "LaMP_3_q.json"))
    assert ratings.rating_scale == (1.0, 5.0, 1.0)


def test_writer_checks_ids_outputs_and_task(tmp_path: Path) -> None:
    entry = LampProfileEntry("p", {"text": "t", "score": "3", "date": "2020-01-01"})
    a = LampExample("1", "q", (entry,), "3", "LaMP_3")
    with pytest.raises(ValueError, match="duplicate example id '1'"):
        write_lamp([a, a], tmp_path / "q.json", tmp_path / "o.json")
    with pytest.raises(ValueError, match="no gold output"):
        write_lamp([LampExample("2", "q", (entry,))], tmp_path / "q.json", tmp_path / "o.json")
    with pytest.raises(ValueError, match="pass task"):
        write_lamp([a, LampExample("2", "q", (entry,), "4", "LaMP_2")], tmp_path / "q.json", tmp_path / "o.json")
    write_lamp([LampExample("2", "q", (entry,), "4")], tmp_path / "q.json", tmp_path / "o.json", task="LaMP_3")
    assert load_lamp(tmp_path / "q.json", tmp_path / "o.json")[0].task == "LaMP_3"
    write_lamp([LampExample("3", "q", (entry,))], tmp_path / "only.json")  # questions only: no gold needed
    assert load_lamp(tmp_path / "only.json")[0].output is None
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="no examples"):
        write_lamp([], tmp_path / "q.json")
    empty = LampBuild("LaMP_3", [])
    with pytest.raises(ValueError, match="no examples"):
        empty.write(tmp_path / "out")


# --------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, ["--json", "data", "lamp-like", *args])
        assert result.exit_code == code, result.output + repr(result.exception)
        return json.loads(result.output) if code == 0 else result.output

    return run


def test_cli_lamp_like(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out3"
    stats = cli("amazon-ratings", str(_amazon(tmp_path)), "--out", str(out), "--max-users", "2")
    assert stats["users"] == 2 and stats["task"] == "LaMP_3"
    assert stats["written"]["questions"] == str(out / "questions.json")
    assert json.loads((out / "stats.json").read_text())["examples"] == 2
    assert len(load_lamp(out / "questions.json", out / "outputs.json")) == 2

    out2 = tmp_path / "out2"
    directory = _hetrec(tmp_path, _timeline(1, [3, 4, 7, 8, 1]))
    stats = cli("hetrec-tags", str(directory), "--out", str(out2), "--min-profile", "3", "--labels", "lamp15")
    assert stats["task"] == "LaMP_2" and stats["examples"] == 1
    assert load_lamp(out2 / "questions.json", out2 / "outputs.json")[0].output == "sci-fi"

    assert "choose one of" in cli("movies", str(directory), "--out", str(out2), code=2)
    assert "hetrec-tags only" in cli(
        "amazon-ratings", str(directory), "--out", str(out2), "--labels", "frequent", code=2
    )
    assert "no examples" in cli("hetrec-tags", str(directory), "--out", str(out2), "--min-profile", "50", code=2)
    assert "labels must be" in cli("hetrec-tags", str(directory), "--out", str(out2), "--labels", "mine", code=2)


# --------------------------------------------------------------------------------------------------- real data

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "hetrec2011-tags").is_dir(), reason="the shared research data is not on this machine")
def test_real_data_builds(tmp_path: Path) -> None:
    """Invariants on the real files with default settings. Measured on the shared copies: Amazon 354 users / 354
    questions; HetRec with LaMP-2M's 15 tags 43 users (33 without synonyms; 90 with min_profile=5), so fewer than 50;
    HetRec with each user's frequent tags 125 users."""
    amazon = build_lamp3_amazon(SHARED / "amazon2023-reviews-mini")
    lamp15 = build_lamp2m_hetrec(SHARED / "hetrec2011-tags")
    frequent = build_lamp2m_hetrec(SHARED / "hetrec2011-tags", labels="frequent")
    assert amazon.stats["users"] >= 50 and frequent.stats["users"] >= 50
    assert lamp15.stats["users"] >= 40  # below the 50 hoped for: see the docstring
    for build in (amazon, lamp15, frequent):
        assert build.time_order_violations() == []
        assert len({x.id for x in build.examples}) == len(build.examples)
        assert all(len(x.profile) >= build.stats["options"]["min_profile"] for x in build.examples)
    assert {x.output for x in amazon.examples} <= {"1", "2", "3", "4", "5"}
    assert {x.output for x in lamp15.examples} <= set(LAMP2M_TAGS)
    for example in frequent.examples:
        listed = example.input.split("tags: [", 1)[1].split("] description:", 1)[0].split(", ")
        assert example.output in listed and {e.get("tag") for e in example.profile} <= set(listed)
    write_lamp(lamp15.examples, tmp_path / "q.json", tmp_path / "o.json")
    assert load_lamp(tmp_path / "q.json", tmp_path / "o.json") == lamp15.examples
