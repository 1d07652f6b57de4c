"""LaMP-like tasks built from real data, written in the official LaMP JSON format.

The official LaMP files are not available everywhere, so two builders make tasks of the same shape from public data
and :func:`write_lamp` writes them as ``questions.json`` / ``outputs.json`` that
:func:`~personalens.data.lamp.load_lamp` reads back unchanged. Evaluators read only the official format, so a real
LaMP file can replace a built one.

**LaMP-3-like (product rating)**: :func:`build_lamp3_amazon` reads the Amazon Reviews 2023 mini histories
(``training.jsonl``, ``validation.jsonl``, ``test.jsonl``; one record = one user in one category with four past
reviews and one held-out review). The same user appears in several records (one per category, sometimes in different
files), so by default (``unit="user"``) all of a user's reviews are merged into one time line: the last
``test_per_user`` reviews are the queries and every review strictly earlier than the first query is the profile (one
LaMP question per query, all with that profile). ``unit="record"`` keeps one question per record instead (its four
history reviews as the profile, its held-out review as the query); the same user then appears in several questions.
Profile entries are ``{"id": parent_asin, "text", "score": "1".."5", "date"}``; the gold output is the rating as
``"1".."5"``. Reviews whose rating is not a whole number from 1 to 5 are skipped and counted.

**LaMP-2M-like (movie tagging)**: :func:`build_lamp2m_hetrec` reads the HetRec 2011 MovieLens tag assignments. One
(user, movie) pair is one example with one tag: when a user gave a movie several allowed tags, the earliest is kept
(at equal times the first in the label order). With ``labels="lamp15"`` (default) the allowed tags are LaMP-2M's 15
tags (:data:`LAMP2M_TAGS`), matched case-insensitively after trimming, plus the short synonym map
:data:`TAG_SYNONYMS` (``synonyms=False`` turns it off). Per user, the pairs with an allowed tag are ordered by time
(the time of the kept tag, then the movie id); the last ``test_per_user`` are the queries and the pairs strictly
earlier than the first query are the profile. ``labels="frequent"`` uses each user's own ``top_n`` most frequent tags
instead (tags of at most 40 characters without commas or brackets, so the list in the question stays readable),
counted only over the assignments made before the user's last ``test_per_user`` tagged movies (any tag);
those movies are the queries (dropped and counted when they carry none of the user's frequent tags), so the label set
never sees the test period. HetRec has no plot text: the description is built from title, year, genres, directors and
countries, and, when given, the YuLan-Rec one-to-two-sentence description of the same MovieLens-1M movie.

Two facts about the HetRec/YuLan files shape the options. HetRec's ids are MovieLens ids and its genres are
MovieLens' own, but its title, year, directors and countries come from an IMDb match that is wrong for roughly one
tagged movie in ten (id 45, MovieLens' *To Die For* (1995), is *Live Free or Die Hard* (2007) there); given MovieLens
movie lists (``ml1m_movies``, ``movielens_movies``), movies whose year disagrees by more than a year take the
MovieLens title and year and lose the mismatched directors and countries. YuLan-Rec's ``item.csv`` ``id`` column is
a row number (0..3882), not a MovieLens id: row i describes the movie on line i of MovieLens-1M ``movies.dat``, so
descriptions need that file too (``ml1m_movies``), and a row is used only when its genres or title agree with it.
HetRec files are decoded line by line as UTF-8, falling back to Latin-1 (``tags.dat`` mixes both).

Dates are written as ISO-8601 ``YYYY-MM-DDTHH:MM:SS`` in UTC (no offset: naive dates mean UTC in :mod:`lamp`). Every
profile entry of a question is strictly earlier, in whole seconds, than its query; entries that are not (equal times)
are dropped and counted. Both builders are deterministic; ``seed`` is used only to sample ``max_users`` users at
random (without it, the users with the longest profiles are kept, as PersonaAgent keeps its most active users).
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from personalens.data._validate import (
    bad_type,
    field_count_error,
    iter_csv_rows,
    iter_jsonl,
    parse_datetime,
    parse_id,
    parse_number,
    require_columns,
)
from personalens.data.lamp import LampExample, LampProfileEntry
from personalens.errors import DataError

LAMP3_TASK = "LaMP_3"
#: The outputs-file task name of LaMP's movie tagging (LaMP-2M in the PersonaAgent paper); ``lamp_to_dataset`` maps
#: ``LaMP_2`` to the tag/description fields.
LAMP2M_TASK = "LaMP_2"

#: LaMP-2M's 15 movie tags, in the order the instruction lists them.
LAMP2M_TAGS: tuple[str, ...] = (
    "sci-fi",
    "based on a book",
    "comedy",
    "action",
    "twist ending",
    "dystopia",
    "dark comedy",
    "classic",
    "psychology",
    "fantasy",
    "romance",
    "thought-provoking",
    "social commentary",
    "violence",
    "true story",
)

#: Spelling variants and direct paraphrases of LaMP-2M tags found in HetRec (lower case, trimmed). HetRec strips
#: hyphens (``scifi``, ``thoughtprovoking``) and writes book adaptations as ``adapted from:book``. Kept small on
#: purpose: only tags that say the same thing, never related ones (``violent``, ``satire``, ``funny`` stay out).
TAG_SYNONYMS: Mapping[str, str] = MappingProxyType(
    {
        "scifi": "sci-fi",
        "sci fi": "sci-fi",
        "science fiction": "sci-fi",
        "based on book": "based on a book",
        "adapted from:book": "based on a book",
        "based on a novel": "based on a book",
        "based on novel": "based on a book",
        "thoughtprovoking": "thought-provoking",
        "thought provoking": "thought-provoking",
        "dystopian": "dystopia",
        "based on a true story": "true story",
        "based on true story": "true story",
    }
)

LAMP3_INSTRUCTION = (
    "Read the product review below and say which star rating, from 1 to 5, its author gave. "
    "Answer with a single digit (1, 2, 3, 4 or 5) and nothing else."
)
LAMP2M_INSTRUCTION = (
    "Pick the one tag from the list below that this user would attach to the movie described after it. "
    "Answer with exactly one tag, written as it appears in the list, and nothing else."
)

AMAZON_FILES: tuple[str, ...] = ("training.jsonl", "validation.jsonl", "test.jsonl")
HETREC_ASSIGNMENTS = "user_taggedmovies-timestamps.dat"
#: The assignments' time column (milliseconds): ``unixTimeStamp`` here, ``timestamp`` in some copies.
_TIME_COLUMNS = ("unixTimeStamp", "timestamp")

Labels = Literal["lamp15", "frequent"]
_MAX_LABEL_CHARS = 40  # a frequent tag longer than this, or with a comma or bracket, is never a label
Unit = Literal["user", "record"]


@dataclass
class LampBuild:
    """Built examples (official LaMP shape, gold ``output`` set) and what happened while building them.

    ``query_dates`` holds each question's own time (UTC), which the LaMP format has no place for; it is not written.
    """

    task: str
    examples: list[LampExample]
    stats: dict[str, Any] = field(default_factory=dict)
    query_dates: dict[str, datetime] = field(default_factory=dict)

    def time_order_violations(self) -> list[str]:
        """Ids of questions with a profile entry that is undated or not strictly before the question's time."""
        bad = []
        for example in self.examples:
            when = self.query_dates.get(example.id)
            if when is None or any(e.date is None or e.date >= when for e in example.profile):
                bad.append(example.id)
        return bad

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``questions.json``, ``outputs.json`` and ``stats.json`` into ``out_dir`` (created if needed)."""
        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "questions": directory / "questions.json",
            "outputs": directory / "outputs.json",
            "stats": directory / "stats.json",
        }
        write_lamp(self.examples, paths["questions"], paths["outputs"], task=self.task)
        _atomic_write(paths["stats"], json.dumps(self.stats, indent=2, ensure_ascii=False) + "\n")
        return paths


# --------------------------------------------------------------------------------------------------- writing


def write_lamp(
    examples: Sequence[LampExample],
    questions_path: str | Path,
    outputs_path: str | Path | None = None,
    *,
    task: str | None = None,
) -> None:
    """Write examples as an official LaMP questions file and, when ``outputs_path`` is given, its outputs file.

    ``task`` names the task in the outputs file; by default it is the examples' own ``task`` (they must agree).
    Every example needs a gold ``output`` when an outputs file is written. Ids must be unique. Files are replaced
    atomically, so a reader never sees half a file.
    """
    if not examples:
        raise ValueError("no examples to write")
    ids = [x.id for x in examples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"duplicate example id {duplicate!r}")
    questions = [{"id": x.id, "input": x.input, "profile": [_entry_json(e) for e in x.profile]} for x in examples]
    golds = None
    if outputs_path is not None:
        missing = [x.id for x in examples if x.output is None]
        if missing:
            raise ValueError(f"{len(missing)} example(s) have no gold output, e.g. {missing[0]!r}")
        if task is None:
            tasks = {x.task for x in examples}
            if len(tasks) != 1 or None in tasks:
                raise ValueError(f"pass task=...: the examples' tasks are {sorted(map(str, tasks))}")
            task = tasks.pop()
        golds = {"task": task, "golds": [{"id": x.id, "output": x.output} for x in examples]}
    _atomic_write(Path(questions_path), json.dumps(questions, ensure_ascii=False))
    if golds is not None and outputs_path is not None:
        _atomic_write(Path(outputs_path), json.dumps(golds, ensure_ascii=False))


def _entry_json(entry: LampProfileEntry) -> dict[str, Any]:
    body: dict[str, Any] = {"id": entry.id, **entry.fields}
    if "date" not in body and entry.date is not None:
        body["date"] = entry.date.strftime("%Y-%m-%dT%H:%M:%S")
    return body


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------- shared


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _entry(entry_id: str, fields: dict[str, Any]) -> LampProfileEntry:
    when = parse_datetime(fields["date"], None, None, "date")
    return LampProfileEntry(entry_id, MappingProxyType(dict(fields)), when)


def _size_stats(sizes: Sequence[int]) -> dict[str, float]:
    if not sizes:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    return {
        "min": min(sizes),
        "median": statistics.median(sizes),
        "mean": round(statistics.fmean(sizes), 2),
        "max": max(sizes),
    }


def _pick_users(candidates: Mapping[str, int], max_users: int | None, seed: int | None) -> tuple[list[str], str]:
    """Users to keep, in sorted order. ``candidates`` maps a user to their profile size."""
    users = sorted(candidates)
    if max_users is None or max_users >= len(users):
        return users, "all"
    if seed is not None:
        return sorted(random.Random(seed).sample(users, max_users)), f"random sample (seed {seed})"
    ranked = sorted(users, key=lambda u: (-candidates[u], u))
    return sorted(ranked[:max_users]), "longest profiles"


def _finish(build: LampBuild) -> LampBuild:
    """Check every profile entry is strictly before its question (recorded in the stats; a failure is a bug)."""
    build.stats["time_order_violations"] = len(build.time_order_violations())
    if build.stats["time_order_violations"]:
        raise AssertionError(f"profile entries not before their question: {build.time_order_violations()[:5]}")
    return build


def _check_counts(min_profile: int, test_per_user: int, max_users: int | None) -> None:
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be at least 1, not {max_users}")
    if min_profile < 1:
        raise ValueError(f"min_profile must be at least 1, not {min_profile}")
    if test_per_user < 1:
        raise ValueError(f"test_per_user must be at least 1, not {test_per_user}")


# --------------------------------------------------------------------------------------------------- LaMP-3


@dataclass(frozen=True, slots=True)
class _Review:
    user: str
    asin: str
    ms: int
    rating: int
    text: str
    heldout: bool

    @property
    def seconds(self) -> int:
        return self.ms // 1000


def lamp3_input(review_text: str) -> str:
    """The LaMP-3-like question for one review: the instruction, then ``review: <text>``."""
    return f"{LAMP3_INSTRUCTION} review: {review_text}"


def build_lamp3_amazon(
    source: str | Path,
    *,
    unit: Unit = "user",
    files: Sequence[str] = AMAZON_FILES,
    test_per_user: int = 1,
    min_profile: int = 4,
    max_users: int | None = None,
    seed: int | None = None,
    text: Literal["full", "excerpt"] = "full",
) -> LampBuild:
    """A LaMP-3-like rating task from the Amazon Reviews 2023 mini histories in ``source`` (see the module doc).

    ``files`` are read in order (missing ones are an error). ``text="full"`` uses ``review_full`` (falling back to
    the excerpt, then the title, when empty); ``"excerpt"`` prefers ``review_excerpt``. Malformed records raise a
    :class:`DataError` naming the file, line and field.
    """
    if unit not in ("user", "record"):
        raise ValueError(f"unit must be 'user' or 'record', not {unit!r}")
    if text not in ("full", "excerpt"):
        raise ValueError(f"text must be 'full' or 'excerpt', not {text!r}")
    _check_counts(min_profile, test_per_user, max_users)
    if unit == "record" and test_per_user != 1:
        raise ValueError("unit='record' has exactly one query per record: test_per_user must be 1")
    directory = Path(source)
    skipped: Counter[str] = Counter()
    records: list[tuple[str, str, list[_Review], _Review | None]] = []  # (user, category, history, heldout)
    record_files: Counter[str] = Counter()
    user_files: dict[str, set[str]] = defaultdict(set)
    order_violations = 0
    for name in files:
        path = directory / name
        for line, raw in iter_jsonl(path):
            user, category, history, heldout = _amazon_record(raw, path, line, text, skipped)
            record_files[name] += 1
            user_files[user].add(name)
            if heldout is not None and any(h.ms >= heldout.ms for h in history):
                order_violations += 1
            records.append((user, category, history, heldout))
    user_records: Counter[str] = Counter(r[0] for r in records)

    candidates: dict[str, list[tuple[str, list[_Review], _Review]]] = defaultdict(list)
    if unit == "record":
        used_ids: set[str] = set()
        for user, category, history, heldout in records:
            if heldout is None:  # its rating or text was unusable (counted when read)
                continue
            profile = [h for h in history if h.seconds < heldout.seconds]
            skipped["profile_not_before_query"] += len(history) - len(profile)
            if len(profile) < min_profile:
                skipped["too_few_profile_entries"] += 1
                continue
            example_id = f"{user}_{category}"
            if example_id in used_ids:  # the same user and category twice: number the later records
                example_id = next(
                    f"{user}_{category}_{n}"
                    for n in range(2, len(records) + 2)
                    if f"{user}_{category}_{n}" not in used_ids
                )
            used_ids.add(example_id)
            candidates[user].append((example_id, sorted(profile, key=_review_key), heldout))
    else:
        reviews: dict[str, dict[tuple[str, int], _Review]] = defaultdict(dict)
        for user, _, history, heldout in records:
            for review in [*history, *([heldout] if heldout else [])]:
                key = (review.asin, review.ms)
                if key in reviews[user]:
                    skipped["duplicate_review"] += 1
                    continue
                reviews[user][key] = review
        for user in sorted(reviews):
            timeline = sorted(reviews[user].values(), key=_review_key)
            if len(timeline) <= test_per_user:
                skipped["too_few_profile_entries"] += 1
                continue
            queries = timeline[-test_per_user:]
            first = min(q.seconds for q in queries)
            earlier = timeline[:-test_per_user]
            profile = [r for r in earlier if r.seconds < first]
            skipped["profile_not_before_query"] += len(earlier) - len(profile)
            if len(profile) < min_profile:
                skipped["too_few_profile_entries"] += 1
                continue
            for k, query in enumerate(queries):
                candidates[user].append((f"{user}_{k}", profile, query))

    sizes_by_user = {u: max(len(p) for _, p, _ in items) for u, items in candidates.items()}
    kept, selection = _pick_users(sizes_by_user, max_users, seed)
    examples: list[LampExample] = []
    query_dates: dict[str, datetime] = {}
    for user in kept:
        for example_id, profile, query in candidates[user]:
            entries = tuple(
                _entry(r.asin, {"text": r.text, "score": str(r.rating), "date": _iso(r.seconds)}) for r in profile
            )
            examples.append(LampExample(example_id, lamp3_input(query.text), entries, str(query.rating), LAMP3_TASK))
            query_dates[example_id] = datetime.fromtimestamp(query.seconds, UTC)

    stats: dict[str, Any] = {
        "task": LAMP3_TASK,
        "builder": "amazon-ratings",
        "source": str(directory),
        "options": {
            "unit": unit,
            "files": list(files),
            "test_per_user": test_per_user,
            "min_profile": min_profile,
            "max_users": max_users,
            "seed": seed,
            "text": text,
        },
        "records": dict(record_files),
        "records_total": sum(record_files.values()),
        "source_users": len(user_records),
        "users_in_several_records": sum(1 for n in user_records.values() if n > 1),
        "users_in_several_files": sum(1 for f in user_files.values() if len(f) > 1),
        "record_time_order_violations": order_violations,
        "qualifying_users": len(candidates),
        "user_selection": selection,
        "users": len(kept),
        "examples": len(examples),
        "profile_size": _size_stats([len(x.profile) for x in examples]),
        "labels": dict(sorted(Counter(x.output for x in examples if x.output).items())),
        "profile_labels": dict(sorted(Counter(str(e.get("score")) for x in examples for e in x.profile).items())),
        "skipped": dict(sorted((k, v) for k, v in skipped.items() if v)),
    }
    return _finish(LampBuild(LAMP3_TASK, examples, stats, query_dates))


def _review_key(review: _Review) -> tuple[int, str]:
    return review.ms, review.asin


def _amazon_record(
    raw: dict[str, Any], path: Path, line: int, text_field: str, skipped: Counter[str]
) -> tuple[str, str, list[_Review], _Review | None]:
    for key in ("user_id", "category", "history", "heldout"):
        if key not in raw:
            raise DataError(f"missing key; keys present: {sorted(raw)}", path=path, line=line, field=key)
    user = parse_id(raw["user_id"], path, line, "user_id")
    category = raw["category"]
    if not isinstance(category, str) or not category.strip():
        raise bad_type(category, "a non-empty string", path, line, "category")
    history_raw = raw["history"]
    if not isinstance(history_raw, list):
        raise bad_type(history_raw, "a list of reviews", path, line, "history")
    history = []
    for index, item in enumerate(history_raw):
        review = _amazon_review(item, user, path, line, f"history[{index}]", text_field, skipped, heldout=False)
        if review is not None:
            history.append(review)
    heldout = _amazon_review(raw["heldout"], user, path, line, "heldout", text_field, skipped, heldout=True)
    return user, category.strip(), history, heldout


def _amazon_review(
    raw: Any,
    user: str,
    path: Path,
    line: int,
    where: str,
    text_field: str,
    skipped: Counter[str],
    *,
    heldout: bool,
) -> _Review | None:
    if not isinstance(raw, dict):
        raise bad_type(raw, "a JSON object", path, line, where)
    for key in ("parent_asin", "rating", "timestamp_ms"):
        if key not in raw:
            raise DataError(f"missing key; keys present: {sorted(raw)}", path=path, line=line, field=f"{where}.{key}")
    asin = parse_id(raw["parent_asin"], path, line, f"{where}.parent_asin")
    stamp = raw["timestamp_ms"]
    if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0:
        raise bad_type(
            stamp, "milliseconds since the epoch (a non-negative integer)", path, line, f"{where}.timestamp_ms"
        )
    rating = parse_number(raw["rating"], path, line, f"{where}.rating")
    texts = {}
    for key in ("review_full", "review_excerpt", "review_title"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_type(value, "a string or null", path, line, f"{where}.{key}")
        texts[key] = " ".join((value or "").split())
    order = ("review_full", "review_excerpt") if text_field == "full" else ("review_excerpt", "review_full")
    text = next((texts[k] for k in (*order, "review_title") if texts[k]), "")
    kind = "heldout" if heldout else "history"
    if rating != int(rating) or not 1 <= rating <= 5:
        skipped[f"{kind}_rating_not_1_to_5"] += 1
        return None
    if not text:
        skipped[f"{kind}_without_text"] += 1
        return None
    return _Review(user, asin, stamp, int(rating), text, heldout)


# --------------------------------------------------------------------------------------------------- HetRec files


@dataclass(frozen=True, slots=True)
class Movie:
    """A HetRec movie's metadata, after any correction from MovieLens titles."""

    id: str
    title: str
    year: int | None
    genres: tuple[str, ...] = ()
    directors: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    extra: str = ""  # e.g. the YuLan-Rec description


