"""DeePer's rating windows: ``test_iteration_k.jsonl`` rounds and ``train_users.csv`` training users.

Items are identified by their titles (DeePer gives no item ids); a window is a :class:`Window` of
:class:`Interaction` records with ``item_id = title`` and the rating, in the file's order, without timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personalens.data._validate import (
    LoadReport,
    bad_type,
    check_scale,
    iter_csv_rows,
    iter_jsonl,
    parse_id,
    parse_literal,
    parse_rating,
    require_columns,
    skip_or_raise,
)
from personalens.data.records import Interaction, Window
from personalens.errors import DataError

RatingScale = tuple[float, float, float]

#: Rating scales of DeePer's domains: Amazon and Google Local 1-5, MovieLens 0.5-5 in halves, Food.com 0-5.
DEEPER_RATING_SCALES: dict[str, RatingScale] = {
    "movielens_20m": (0.5, 5.0, 0.5),
    "food_com": (0.0, 5.0, 1.0),
    "google_local": (1.0, 5.0, 1.0),
    "amazon": (1.0, 5.0, 1.0),
}

_ITERATION_FILE = re.compile(r"^test_iteration_(\d+)\.jsonl$")
_WINDOW_KEY = re.compile(r"^[IU](\d+)$")
_WINDOW_COLUMN = re.compile(r"^windows_(\d+)$")


def deeper_rating_scale(dataset_name: str) -> RatingScale | None:
    """The rating scale of a DeePer domain (any ``amazon_*`` name is 1-5), or ``None`` if unknown."""
    if dataset_name in DEEPER_RATING_SCALES:
        return DEEPER_RATING_SCALES[dataset_name]
    if dataset_name.startswith("amazon_"):
        return DEEPER_RATING_SCALES["amazon"]
    return None


@dataclass(frozen=True, slots=True)
class DeeperRound:
    """One user in one update round: the previous, current and future windows.

    ``windows[i].index`` is the window number used in the file (round ``k`` holds windows ``k-1, k, k+1``).
    """

    user_id: str
    iteration: int
    item_type: str
    dataset_name: str
    windows: tuple[Window, Window, Window]
    split: str = ""
    source_url: str = ""

    @property
    def previous(self) -> Window:
        return self.windows[0]

    @property
    def current(self) -> Window:
        return self.windows[1]

    @property
    def future(self) -> Window:
        return self.windows[2]


@dataclass(frozen=True, slots=True)
class DeeperTrainUser:
    """One DeePer training user with consecutive windows ``windows_0 .. windows_n``."""

    user_id: str
    item_type: str
    split: str
    dataset_name: str
    source_url: str
    windows: tuple[Window, ...]


def _resolve_scale(rating_scale: Any, dataset_name: str) -> RatingScale | None:
    if rating_scale == "auto":
        return deeper_rating_scale(dataset_name)
    return check_scale(rating_scale)


def _window(
    user: str,
    index: int,
    titles: Any,
    ratings: Any,
    scale: RatingScale | None,
    path: Path,
    line: int,
    items_field: str,
    ratings_field: str,
    report: LoadReport,
) -> Window:
    """Validate one window: equal non-zero lengths, titles are strings, ratings are numbers on the scale."""
    if not isinstance(titles, list):
        raise bad_type(titles, "a list of item titles", path, line, items_field)
    if not isinstance(ratings, list):
        raise bad_type(ratings, "a list of ratings", path, line, ratings_field)
    if not titles and not ratings:
        raise DataError("empty window (no items)", path=path, line=line, field=items_field)
    if len(titles) != len(ratings):
        raise DataError(
            f"{len(titles)} items but {len(ratings)} ratings in {ratings_field}",
            path=path,
            line=line,
            field=items_field,
        )
    interactions = []
    for position, (title, rating) in enumerate(zip(titles, ratings, strict=True)):
        if not isinstance(title, str):
            raise bad_type(title, "an item title (string)", path, line, f"{items_field}[{position}]")
        if isinstance(rating, str | bool) or not isinstance(rating, int | float):
            raise bad_type(rating, "a number", path, line, f"{ratings_field}[{position}]")
        value = parse_rating(rating, scale, path, line, f"{ratings_field}[{position}]")
        if not title.strip():
            report.add(
                "empty_title",
                DataError("empty item title (kept)", path=path, line=line, field=f"{items_field}[{position}]"),
            )
        interactions.append(Interaction(user, title, value))
    return Window(user, index, tuple(interactions))


def _text(obj: dict[str, Any], key: str, path: Path, line: int, *, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise DataError(f"missing key; keys present: {sorted(obj)}", path=path, line=line, field=key)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise bad_type(value, "a string", path, line, key)
    return value


def iteration_files(directory: str | Path) -> list[tuple[int, Path]]:
    """The ``test_iteration_k.jsonl`` files of ``directory`` as ``(k, path)``, by ``k``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("DeePer directory not found", path=directory)
    found = []
    for path in directory.iterdir():
        match = _ITERATION_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    if not found:
        raise DataError("no test_iteration_<k>.jsonl files", path=directory)
    return sorted(found)


