"""Agent4Rec's MovieLens-1M subset: ``train.txt``/``valid.txt``/``test.txt`` and ``movie_detail.csv``.

Each ``.txt`` line is a user index followed by the item indices of that user in that split, separated by
spaces. ``movie_detail.csv`` (``movie_id,title,genres,rating,summary``) describes every item; its 0-based
``movie_id`` is the index used in the ``.txt`` files (Agent4Rec re-indexed the original MovieLens-1M
``MovieID`` values in ascending order). ``movies.dat``, ``users.dat``, ``movies_augmentation.csv`` and
``train_nodrop.txt`` are not read: they use the original MovieLens ids, and the mapping from the subset's
user indices back to MovieLens users is not shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalens.data._validate import (
    LineSource,
    LoadReport,
    iter_csv_rows,
    parse_number,
    require_rows,
    skip_or_raise,
)
from personalens.data.records import Dataset, Interaction, Item, freeze_fields
from personalens.errors import DataError

#: The split files, in the order their items are appended to each user's history.
AGENT4REC_SPLITS = ("train", "valid", "test")
AGENT4REC_ITEM_FILE = "movie_detail.csv"


@dataclass(frozen=True, slots=True)
class _Seen:
    """Where an item of a user was first read: the split and its line."""

    split: str
    line: int


def load_agent4rec(path: str | Path, *, strict: bool = True) -> Dataset:
    """Load Agent4Rec's MovieLens-1M subset from the directory ``path``.

    Items come from ``movie_detail.csv``: ``Item(str(movie_id), title, fields={"genres": "Comedy, Drama",
    "summary": ...})``. The csv's ``rating`` column (the movie's mean MovieLens-1M rating over *all* 6,040
    MovieLens users, so it has seen the held-out ratings too) is kept out of the item text and stored in
    ``meta["item_mean_rating"]`` (``{item_id: float}``).

    Interactions: each user's ``train.txt`` items, then ``valid.txt`` items, then ``test.txt`` items, each in
    file order, with ``rating=None``, ``label=None`` and ``timestamp=None``. Users are listed in the order they
    first appear. Agent4Rec built the splits from *all* MovieLens-1M ratings (1 to 5 stars) of its 1,000
    users, so an interaction means "rated", not "liked"; the star values are not shipped, hence no label.
    There are no timestamps: ``meta["order"] == "file"``, and the order inside a user is the file order, which
    is not chronological: Agent4Rec drew each user's train/valid/test items as random samples (about 40/30/30,
    valid and test then limited to items that occur in some user's train split) and wrote them in sampled
    order. Evaluators should take targets from ``meta["splits"]`` rather than from the history tail.

    ``meta["splits"]`` is ``{"train": {user_id: (item_id, ...)}, "valid": {...}, "test": {...}}``: the items
    of each user in each split, in file order (a user absent from a file is absent from that split's dict).
    The first test item of user ``u`` is ``meta["splits"]["test"][u][0]``.

    Validation, each error naming the file, 1-based line and field (``user_id`` or ``item_id``): a token that
    is not a non-negative integer; an item missing from ``movie_detail.csv``; a user with two lines in one
    file; an item listed twice for one user, within a line or across splits (Agent4Rec's splits are disjoint;
    the shipped data has no such repeat). With ``strict=False`` a bad user token or a repeated user line skips
    that line; a bad, unknown or repeated item skips that item (the first occurrence is kept); each is
    counted in ``meta["load_report"]`` (kinds ``invalid_row``, ``invalid_item``, ``unknown_item``,
    ``duplicate_user``, ``duplicate_interaction``, ``cross_split_duplicate``). In ``movie_detail.csv`` a
    ``movie_id`` that is not a non-negative integer or repeats, and a ``rating`` that is not a number, fail
    the same way (kinds ``invalid_row``, ``duplicate_item``, ``invalid_value``; a bad rating keeps the item).
    Blank lines are skipped. A missing file raises :class:`DataError` naming it.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataError("Agent4Rec directory not found", path=directory)
    files = {split: directory / f"{split}.txt" for split in AGENT4REC_SPLITS}
    items_path = directory / AGENT4REC_ITEM_FILE
    for needed in (items_path, *files.values()):
        if not needed.is_file():
            raise DataError(
                f"file not found (an Agent4Rec directory holds {AGENT4REC_ITEM_FILE} and "
                f"{', '.join(p.name for p in files.values())})",
                path=needed,
            )
    report = LoadReport()
    items, mean_rating = _load_items(items_path, strict, report)

    histories: dict[str, list[str]] = {}
    seen: dict[str, dict[str, _Seen]] = {}
    splits: dict[str, dict[str, tuple[str, ...]]] = {}
    for split, split_path in files.items():
        splits[split] = _read_split(split, split_path, items, histories, seen, strict, report)

    interactions = [Interaction(user, item) for user, row in histories.items() for item in row]
    require_rows(len(interactions), directory)
    meta: dict[str, Any] = {
        "source": str(directory),
        "format": "agent4rec",
        "files": [str(items_path), *(str(p) for p in files.values())],
        "order": "file",
        "splits": splits,
        "item_mean_rating": mean_rating,
        "load_report": report,
    }
    return Dataset("agent4rec-ml1m", items, interactions, None, meta)


def _index(token: str, path: Path, line: int, field: str) -> str:
    """A non-negative integer index as its canonical text (``"007"`` is ``"7"``)."""
    if token.isascii() and token.isdigit():
        return str(int(token))
    raise DataError(f"not a non-negative integer index: {token!r}", path=path, line=line, field=field)


def _read_split(
    split: str,
    path: Path,
    items: dict[str, Item],
    histories: dict[str, list[str]],
    seen: dict[str, dict[str, _Seen]],
    strict: bool,
    report: LoadReport,
) -> dict[str, tuple[str, ...]]:
    """Read one split file, appending to ``histories``; returns ``{user: items of this split}``."""
    source = LineSource(path)
    out: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, int] = {}
    lines = 0
    for text in source:
        line = source.line
        tokens = text.split()
        if not tokens:
            continue
        lines += 1
        if line in source.bad:
            skip_or_raise(source.bad_bytes_error(line, None), strict=strict, report=report)
            continue
        try:
            user = _index(tokens[0], path, line, "user_id")
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        if user in first_line:
            problem = DataError(
                f"user {user!r} has a second line in this file (first at line {first_line[user]})",
                path=path,
                line=line,
                field="user_id",
            )
            skip_or_raise(problem, strict=strict, report=report, kind="duplicate_user")
            continue
        first_line[user] = line
        history = histories.setdefault(user, [])
        user_seen = seen.setdefault(user, {})
        kept: list[str] = []
        for position, token in enumerate(tokens[1:], 1):
            try:
                item = _index(token, path, line, "item_id")
            except DataError as error:
                skip_or_raise(error, strict=strict, report=report, kind="invalid_item")
                continue
            if item not in items:
                problem = DataError(
                    f"item {item!r} (token {position} after the user) is not in {AGENT4REC_ITEM_FILE}",
                    path=path,
                    line=line,
                    field="item_id",
                )
                skip_or_raise(problem, strict=strict, report=report, kind="unknown_item")
                continue
            before = user_seen.get(item)
            if before is not None:
                same = before.split == split
                where = "earlier on this line" if same else f"{before.split}.txt:{before.line}"
                problem = DataError(
                    f"user {user!r} lists item {item!r} again (token {position} after the user; first {where})",
                    path=path,
                    line=line,
                    field="item_id",
                )
                kind = "duplicate_interaction" if same else "cross_split_duplicate"
                skip_or_raise(problem, strict=strict, report=report, kind=kind)
                continue
            user_seen[item] = _Seen(split, line)
            kept.append(item)
        history.extend(kept)
        out[user] = tuple(kept)
    if lines == 0:
        raise DataError("file holds no user lines", path=path)
    return out