def movie_description(movie: Movie) -> str:
    """A short plain-text description: ``Title (year). Genres: … Director: … Country: …`` plus any extra text."""
    head = movie.title or f"Movie {movie.id}"
    if movie.year is not None:
        head += f" ({movie.year})"
    parts = [head + "."]
    if movie.genres:
        parts.append(f"Genres: {', '.join(movie.genres)}.")
    if movie.directors:
        label = "Director" if len(movie.directors) == 1 else "Directors"
        parts.append(f"{label}: {', '.join(movie.directors)}.")
    if movie.countries:
        label = "Country" if len(movie.countries) == 1 else "Countries"
        parts.append(f"{label}: {', '.join(movie.countries)}.")
    if movie.extra:
        parts.append(movie.extra)
    return " ".join(parts)


def lamp2m_input(description: str, labels: Sequence[str]) -> str:
    """The LaMP-2M-like question: the instruction, the allowed tags, then ``description: <text>``."""
    return f"{LAMP2M_INSTRUCTION} tags: [{', '.join(labels)}] description: {description}"


class _TsvFile:
    """Rows of a tab-separated HetRec file with a header line, as ``(line, {column: value})``.

    Each line is decoded as UTF-8 and, when that fails, as Latin-1 (``tags.dat`` mixes both; ``movies.dat`` and
    ``movie_directors.dat`` are Latin-1); ``fallback_lines`` counts the Latin-1 lines.
    """

    def __init__(self, path: Path, required: Sequence[str]) -> None:
        self.path = path
        self.required = tuple(required)
        self.fallback_lines = 0

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            raise DataError("file not found", path=self.path) from None
        except IsADirectoryError:
            raise DataError("expected a file, found a directory", path=self.path) from None
        columns: list[str] | None = None
        with handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("latin-1")
                    self.fallback_lines += 1
                if number == 1:
                    line = line.removeprefix("\ufeff")
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                values = line.split("\t")
                if columns is None:
                    columns = [v.strip() for v in values]
                    require_columns(columns, self.required, self.path, number)
                    continue
                if len(values) != len(columns):
                    raise field_count_error(columns, values, "separated by tabs", self.path, number)
                yield number, dict(zip(columns, values, strict=True))
        if columns is None:
            raise DataError("file is empty (no header line)", path=self.path)