def load_deeper_iterations(
    directory: str | Path,
    *,
    iterations: Iterable[int] | None = None,
    rating_scale: RatingScale | None | Literal["auto"] = "auto",
    strict: bool = True,
    report: LoadReport | None = None,
) -> list[DeeperRound]:
    """Read DeePer's ``test_iteration_k.jsonl`` files (all or only ``iterations``), by round, then line.

    Each line holds ``id``, ``iteration`` (must equal ``k``), ``item_type``, ``dataset_name`` and 3 windows
    ``I<j>``/``U<j>`` (titles / ratings) with consecutive ``j``: ``U0..U2`` in round 1, ``U1..U3`` in round 2,
    and so on. Titles and ratings must have the same non-zero length and ratings must be numbers on the scale
    (``"auto"``: from :func:`deeper_rating_scale`; ``None``: any number). Empty titles are kept and counted as
    ``empty_title``; repeated titles are kept. A user id may appear once per round.

    ``strict=False`` skips bad lines and counts them in ``report`` (pass a :class:`LoadReport` to see them).
    """
    report = report if report is not None else LoadReport()
    wanted = set(iterations) if iterations is not None else None
    files = [(k, p) for k, p in iteration_files(directory) if wanted is None or k in wanted]
    if wanted is not None and not files:
        raise DataError(f"none of the iterations {sorted(wanted)} exist", path=directory)
    rounds: list[DeeperRound] = []
    for k, path in files:
        seen: dict[str, int] = {}
        for line, obj in iter_jsonl(path, strict=strict, report=report):
            try:
                item = _round(obj, k, path, line, rating_scale, seen, report)
            except DataError as error:
                skip_or_raise(error, strict=strict, report=report)
                continue
            seen[item.user_id] = line
            rounds.append(item)
    return rounds


def _round(
    obj: dict[str, Any],
    k: int,
    path: Path,
    line: int,
    rating_scale: Any,
    seen: dict[str, int],
    report: LoadReport,
) -> DeeperRound:
    require_columns(list(obj), ["id", "iteration", "item_type", "dataset_name"], path, line)
    user = parse_id(obj["id"], path, line, "id")
    if user in seen:
        raise DataError(
            f"duplicate user id {user!r} in this round (first at line {seen[user]})",
            path=path,
            line=line,
            field="id",
        )
    iteration = obj["iteration"]
    if isinstance(iteration, bool) or not isinstance(iteration, int):
        raise bad_type(iteration, "an integer", path, line, "iteration")
    if iteration != k:
        raise DataError(
            f"says iteration {iteration} but the file name says {k}", path=path, line=line, field="iteration"
        )
    dataset_name = _text(obj, "dataset_name", path, line)
    scale = _resolve_scale(rating_scale, dataset_name)
    numbers = sorted({int(m.group(1)) for key in obj if (m := _WINDOW_KEY.match(key))})
    if len(numbers) != 3 or numbers[2] - numbers[0] != 2:
        raise DataError(
            f"expected three consecutive windows I<j>/U<j>, found window numbers {numbers}",
            path=path,
            line=line,
            field="U" if not numbers else f"U{numbers[0]}",
        )
    windows = []
    for j in numbers:
        for key in (f"I{j}", f"U{j}"):
            if key not in obj:
                raise DataError(f"missing key; keys present: {sorted(obj)}", path=path, line=line, field=key)
        windows.append(_window(user, j, obj[f"I{j}"], obj[f"U{j}"], scale, path, line, f"I{j}", f"U{j}", report))
    return DeeperRound(
        user_id=user,
        iteration=iteration,
        item_type=_text(obj, "item_type", path, line),
        dataset_name=dataset_name,
        windows=(windows[0], windows[1], windows[2]),
        split=_text(obj, "split", path, line, required=False),
        source_url=_text(obj, "source_url", path, line, required=False),
    )


