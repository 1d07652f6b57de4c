"""Shared reading, parsing and validation helpers for the data loaders.

Every helper raises :class:`~personalens.errors.DataError` naming the file, the 1-based line (or row) and the
field. Files are read as bytes and decoded line by line, so invalid bytes are reported with their line and
byte offset and large files are streamed rather than loaded whole.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from personalens.data.records import Item, freeze_fields
from personalens.errors import DataError

OnDuplicate = Literal["error", "drop", "keep"]
RatingScale = tuple[float, float, float]

_MAX_EXAMPLES = 20
_CSV_FIELD_LIMIT = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------------- report


@dataclass
class LoadReport:
    """What a loader skipped, dropped or noted instead of failing.

    ``counts`` maps a kind (``"invalid_row"``, ``"unknown_item"``, ``"duplicate_row"``, ``"item_conflict"``,
    ``"empty_title"``, …) to how often it happened; ``examples`` keeps the first messages verbatim.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, kind: str, what: DataError | str) -> None:
        """Count one event of ``kind`` and keep its message if fewer than 20 are kept."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{kind}: {what}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def get(self, kind: str) -> int:
        return self.counts.get(kind, 0)


def skip_or_raise(error: DataError, *, strict: bool, report: LoadReport, kind: str = "invalid_row") -> None:
    """Raise ``error`` when ``strict``; otherwise count it in ``report`` so the caller can skip the row."""
    if strict:
        raise error
    report.add(kind, error)


def check_on_duplicate(value: str) -> OnDuplicate:
    if value not in ("error", "drop", "keep"):
        raise ValueError(f"on_duplicate must be 'error', 'drop' or 'keep', not {value!r}")
    return value  # type: ignore[return-value]


class Deduper:
    """Finds exact duplicate rows. ``error`` raises, ``drop`` skips and counts, ``keep`` does not track."""

    def __init__(self, on_duplicate: str, report: LoadReport) -> None:
        self.mode = check_on_duplicate(on_duplicate)
        self.report = report
        self._seen: dict[Any, tuple[str, int]] = {}

    def keep(self, key: Any, path: str | Path, line: int) -> bool:
        """True if the row with ``key`` at ``line`` should be kept."""
        if self.mode == "keep":
            return True
        here = (str(path), line)
        first = self._seen.setdefault(key, here)
        if first == here:
            return True
        where = f"line {first[1]}" if first[0] == here[0] else f"{first[0]}:{first[1]}"
        error = DataError(f"exact duplicate of {where} (pass on_duplicate='drop' to drop it)", path=path, line=line)
        if self.mode == "error":
            raise error
        self.report.add("duplicate_row", error)
        return False


# --------------------------------------------------------------------------------------------------- reading


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def find_bad_field(value: Any, prefix: str = "") -> str | None:
    """The path (``key``, ``key[i]``, ``a.b``) of the first string in ``value`` with an undecodable byte."""
    if isinstance(value, str):
        return (prefix or None) if _has_surrogate(value) else None
    if isinstance(value, Mapping):
        for key, inner in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(key, str) and _has_surrogate(key):
                return name
            found = find_bad_field(inner, name)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            found = find_bad_field(inner, f"{prefix}[{index}]")
            if found:
                return found
    return None


class LineSource:
    """Decoded physical lines of a file, 1-based, with undecodable bytes remembered per line.

    Undecodable bytes are decoded with ``surrogateescape`` so the caller can find which field holds them and
    raise :meth:`bad_bytes_error`. A UTF-8 byte-order mark on the first line is dropped.
    """

    def __init__(self, path: str | Path, encoding: str = "utf-8") -> None:
        self.path = Path(path)
        self.encoding = encoding
        self.line = 0
        self.bad: dict[int, tuple[int, int, int]] = {}  # line -> (file offset, offset in line, byte value)

    def __iter__(self) -> Iterator[str]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            raise DataError("file not found", path=self.path) from None
        except IsADirectoryError:
            raise DataError("expected a file, found a directory", path=self.path) from None
        try:
            offset = 0
            for number, raw in enumerate(handle, 1):
                self.line = number
                try:
                    text = raw.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    text = raw.decode(self.encoding, "surrogateescape")
                    self.bad[number] = (offset + exc.start, exc.start, raw[exc.start])
                if number == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                offset += len(raw)
                yield text
        finally:
            handle.close()

    def bad_line_in(self, first: int, last: int) -> int | None:
        """The first line in ``first..last`` that held undecodable bytes, if any."""
        if not self.bad:
            return None
        for number in range(first, last + 1):
            if number in self.bad:
                return number
        return None

    def bad_bytes_error(self, line: int, field: str | None) -> DataError:
        file_offset, line_offset, byte = self.bad[line]
        return DataError(
            f"not valid {self.encoding}: byte 0x{byte:02x} at byte offset {file_offset} "
            f"(byte {line_offset} of the line)",
            path=self.path,
            line=line,
            field=field,
        )


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, min(sys.maxsize, _CSV_FIELD_LIMIT)))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _check_header(header: Sequence[str], path: Path) -> list[str]:
    names = [name.strip() for name in header]
    seen: set[str] = set()
    for name in names:
        if not name:
            raise DataError(f"empty column name in header {names}", path=path, line=1)
        if name in seen:
            raise DataError(f"duplicate column name; columns present: {names}", path=path, line=1, field=name)
        seen.add(name)
    return names


def require_columns(present: Sequence[str], required: Iterable[str], path: str | Path, line: int | None = 1) -> None:
    """Fail naming the first missing column and listing the columns that are present."""
    missing = [name for name in required if name not in present]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; columns present: {list(present)}",
            path=path,
            line=line,
            field=missing[0],
        )


def iter_csv_rows(
    path: str | Path,
    *,
    required: Iterable[str] = (),
    delimiter: str = ",",
    encoding: str = "utf-8",
    strict: bool = True,
    report: LoadReport | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header, as ``(line, {column: value})``.

    ``line`` is the physical line where the record starts (the header is line 1); blank lines are skipped.
    With ``strict=False`` rows with the wrong number of fields or undecodable bytes are counted in ``report``
    and skipped; a missing header or missing required columns always raise.
    """
    source = LineSource(path, encoding)
    report = report if report is not None else LoadReport()
    with _large_csv_fields():
        reader = csv.reader(source, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            while header is not None and not header:  # blank lines before the header
                header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"malformed CSV header: {exc}", path=source.path, line=reader.line_num) from None
        if header is None:
            raise DataError("file is empty (no header line)", path=source.path, line=None)
        bad_header = source.bad_line_in(1, reader.line_num)
        if bad_header is not None:
            raise source.bad_bytes_error(bad_header, None)
        names = _check_header(header, source.path)
        require_columns(names, required, source.path)
        last = reader.line_num
        rows = skipped = 0
        while True:
            start = last + 1
            try:
                values = next(reader, None)
            except csv.Error as exc:
                raise DataError(f"malformed CSV: {exc}", path=source.path, line=reader.line_num) from None
            if values is None:
                break
            last = reader.line_num
            if not values:
                continue
            row = dict(zip(names, values, strict=False))
            bad = source.bad_line_in(start, last)
            if bad is not None:
                skip_or_raise(source.bad_bytes_error(bad, find_bad_field(row)), strict=strict, report=report)
                skipped += 1
                continue
            if len(values) != len(names):
                error = field_count_error(names, values, f"{names}", source.path, start)
                skip_or_raise(error, strict=strict, report=report)
                skipped += 1
                continue
            rows += 1
            yield start, row
        if rows == 0 and not skipped:
            raise DataError("no data rows after the header", path=source.path, line=None)