def _int(value: str, path: Path, line: int, name: str) -> int:
    text = value.strip()
    if not text or not text.lstrip("-").isdigit():
        raise DataError(f"not an integer: {value!r}", path=path, line=line, field=name)
    return int(text)


def _canonical(tag: str) -> str:
    return " ".join(tag.split()).lower()


def _movielens_title(title: str) -> tuple[str, int | None]:
    """``"Usual Suspects, The (1995)"`` → ``("The Usual Suspects", 1995)``."""
    text = " ".join(title.split())
    year = None
    found = re.search(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$", text)
    if found:
        year = int(found.group(1))
        text = text[: found.start()].rstrip()
    article = re.match(r"^(.*), (The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El)(\s*\(.*\))?$", text)
    if article:
        rest = article.group(3) or ""
        joiner = "" if article.group(2).endswith("'") else " "
        text = f"{article.group(2)}{joiner}{article.group(1)}{rest}"
    return text, year


def _normal_title(title: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", title.lower()).split())


def _read_movielens_titles(path: Path) -> list[tuple[str, str, str]]:
    """``(movie id, raw title, genres)`` of a MovieLens ``movies.dat`` (``::``) or ``movies.csv``, in file order."""
    rows: list[tuple[str, str, str]] = []
    if path.suffix.lower() == ".csv":
        for line, row in iter_csv_rows(path, required=("movieId", "title", "genres")):
            rows.append((parse_id(row["movieId"], path, line, "movieId"), row["title"], row["genres"]))
        return rows
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("expected a file, found a directory", path=path) from None
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = text.rstrip("\r")
        if not text.strip():
            continue
        parts = text.split("::")
        if len(parts) != 3:
            raise field_count_error(("MovieID", "Title", "Genres"), parts, "separated by '::'", path, number)
        rows.append((parse_id(parts[0], path, number, "MovieID"), parts[1], parts[2]))
    if not rows:
        raise DataError("file has no movies", path=path)
    return rows


@dataclass
class _Hetrec:
    movies: dict[str, Movie]
    tags: dict[str, str]
    assignments: list[tuple[str, str, str, int, int]]  # user, movie, canonical tag text, seconds, line
    skipped: Counter[str]
    notes: dict[str, Any]
    corrected: set[str]


def _load_hetrec(
    directory: Path,
    *,
    descriptions: Path | None,
    ml1m_movies: Path | None,
    movielens_movies: Sequence[Path],
) -> _Hetrec:
    skipped: Counter[str] = Counter()
    notes: dict[str, Any] = {}
    fallback = 0

    tags_file = _TsvFile(directory / "tags.dat", ("id", "value"))
    tags: dict[str, str] = {}
    for line, row in tags_file:
        tag_id = parse_id(row["id"], tags_file.path, line, "id")
        if tag_id in tags:
            raise DataError(f"duplicate tag id {tag_id!r}", path=tags_file.path, line=line, field="id")
        tags[tag_id] = row["value"]
    fallback += tags_file.fallback_lines

    movies_file = _TsvFile(directory / "movies.dat", ("id", "title", "year"))
    movies: dict[str, Movie] = {}
    for line, row in movies_file:
        movie_id = parse_id(row["id"], movies_file.path, line, "id")
        year_text = row["year"].strip()
        year = _int(year_text, movies_file.path, line, "year") if year_text not in ("", "\\N") else None
        movies[movie_id] = Movie(movie_id, " ".join(row["title"].split()), year)
    fallback += movies_file.fallback_lines

    extras: dict[str, dict[str, list[str]]] = {"genres": {}, "directors": {}, "countries": {}}
    for name, key, column in (
        ("movie_genres.dat", "genres", "genre"),
        ("movie_directors.dat", "directors", "directorName"),
        ("movie_countries.dat", "countries", "country"),
    ):
        path = directory / name
        if not path.exists():
            notes.setdefault("missing_optional_files", []).append(name)
            continue
        table = _TsvFile(path, ("movieID", column))
        for line, row in table:
            value = " ".join(row[column].split())
            if value:
                extras[key].setdefault(parse_id(row["movieID"], path, line, "movieID"), []).append(value)
        fallback += table.fallback_lines
    for movie_id, movie in list(movies.items()):
        movies[movie_id] = Movie(
            movie_id,
            movie.title,
            movie.year,
            tuple(extras["genres"].get(movie_id, ())),
            tuple(extras["directors"].get(movie_id, ())),
            tuple(extras["countries"].get(movie_id, ())),
        )

    corrected = _correct_titles(movies, [p for p in (ml1m_movies, *movielens_movies) if p is not None], notes)
    if descriptions is not None:
        if ml1m_movies is None:
            raise ValueError(
                "descriptions need ml1m_movies: the rows of YuLan-Rec's item.csv follow the line order of "
                "MovieLens-1M movies.dat (its id column is a row number, not a MovieLens id)"
            )
        _add_descriptions(movies, descriptions, ml1m_movies, notes)

    stamps = _TsvFile(directory / HETREC_ASSIGNMENTS, ("userID", "movieID", "tagID"))
    assignments: list[tuple[str, str, str, int, int]] = []
    for line, row in stamps:
        time_column = next((c for c in _TIME_COLUMNS if c in row), None)
        if time_column is None:
            problem = f"missing required column(s) {list(_TIME_COLUMNS[:1])}; columns present: {list(row)}"
            raise DataError(problem, path=stamps.path, line=1, field=_TIME_COLUMNS[0])
        user = parse_id(row["userID"], stamps.path, line, "userID")
        movie_key = parse_id(row["movieID"], stamps.path, line, "movieID")
        tag_id = parse_id(row["tagID"], stamps.path, line, "tagID")
        millis = _int(row[time_column], stamps.path, line, time_column)
        if millis < 0:
            raise DataError(f"negative time: {millis}", path=stamps.path, line=line, field=time_column)
        if tag_id not in tags:
            skipped["unknown_tag_id"] += 1
            continue
        if movie_key not in movies:
            skipped["unknown_movie_id"] += 1
            continue
        text = _canonical(tags[tag_id])
        if not text:
            skipped["empty_tag"] += 1
            continue
        assignments.append((user, movie_key, text, millis // 1000, line))
    if not assignments:
        raise DataError("no usable tag assignments", path=stamps.path)
    notes["latin1_fallback_lines"] = fallback
    notes["metadata_corrected_movies"] = len(corrected)
    return _Hetrec(movies, tags, assignments, skipped, notes, corrected)


def _correct_titles(movies: dict[str, Movie], sources: Sequence[Path], notes: dict[str, Any]) -> set[str]:
    """Replace HetRec metadata that belongs to another film.

    HetRec's title, year, directors and countries come from an IMDb match that is wrong for some MovieLens ids (id 45,
    MovieLens' *To Die For* (1995), is *Live Free or Die Hard* (2007) there); genres come from MovieLens and are
    right. When a MovieLens movie list gives the id a year more than one year away from HetRec's, its title and year
    are used and HetRec's directors and countries dropped. Returns the corrected movie ids.
    """
    if not sources:
        notes["metadata_check"] = "none (no MovieLens movie list given)"
        return set()
    reference: dict[str, tuple[str, int | None]] = {}
    for path in sources:
        for movie_id, raw_title, _ in _read_movielens_titles(path):
            reference.setdefault(movie_id, _movielens_title(raw_title))
    corrected: set[str] = set()
    checked = 0
    for movie_id, movie in list(movies.items()):
        if movie_id not in reference:
            continue
        checked += 1
        title, year = reference[movie_id]
        wrong_year = movie.year is not None and year is not None and abs(movie.year - year) > 1
        if wrong_year or not movie.title:
            movies[movie_id] = Movie(movie_id, title, year, movie.genres, (), (), movie.extra)
            corrected.add(movie_id)
    notes["metadata_check"] = {"movies_checked": checked, "movies_unchecked": len(movies) - checked}
    return corrected


def _add_descriptions(movies: dict[str, Movie], item_csv: Path, ml1m_movies: Path, notes: dict[str, Any]) -> None:
    """Append YuLan-Rec's description to the movies it describes.

    Row i of ``item.csv`` describes the movie on line i of MovieLens-1M ``movies.dat``; a row is used only when its
    genres or its title agree with that line (disagreeing rows are counted, never guessed).
    """
    ml1m = _read_movielens_titles(ml1m_movies)
    used = mismatched = 0
    position = 0
    for _, row in iter_csv_rows(item_csv, required=("title", "genre", "description")):
        if position >= len(ml1m):
            mismatched += 1
            continue
        movie_id, raw_title, genres = ml1m[position]
        position += 1
        title, _ = _movielens_title(raw_title)
        same = row["genre"].strip() == genres.strip() or _normal_title(row["title"]) in (
            _normal_title(title),
            _normal_title(raw_title),
        )
        if not same:
            mismatched += 1
            continue
        text = " ".join(row["description"].replace("<", "").replace(">", "").split())
        if text and movie_id in movies:
            movie = movies[movie_id]
            movies[movie_id] = Movie(
                movie.id, movie.title, movie.year, movie.genres, movie.directors, movie.countries, text
            )
            used += 1
    notes["descriptions"] = {"rows": position, "rows_not_matching_ml1m": mismatched, "movies_described": used}


# --------------------------------------------------------------------------------------------------- LaMP-2M


def tag_match_counts(assignments: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """How many ``(user, movie, canonical tag)`` assignments carry a LaMP-2M tag exactly, and with synonyms."""
    rows = list(assignments)
    result: dict[str, Any] = {"assignments": len(rows), "users": len({u for u, _, _ in rows})}
    synonym_hits: Counter[str] = Counter()
    for name, with_synonyms in (("exact", False), ("with_synonyms", True)):
        hits = []
        for user, movie, tag in rows:
            label = _lamp15_label(tag, with_synonyms)
            if label is not None:
                hits.append((user, movie, label))
                if with_synonyms and tag not in LAMP2M_TAGS:
                    synonym_hits[tag] += 1
        result[name] = {
            "assignments": len(hits),
            "users": len({u for u, _, _ in hits}),
            "user_movie_pairs": len({(u, m) for u, m, _ in hits}),
            "per_tag": {t: c for t, c in Counter(label for _, _, label in hits).most_common()},
        }
    result["synonym_hits"] = dict(synonym_hits.most_common())
    return result


_LAMP15 = frozenset(LAMP2M_TAGS)


def _lamp15_label(tag: str, synonyms: bool) -> str | None:
    if tag in _LAMP15:
        return tag
    return TAG_SYNONYMS.get(tag) if synonyms else None


@dataclass(frozen=True, slots=True)
class _Pair:
    movie: str
    tag: str
    seconds: int


def _earliest(
    assigned: Iterable[tuple[str, str, int]], rank: Mapping[str, int], before: int | None, stats: Counter[str]
) -> dict[str, _Pair]:
    """Per movie, its earliest allowed tag (equal times: lowest rank). ``assigned`` holds ``(movie, tag, seconds)``."""
    best: dict[str, _Pair] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for movie, tag, seconds in assigned:
        if tag not in rank or (before is not None and seconds >= before):
            continue
        seen[movie].add(tag)
        current = best.get(movie)
        if current is None or (seconds, rank[tag]) < (current.seconds, rank[current.tag]):
            best[movie] = _Pair(movie, tag, seconds)
    stats["pairs_with_several_allowed_tags"] += sum(1 for tags in seen.values() if len(tags) > 1)
    return best


def build_lamp2m_hetrec(
    source: str | Path,
    *,
    labels: Labels = "lamp15",
    synonyms: bool = True,
    top_n: int = 10,
    test_per_user: int = 1,
    min_profile: int = 10,
    max_users: int | None = None,
    seed: int | None = None,
    descriptions: str | Path | None = None,
    ml1m_movies: str | Path | None = None,
    movielens_movies: Sequence[str | Path] = (),
) -> LampBuild:
    """A LaMP-2M-like movie tagging task from the HetRec 2011 files in ``source`` (see the module doc).

    ``descriptions``: YuLan-Rec's ``item.csv``; needs ``ml1m_movies`` (MovieLens-1M ``movies.dat``), whose line
    order its rows follow. ``ml1m_movies`` and ``movielens_movies`` (more MovieLens ``movies.dat``/``movies.csv``
    lists) also check HetRec's titles: see :func:`_correct_titles`. ``top_n`` is the size of each user's label set
    with ``labels="frequent"``.
    """
    if labels not in ("lamp15", "frequent"):
        raise ValueError(f"labels must be 'lamp15' or 'frequent', not {labels!r}")
    if top_n < 2:
        raise ValueError(f"top_n must be at least 2, not {top_n}")
    _check_counts(min_profile, test_per_user, max_users)
    directory = Path(source)
    data = _load_hetrec(
        directory,
        descriptions=Path(descriptions) if descriptions is not None else None,
        ml1m_movies=Path(ml1m_movies) if ml1m_movies is not None else None,
        movielens_movies=[Path(p) for p in movielens_movies],
    )
    skipped = data.skipped
    by_user: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for user, movie, tag, seconds, _ in data.assignments:
        if synonyms:  # spelling variants of LaMP tags become the LaMP tag, in both label modes
            tag = TAG_SYNONYMS.get(tag, tag)
        by_user[user].append((movie, tag, seconds))

    counters: Counter[str] = Counter()
    candidates: dict[str, tuple[list[_Pair], list[_Pair], tuple[str, ...]]] = {}
    for user in sorted(by_user, key=_id_order):
        assigned = by_user[user]
        if labels == "lamp15":
            label_set: tuple[str, ...] = LAMP2M_TAGS
            rank = {t: i for i, t in enumerate(label_set)}
            pairs = sorted(_earliest(assigned, rank, None, counters).values(), key=_pair_order)
            if not pairs:
                skipped["users_without_allowed_tags"] += 1
                continue
            if len(pairs) <= test_per_user:
                skipped["too_few_profile_entries"] += 1
                continue
            queries = pairs[-test_per_user:]
            earlier = pairs[:-test_per_user]
        else:
            first_time: dict[str, int] = {}
            for movie, _, seconds in assigned:
                first_time[movie] = min(seconds, first_time.get(movie, seconds))
            timeline = sorted(first_time, key=lambda m: (first_time[m], _id_order(m)))
            if len(timeline) <= test_per_user:
                skipped["too_few_profile_entries"] += 1
                continue
            cutoff = first_time[timeline[-test_per_user]]
            counts = {  # movies per tag, for tags that can be listed in "tags: [a, b, ...]" unambiguously
                tag: len(movies) for tag, movies in _tag_movies(assigned, cutoff).items() if _listable(tag)
            }
            label_set = tuple(sorted(counts, key=lambda t: (-counts[t], t))[:top_n])
            if len(label_set) < 2:
                skipped["fewer_than_two_frequent_tags"] += 1
                continue
            rank = {t: i for i, t in enumerate(label_set)}
            query_movies = set(timeline[-test_per_user:])
            after = _earliest([a for a in assigned if a[0] in query_movies], rank, None, counters)
            skipped["query_tag_not_in_labels"] += len(query_movies) - len(after)
            queries = sorted(after.values(), key=_pair_order)
            if not queries:
                skipped["users_without_query_in_labels"] += 1
                continue
            earlier = sorted(
                _earliest([a for a in assigned if a[0] not in query_movies], rank, cutoff, counters).values(),
                key=_pair_order,
            )
        first = min(q.seconds for q in queries)
        profile = [p for p in earlier if p.seconds < first]
        skipped["profile_not_before_query"] += len(earlier) - len(profile)
        if len(profile) < min_profile:
            skipped["too_few_profile_entries"] += 1
            continue
        candidates[user] = (profile, queries, label_set)

    kept, selection = _pick_users({u: len(c[0]) for u, c in candidates.items()}, max_users, seed)
    kept.sort(key=_id_order)
    examples: list[LampExample] = []
    query_dates: dict[str, datetime] = {}
    used_movies: set[str] = set()
    for user in kept:
        profile, queries, label_set = candidates[user]
        entries = tuple(
            _entry(
                p.movie, {"tag": p.tag, "description": movie_description(data.movies[p.movie]), "date": _iso(p.seconds)}
            )
            for p in profile
        )
        used_movies.update(p.movie for p in profile)
        for query in queries:
            used_movies.add(query.movie)
            question = lamp2m_input(movie_description(data.movies[query.movie]), label_set)
            examples.append(LampExample(f"{user}-{query.movie}", question, entries, query.tag, LAMP2M_TASK))
            query_dates[examples[-1].id] = datetime.fromtimestamp(query.seconds, UTC)

    stats: dict[str, Any] = {
        "task": LAMP2M_TASK,
        "builder": "hetrec-tags",
        "source": str(directory),
        "options": {
            "labels": labels,
            "synonyms": synonyms,
            "top_n": top_n if labels == "frequent" else None,
            "test_per_user": test_per_user,
            "min_profile": min_profile,
            "max_users": max_users,
            "seed": seed,
            "descriptions": str(descriptions) if descriptions is not None else None,
            "ml1m_movies": str(ml1m_movies) if ml1m_movies is not None else None,
            "movielens_movies": [str(p) for p in movielens_movies],
        },
        "tag_matching": tag_match_counts((u, m, t) for u, m, t, _, _ in data.assignments),
        "source_users": len(by_user),
        "qualifying_users": len(candidates),
        "user_selection": selection,
        "users": len(kept),
        "examples": len(examples),
        "profile_size": _size_stats([len(x.profile) for x in examples]),
        "labels": dict(Counter(x.output for x in examples if x.output).most_common()),
        "profile_labels": dict(Counter(str(e.get("tag")) for x in examples for e in x.profile).most_common()),
        "movies_used": len(used_movies),
        "movies_used_with_description": sum(1 for m in used_movies if data.movies[m].extra),
        "movies_used_with_corrected_metadata": len(used_movies & data.corrected),
        "notes": {**data.notes, **{k: v for k, v in counters.items() if v}},
        "skipped": dict(sorted((k, v) for k, v in skipped.items() if v)),
    }
    return _finish(LampBuild(LAMP2M_TASK, examples, stats, query_dates))


def _listable(tag: str) -> bool:
    return len(tag) <= _MAX_LABEL_CHARS and not any(c in tag for c in ",[]")


def _tag_movies(assigned: Iterable[tuple[str, str, int]], before: int) -> dict[str, set[str]]:
    movies: dict[str, set[str]] = defaultdict(set)
    for movie, tag, seconds in assigned:
        if seconds < before:
            movies[tag].add(movie)
    return movies


def _id_order(value: str) -> tuple[int, int | str]:
    return (0, int(value)) if value.isdigit() else (1, value)


def _pair_order(pair: _Pair) -> tuple[int, tuple[int, int | str]]:
    return pair.seconds, _id_order(pair.movie)


# --------------------------------------------------------------------------------------------------- entry point

BUILDERS = ("amazon-ratings", "hetrec-tags")


def build_lamp_like(kind: str, source: str | Path, **options: Any) -> LampBuild:
    """Build by name: ``"amazon-ratings"`` (:func:`build_lamp3_amazon`) or ``"hetrec-tags"``
    (:func:`build_lamp2m_hetrec`). ``None`` options are left at the builder's default."""
    chosen = {k: v for k, v in options.items() if v is not None}
    if kind == "amazon-ratings":
        return build_lamp3_amazon(source, **chosen)
    if kind == "hetrec-tags":
        return build_lamp2m_hetrec(source, **chosen)
    raise ValueError(f"unknown builder {kind!r}; choose one of {', '.join(BUILDERS)}")


__all__ = [
    "AMAZON_FILES",
    "BUILDERS",
    "LAMP2M_INSTRUCTION",
    "LAMP2M_TAGS",
    "LAMP2M_TASK",
    "LAMP3_INSTRUCTION",
    "LAMP3_TASK",
    "TAG_SYNONYMS",
    "LampBuild",
    "Movie",
    "build_lamp2m_hetrec",
    "build_lamp3_amazon",
    "build_lamp_like",
    "lamp2m_input",
    "lamp3_input",
    "movie_description",
    "tag_match_counts",
    "write_lamp",
]