def load_deeper_train_users(
    path: str | Path,
    *,
    rating_scale: RatingScale | None | Literal["auto"] = "auto",
    strict: bool = True,
    report: LoadReport | None = None,
) -> list[DeeperTrainUser]:
    """Read DeePer's ``train_users.csv``: ``id,item_type,split,dataset_name,source_url,windows_0..windows_n``.

    Each window cell is a Python-literal dict ``{'items': [...], 'ratings': [...]}`` parsed with
    :func:`ast.literal_eval`; lists must have the same non-zero length and ratings must be numbers on the
    scale (``"auto"``: from the row's ``dataset_name``). Window columns must be numbered ``0..n`` without
    gaps. A user id may appear once. ``strict=False`` skips bad rows and counts them in ``report``.
    """
    path = Path(path)
    report = report if report is not None else LoadReport()
    users: list[DeeperTrainUser] = []
    seen: dict[str, int] = {}
    columns: list[str] | None = None
    for line, row in iter_csv_rows(
        path, required=("id", "item_type", "dataset_name", "windows_0"), strict=strict, report=report
    ):
        if columns is None:
            columns = _window_columns(list(row), path)
        try:
            user = _train_user(row, columns, path, line, rating_scale, seen, report)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        seen[user.user_id] = line
        users.append(user)
    return users


def _window_columns(names: Sequence[str], path: Path) -> list[str]:
    numbered = sorted((int(m.group(1)), name) for name in names if (m := _WINDOW_COLUMN.match(name)))
    for expected, (number, name) in enumerate(numbered):
        if number != expected:
            raise DataError(
                f"window columns must be numbered 0..n without gaps; found {[n for _, n in numbered]}",
                path=path,
                line=1,
                field=name,
            )
    return [name for _, name in numbered]


def _train_user(
    row: dict[str, str],
    columns: list[str],
    path: Path,
    line: int,
    rating_scale: Any,
    seen: dict[str, int],
    report: LoadReport,
) -> DeeperTrainUser:
    user = parse_id(row["id"], path, line, "id")
    if user in seen:
        raise DataError(f"duplicate user id {user!r} (first at line {seen[user]})", path=path, line=line, field="id")
    dataset_name = row["dataset_name"].strip()
    scale = _resolve_scale(rating_scale, dataset_name)
    windows = []
    for index, column in enumerate(columns):
        cell = row[column]
        if not cell.strip():
            raise DataError("missing value", path=path, line=line, field=column)
        value = parse_literal(cell, path, line, column)
        if not isinstance(value, dict):
            raise bad_type(value, "a dict {'items': [...], 'ratings': [...]}", path, line, column)
        for key in ("items", "ratings"):
            if key not in value:
                raise DataError(
                    f"window has no {key!r} key; keys present: {sorted(map(str, value))}",
                    path=path,
                    line=line,
                    field=f"{column}.{key}",
                )
        windows.append(
            _window(
                user,
                index,
                value["items"],
                value["ratings"],
                scale,
                path,
                line,
                f"{column}.items",
                f"{column}.ratings",
                report,
            )
        )
    return DeeperTrainUser(
        user_id=user,
        item_type=row["item_type"].strip(),
        split=row.get("split", "").strip(),
        dataset_name=dataset_name,
        source_url=row.get("source_url", "").strip(),
        windows=tuple(windows),
    )