def iter_split_rows(
    path: str | Path,
    *,
    separator: str,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    required: Iterable[str] = (),
    strict: bool = True,
    report: LoadReport | None = None,
    on_header: Callable[[list[str]], list[str]] | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a plain separated file without quoting (``::``, ``|``, tab), as ``(line, {column: value})``.

    With ``names=None`` the first non-blank line is the header; ``on_header`` may check it and return the
    column names to use. Blank lines are skipped.
    """
    source = LineSource(path, encoding)
    report = report if report is not None else LoadReport()
    columns = list(names) if names is not None else None
    rows = skipped = 0
    for text in source:
        line = source.line
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        values = text.split(separator)
        if columns is None:
            if line in source.bad:
                raise source.bad_bytes_error(line, None)
            columns = _check_header(values, source.path)
            if on_header is not None:
                columns = _check_header(on_header(columns), source.path)
            require_columns(columns, required, source.path, line)
            continue
        row = dict(zip(columns, values, strict=False))
        if line in source.bad:
            skip_or_raise(source.bad_bytes_error(line, find_bad_field(row)), strict=strict, report=report)
            skipped += 1
            continue
        if len(values) != len(columns):
            error = field_count_error(columns, values, f"separated by {separator!r}", source.path, line)
            skip_or_raise(error, strict=strict, report=report)
            skipped += 1
            continue
        rows += 1
        yield line, row
    if columns is None:
        raise DataError("file is empty (no header line)", path=source.path, line=None)
    if rows == 0 and not skipped:
        raise DataError("file has no data rows", path=source.path, line=None)


def iter_jsonl(
    path: str | Path, *, strict: bool = True, report: LoadReport | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON objects of a JSON-lines file, as ``(line, object)``. Blank lines are skipped."""
    source = LineSource(path, "utf-8")
    report = report if report is not None else LoadReport()
    rows = skipped = 0
    for text in source:
        line = source.line
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, nested too deeply
            error = (
                source.bad_bytes_error(line, None)
                if line in source.bad
                else DataError(_json_problem(exc), path=source.path, line=line)
            )
            skip_or_raise(error, strict=strict, report=report)
            skipped += 1
            continue
        if line in source.bad:
            skip_or_raise(source.bad_bytes_error(line, find_bad_field(value)), strict=strict, report=report)
            skipped += 1
            continue
        if not isinstance(value, dict):
            error = DataError(f"expected a JSON object, found {type(value).__name__}", path=source.path, line=line)
            skip_or_raise(error, strict=strict, report=report)
            skipped += 1
            continue
        rows += 1
        yield line, value
    if rows == 0 and not skipped:
        raise DataError("file is empty (no JSON lines)", path=source.path, line=None)


def read_json_document(path: str | Path) -> Any:
    """A whole JSON document. Undecodable bytes and syntax errors are reported with their line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("expected a file, found a directory", path=path) from None
    if not data.strip():
        raise DataError("file is empty", path=path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise DataError(
            f"not valid utf-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"(byte {exc.start - line_start} of the line)",
            path=path,
            line=line,
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(_json_problem(exc), path=path, line=exc.lineno) from None
    except (ValueError, RecursionError) as exc:  # a number with too many digits, or nested too deeply
        raise DataError(_json_problem(exc), path=path) from None


def _json_problem(exc: BaseException) -> str:
    """The reason ``json.loads`` failed, for a :class:`DataError` message."""
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON at column {exc.colno}: {exc.msg}"
    if isinstance(exc, RecursionError):
        return "malformed JSON: nested too deeply"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"malformed JSON: {reason[:120]}"


# --------------------------------------------------------------------------------------------------- values


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_id(value: Any, path: str | Path | None, line: int | None, field: str) -> str:
    """A non-empty identifier: a string (stripped) or an integer."""
    if type(value) is str:
        text = value.strip()
        if text:
            return text
    if _missing(value):
        raise DataError("missing value", path=path, line=line, field=field)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"not an identifier (string or integer): {value!r}", path=path, line=line, field=field)


def parse_number(value: Any, path: str | Path | None, line: int | None, field: str) -> float:
    """A finite number from an int, float or numeric string (booleans are rejected)."""
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
            raise DataError(f"not a finite number: {value!r}", path=path, line=line, field=field)
    if _missing(value):
        raise DataError("missing value", path=path, line=line, field=field)
    if isinstance(value, bool):
        raise DataError(f"not a number: {value!r}", path=path, line=line, field=field)
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range (e.g. 10**400 from JSON)
            raise DataError(f"not a finite number: {_short(str(value))}", path=path, line=line, field=field) from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise DataError(f"not a number: {value!r}", path=path, line=line, field=field) from None
    else:
        raise DataError(f"not a number: {value!r}", path=path, line=line, field=field)
    if not math.isfinite(number):
        raise DataError(f"not a finite number: {value!r}", path=path, line=line, field=field)
    return number


def check_scale(scale: Any) -> RatingScale | None:
    """Validate a ``(low, high, step)`` rating scale; ``None`` passes through."""
    if scale is None:
        return None
    try:
        low, high, step = (float(x) for x in scale)
    except (TypeError, ValueError):
        raise ValueError(f"rating_scale must be (low, high, step), not {scale!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(step)) or high < low or step <= 0:
        raise ValueError(f"rating_scale must have low <= high and step > 0, not {scale!r}")
    return (low, high, step)


def on_scale(number: float, scale: RatingScale) -> bool:
    low, high, step = scale
    if number < low - 1e-9 or number > high + 1e-9:
        return False
    steps = (number - low) / step
    return abs(steps - round(steps)) < 1e-6


def parse_rating(value: Any, scale: RatingScale | None, path: str | Path | None, line: int | None, field: str) -> float:
    """A rating; when ``scale`` is given it must lie in ``[low, high]`` on a multiple of ``step``."""
    number = parse_number(value, path, line, field)
    if scale is not None and not on_scale(number, scale):
        low, high, step = scale
        raise DataError(
            f"rating {value!r} is outside the scale {low:g}..{high:g} in steps of {step:g}",
            path=path,
            line=line,
            field=field,
        )
    return number


_TRUE = {"true", "1", "1.0", "like", "yes"}
_FALSE = {"false", "0", "0.0", "dislike", "no"}


def parse_label(value: Any, path: str | Path | None, line: int | None, field: str) -> bool:
    """A like/dislike label: true/false, 1/0, like/dislike, yes/no (any case), or a boolean."""
    if isinstance(value, bool):
        return value
    if _missing(value):
        raise DataError("missing value", path=path, line=line, field=field)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise DataError(f"not a label (true/false, 1/0, like/dislike): {value!r}", path=path, line=line, field=field)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_datetime(value: Any, path: str | Path | None, line: int | None, field: str) -> datetime:
    """A timezone-aware datetime from ISO-8601 text, a year (``2004``), ``YYYY-MM``, a date or a datetime.

    Naive values are taken as UTC.
    """
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 9999:
        return datetime(value, 1, 1, tzinfo=UTC)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            if len(text) == 4 and text.isdigit():
                return datetime(int(text), 1, 1, tzinfo=UTC)
            if len(text) == 7 and text[4] == "-" and text[:4].isdigit() and text[5:].isdigit():
                return datetime(int(text[:4]), int(text[5:]), 1, tzinfo=UTC)
            return _aware(datetime.fromisoformat(text))
        except ValueError:
            pass
    if _missing(value):
        raise DataError("missing value", path=path, line=line, field=field)
    raise DataError(f"not a date (ISO-8601 or a year): {value!r}", path=path, line=line, field=field)


def parse_timestamp(value: Any, path: str | Path | None, line: int | None, field: str) -> float:
    """Unix seconds from an int/float, a numeric string, ISO-8601 text or a datetime (naive means UTC)."""
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            return parse_number(number, path, line, field)
    if isinstance(value, datetime | date):
        return parse_datetime(value, path, line, field).timestamp()
    if isinstance(value, bool):
        raise DataError(f"not a timestamp: {value!r}", path=path, line=line, field=field)
    if isinstance(value, int | float):
        return parse_number(value, path, line, field)
    if _missing(value):
        raise DataError("missing value", path=path, line=line, field=field)
    if isinstance(value, str):
        text = value.strip()
        try:
            return _aware(datetime.fromisoformat(text)).timestamp()
        except ValueError:
            pass
    raise DataError(f"not a timestamp (Unix seconds or ISO-8601): {value!r}", path=path, line=line, field=field)


def parse_text(value: Any, path: str | Path | None, line: int | None, field: str) -> str:
    """Text: strings as given, lists joined by ``", "``, numbers as text, None as ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        parts = []
        for index, inner in enumerate(value):
            if isinstance(inner, str):
                if inner.strip():
                    parts.append(inner.strip())
            elif isinstance(inner, int | float) and not isinstance(inner, bool):
                parts.append(str(inner))
            else:
                raise DataError(f"list element {index} is not text: {inner!r}", path=path, line=line, field=field)
        return ", ".join(parts)
    raise DataError(f"not text: {type(value).__name__} {value!r}", path=path, line=line, field=field)


def parse_literal(value: str, path: str | Path | None, line: int | None, field: str) -> Any:
    """A Python literal parsed with :func:`ast.literal_eval` (never ``eval``)."""
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        shown = value if len(value) <= 60 else value[:57] + "..."
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0]
        raise DataError(f"malformed Python literal ({reason}): {shown!r}", path=path, line=line, field=field) from None