def _load_items(path: Path, strict: bool, report: LoadReport) -> tuple[dict[str, Item], dict[str, float]]:
    items: dict[str, Item] = {}
    mean_rating: dict[str, float] = {}
    first_line: dict[str, int] = {}
    rows = iter_csv_rows(path, required=("movie_id", "title", "genres", "summary"), strict=strict, report=report)
    for line, row in rows:
        try:
            item_id = _index(row["movie_id"].strip(), path, line, "movie_id")
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        if item_id in items:
            problem = DataError(
                f"duplicate movie id {item_id!r} (first at line {first_line[item_id]})",
                path=path,
                line=line,
                field="movie_id",
            )
            skip_or_raise(problem, strict=strict, report=report, kind="duplicate_item")
            continue
        raw_rating = row.get("rating", "")
        if raw_rating.strip():
            try:
                mean_rating[item_id] = parse_number(raw_rating, path, line, "rating")
            except DataError as error:
                skip_or_raise(error, strict=strict, report=report, kind="invalid_value")
        genres = ", ".join(g for g in (part.strip() for part in row["genres"].split("|")) if g)
        fields = freeze_fields([("genres", genres), ("summary", row["summary"].strip())])
        first_line[item_id] = line
        items[item_id] = Item(item_id, row["title"].strip(), fields)
    require_rows(len(items), path, "movies")
    return items, mean_rating
