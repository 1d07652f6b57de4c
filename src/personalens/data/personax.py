"""PersonaX's Amazon CSV format: one row per (user, item) with the item's metadata on every row."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from personalens.data._validate import (
    Deduper,
    ItemTable,
    LoadReport,
    check_scale,
    iter_csv_rows,
    literal_text,
    on_scale,
    parse_id,
    parse_number,
    parse_timestamp,
    require_rows,
    skip_or_raise,
)
from personalens.data.records import Dataset, Interaction
from personalens.errors import DataError

PERSONAX_REQUIRED = ("item_id", "user_id", "rating", "timestamp", "title")
#: Metadata columns used when present; ``category`` and ``description`` are Python-literal lists.
PERSONAX_OPTIONAL = ("brand", "category", "description")
_LITERAL_COLUMNS = ("category", "description")
_BINARY_SCALE = (0.0, 1.0, 1.0)
_STAR_SCALE = (1.0, 5.0, 1.0)


def load_personax_csv(
    path: str | Path,
    *,
    rating_scale: tuple[float, float, float] | None = None,
    strict: bool = True,
    on_duplicate: Literal["error", "drop", "keep"] = "error",
    name: str | None = None,
) -> Dataset:
    """Load a PersonaX CSV (``item_id,user_id,rating,timestamp,title,brand,category,description``).

    ``category`` and ``description`` hold Python-literal lists, parsed by :func:`ast.literal_eval` and joined
    with ``", "`` into ``Item.fields``; ``brand`` is plain text. Text is kept as written (HTML entities too).

    With ``rating_scale=None`` the scale is inferred: if every rating is 0 or 1 (PersonaX's binarised like /
    dislike) the scale is ``(0, 1, 1)``; otherwise the ratings must be Amazon stars on ``(1, 5, 1)``. On the
    ``(0, 1, 1)`` scale each interaction also gets ``label = rating == 1``. ``strict=False`` skips bad rows
    and counts them in ``meta["load_report"]``.
    """
    path = Path(path)
    scale = check_scale(rating_scale)
    report = LoadReport()
    deduper = Deduper(on_duplicate, report)
    items = ItemTable(strict=strict, report=report)
    interactions: list[Interaction] = []
    lines: list[int] = []
    optional: list[str] | None = None  # metadata columns present, known from the first row
    for line, row in iter_csv_rows(path, required=PERSONAX_REQUIRED, strict=strict, report=report):
        if optional is None:
            optional = [c for c in PERSONAX_OPTIONAL if c in row]
        if not deduper.keep(tuple(row.values()), path, line):
            continue
        try:
            user = parse_id(row["user_id"], path, line, "user_id")
            item = parse_id(row["item_id"], path, line, "item_id")
            rating = parse_number(row["rating"], path, line, "rating")
            if scale is not None and not on_scale(rating, scale):
                raise _off_scale(row["rating"], scale, path, line)
            timestamp = parse_timestamp(row["timestamp"], path, line, "timestamp")
            fields = []
            for column in optional:
                if column in _LITERAL_COLUMNS:
                    fields.append((column, literal_text(row[column], path, line, column).strip()))
                else:
                    fields.append((column, row[column].strip()))
            items.add(item, row["title"].strip(), fields, path, line)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        interactions.append(Interaction(user, item, rating, None, timestamp))
        lines.append(line)
    require_rows(len(interactions), path)
    if scale is None:
        if all(x.rating in (0.0, 1.0) for x in interactions):
            scale = _BINARY_SCALE
        else:
            scale = _STAR_SCALE
            kept = []
            for x, line in zip(interactions, lines, strict=True):
                if on_scale(x.rating or 0.0, scale):
                    kept.append(x)
                else:
                    skip_or_raise(_off_scale(x.rating, scale, path, line), strict=strict, report=report)
            interactions = kept
            require_rows(len(interactions), path)
    if scale == _BINARY_SCALE:
        interactions = [Interaction(x.user_id, x.item_id, x.rating, x.rating == 1.0, x.timestamp) for x in interactions]
    meta = {"source": str(path), "format": "personax-csv", "load_report": report}
    return Dataset(name or path.stem, items.items, interactions, scale, meta)


def _off_scale(value: object, scale: tuple[float, float, float], path: Path, line: int) -> DataError:
    low, high, step = scale
    return DataError(
        f"rating {value!r} is outside the scale {low:g}..{high:g} in steps of {step:g}",
        path=path,
        line=line,
        field="rating",
    )
