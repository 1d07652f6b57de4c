"""Generic table loader: CSV, JSON lines or Parquet with a column mapping."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personalens.data._validate import (
    Deduper,
    ItemTable,
    LoadReport,
    check_scale,
    iter_csv_rows,
    iter_jsonl,
    parse_id,
    parse_label,
    parse_rating,
    parse_text,
    parse_timestamp,
    require_columns,
    require_rows,
    skip_or_raise,
)
from personalens.data.records import Dataset, Interaction
from personalens.errors import BackendUnavailable, DataError

TableFormat = Literal["csv", "jsonl", "parquet"]

_EXTENSIONS: dict[str, TableFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Which columns of a table hold what. ``user`` and ``item`` are required; the rest are optional.

    ``title`` and ``item_fields`` describe the item (``item_fields`` go to :attr:`Item.fields` under the
    column name); ``text`` is the user's own text about the item (a review).
    """

    user: str
    item: str
    rating: str | None = None
    label: str | None = None
    timestamp: str | None = None
    text: str | None = None
    title: str | None = None
    item_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_fields", tuple(self.item_fields))
        names = self.columns()
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"column names must be non-empty strings, not {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"a column is mapped twice: {names}")

    def columns(self) -> list[str]:
        """Every mapped column, in mapping order."""
        optional = [self.rating, self.label, self.timestamp, self.text, self.title]
        return [self.user, self.item, *[c for c in optional if c is not None], *self.item_fields]


def infer_format(path: str | Path) -> TableFormat:
    """The table format from the file extension (``.csv``, ``.jsonl``/``.ndjson``, ``.parquet``/``.pq``)."""
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        raise DataError(
            f"cannot infer the format from the extension {suffix or '(none)'!r}; pass format='csv', 'jsonl' "
            "or 'parquet'",
            path=path,
        ) from None


def load_table(
    path: str | Path,
    *,
    columns: ColumnMap,
    format: TableFormat | None = None,
    name: str | None = None,
    rating_scale: tuple[float, float, float] | None = None,
    strict: bool = True,
    on_duplicate: Literal["error", "drop", "keep"] = "error",
    delimiter: str = ",",
) -> Dataset:
    """Load interactions from a CSV (with header), JSON-lines or Parquet file.

    Timestamps may be Unix seconds or ISO-8601 text (naive times are UTC); labels may be true/false, 1/0 or
    like/dislike. With ``rating_scale`` every rating must lie on the scale. Items are built from the rows; an
    item seen again must carry the same title and fields (empty values are filled in later).

    ``strict=False`` skips bad rows instead of failing and counts them in ``meta["load_report"]``; missing
    columns and empty files always fail. Exact duplicate rows (same values in every mapped column) fail unless
    ``on_duplicate`` is ``"drop"`` or ``"keep"``. Parquet needs the ``parquet`` extra (pyarrow); its "line" in
    errors is the 1-based row number.
    """
    path = Path(path)
    scale = check_scale(rating_scale)
    fmt = format or infer_format(path)
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ValueError(f"format must be 'csv', 'jsonl' or 'parquet', not {fmt!r}")
    report = LoadReport()
    deduper = Deduper(on_duplicate, report)
    items = ItemTable(strict=strict, report=report)
    interactions: list[Interaction] = []
    wanted = columns.columns()
    rows: Iterator[tuple[int, dict[str, Any]]]
    if fmt == "csv":
        rows = iter_csv_rows(path, required=wanted, delimiter=delimiter, strict=strict, report=report)
    elif fmt == "jsonl":
        rows = iter_jsonl(path, strict=strict, report=report)
    else:
        rows = _iter_parquet(path, wanted)
    for line, row in rows:
        try:
            if fmt == "jsonl":
                require_columns(list(row), wanted, path, line)
            key = tuple(row[c] for c in wanted) if fmt == "csv" else json.dumps([row[c] for c in wanted], default=str)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        if not deduper.keep(key, path, line):
            continue
        try:
            interaction = _row_to_interaction(row, columns, scale, items, path, line)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        interactions.append(interaction)
    require_rows(len(interactions), path)
    return Dataset(
        name or path.stem,
        items.items,
        interactions,
        scale,
        {"source": str(path), "format": fmt, "load_report": report},
    )


def _row_to_interaction(
    row: dict[str, Any],
    columns: ColumnMap,
    scale: tuple[float, float, float] | None,
    items: ItemTable,
    path: Path,
    line: int,
) -> Interaction:
    user = parse_id(row[columns.user], path, line, columns.user)
    item = parse_id(row[columns.item], path, line, columns.item)
    rating = label = timestamp = text = None
    if columns.rating is not None:
        rating = parse_rating(row[columns.rating], scale, path, line, columns.rating)
    if columns.label is not None:
        label = parse_label(row[columns.label], path, line, columns.label)
    if columns.timestamp is not None:
        timestamp = parse_timestamp(row[columns.timestamp], path, line, columns.timestamp)
    if columns.text is not None:
        text = parse_text(row[columns.text], path, line, columns.text) or None
    title = parse_text(row[columns.title], path, line, columns.title).strip() if columns.title else ""
    fields = [(f, parse_text(row[f], path, line, f).strip()) for f in columns.item_fields]
    items.add(item, title, fields, path, line, where=lambda key: (columns.title or key) if key == "title" else key)
    return Interaction(user, item, rating, label, timestamp, text)


def _iter_parquet(path: Path, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise BackendUnavailable(
            "reading Parquet needs pyarrow; install the 'parquet' extra: pip install 'personalens[parquet]'"
        ) from None
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
    present = list(parquet.schema_arrow.names)
    require_columns(present, wanted, path, line=None)
    if parquet.metadata.num_rows == 0:
        raise DataError("file has no data rows", path=path)
    row = 0
    batches = parquet.iter_batches(batch_size=65536, columns=list(wanted))
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:
            raise DataError(f"cannot read Parquet data: {exc}", path=path, line=row + 1) from None
        if batch is None:
            return
        for record in batch.to_pylist():
            row += 1
            yield row, record