def literal_text(value: str, path: str | Path | None, line: int | None, field: str) -> str:
    """A Python-literal list of strings (``"['Pop', 'Rock']"``) as ``"Pop, Rock"``; empty text is ``""``."""
    if not value.strip():
        return ""
    parsed = parse_literal(value, path, line, field)
    if isinstance(parsed, str):
        return parsed
    if not isinstance(parsed, list | tuple):
        raise DataError(f"expected a list literal, found {type(parsed).__name__}", path=path, line=line, field=field)
    return parse_text(list(parsed), path, line, field)


def field_count_error(
    names: Sequence[str], values: Sequence[str], detail: str, path: str | Path | None, line: int | None
) -> DataError:
    """A row with the wrong number of fields; names the first missing field when the row is short."""
    missing = names[len(values)] if len(values) < len(names) else None
    return DataError(f"expected {len(names)} fields {detail}, found {len(values)}", path=path, line=line, field=missing)


def bad_type(value: Any, expected: str, path: str | Path | None, line: int | None, field: str) -> DataError:
    return DataError(
        f"expected {expected}, found {type(value).__name__} {value!r}"[:200],
        path=path,
        line=line,
        field=field,
    )


# --------------------------------------------------------------------------------------------------- items


class ItemTable:
    """Collects items from rows. Metadata of an item seen again must agree; empty values are filled in later.

    Disagreeing non-empty values raise with ``strict``, otherwise the first value is kept and counted as
    ``item_conflict``.
    """

    def __init__(self, *, strict: bool, report: LoadReport) -> None:
        self.items: dict[str, Item] = {}
        self._first: dict[str, int | None] = {}
        self.strict = strict
        self.report = report

    def add(
        self,
        item_id: str,
        title: str,
        fields: Sequence[tuple[str, str]],
        path: str | Path | None,
        line: int | None,
        where: Callable[[str], str] | None = None,
    ) -> None:
        """Add or merge one item. ``where(field)`` names the column that holds ``field`` in error messages."""
        known = self.items.get(item_id)
        if known is None:
            self.items[item_id] = Item(item_id, title, freeze_fields(fields))
            self._first[item_id] = line
            return
        changed = False
        new_title = known.title
        if title and title != known.title:
            if known.title:
                self._conflict(item_id, "title", known.title, title, path, line, where)
            else:
                new_title, changed = title, True
        merged = dict(known.fields)
        for key, value in fields:
            old = merged.get(key, "")
            if value and value != old:
                if old:
                    self._conflict(item_id, key, old, value, path, line, where)
                else:
                    merged[key] = value
                    changed = True
        if changed:
            self.items[item_id] = Item(item_id, new_title, freeze_fields(merged.items()))

    def _conflict(
        self,
        item_id: str,
        key: str,
        old: str,
        new: str,
        path: str | Path | None,
        line: int | None,
        where: Callable[[str], str] | None,
    ) -> None:
        first = self._first.get(item_id)
        at = f" (line {first})" if first is not None else ""
        error = DataError(
            f"item {item_id!r} has {key} {_short(old)!r}{at} but {_short(new)!r} here",
            path=path,
            line=line,
            field=where(key) if where else key,
        )
        skip_or_raise(error, strict=self.strict, report=self.report, kind="item_conflict")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_rows(count: int, path: str | Path, what: str = "interactions") -> None:
    if count == 0:
        raise DataError(f"no {what} left to load (every row was skipped or the file holds none)", path=path)
