"""The shared parsing helpers behind every loader."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from personalens.data import LoadReport
from personalens.data._validate import (
    iter_csv_rows,
    literal_text,
    parse_datetime,
    parse_label,
    parse_rating,
    parse_timestamp,
)
from personalens.errors import DataError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000, 1700000000.0),
        ("1700000000.5", 1700000000.5),
        (" 12 ", 12.0),
        ("1970-01-01T00:00:10Z", 10.0),
        ("1970-01-01T01:00:10+01:00", 10.0),
        ("1970-01-02", 86400.0),
        (datetime(1970, 1, 1, 0, 1), 60.0),
        (date(1970, 1, 2), 86400.0),
    ],
)
def test_timestamps(value: object, expected: float) -> None:
    assert parse_timestamp(value, "f", 1, "ts") == expected


@pytest.mark.parametrize("value", ["", None, "soon", True, "inf", [1]])
def test_bad_timestamps(value: object) -> None:
    with pytest.raises(DataError) as info:
        parse_timestamp(value, "f.csv", 9, "ts")
    assert (info.value.path, info.value.line, info.value.field) == ("f.csv", 9, "ts")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("Like", True),
        ("dislike", False),
        (1, True),
        (0.0, False),
        (True, True),
    ],
)
def test_labels(value: object, expected: bool) -> None:
    assert parse_label(value, "f", 1, "l") is expected


def test_bad_label_and_rating_scale_steps() -> None:
    with pytest.raises(DataError, match="not a label"):
        parse_label("2", "f", 1, "l")
    assert parse_rating("4.5", (0.5, 5, 0.5), "f", 1, "r") == 4.5
    assert parse_rating(0, (0, 5, 1), "f", 1, "r") == 0.0
    for bad in ("0", "5.5", "4.25"):
        with pytest.raises(DataError, match="outside the scale"):
            parse_rating(bad, (0.5, 5, 0.5), "f", 1, "r")


def test_dates() -> None:
    utc = UTC
    assert parse_datetime("2004", None, None, "d") == datetime(2004, 1, 1, tzinfo=utc)
    assert parse_datetime("2004-02-03T04:05:06-01:00", None, None, "d") == datetime(2004, 2, 3, 5, 5, 6, tzinfo=utc)
    with pytest.raises(DataError, match="not a date"):
        parse_datetime("03/02/2004", None, None, "d")


def test_literal_text_never_evaluates_code() -> None:
    assert literal_text("['a', ' b ', '']", "f", 1, "c") == "a, b"
    assert literal_text("('x', 2)", "f", 1, "c") == "x, 2"
    assert literal_text("'plain'", "f", 1, "c") == "plain"
    assert literal_text("  ", "f", 1, "c") == ""
    for code in ("__import__('os').system('true')", "[x for x in 'ab']", "open('/etc/passwd')", "[" * 2000):
        with pytest.raises(DataError, match="malformed Python literal"):
            literal_text(code, "f", 1, "c")


def test_big_fields_and_restored_csv_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,b\n1," + "x" * 300_000 + "\n", encoding="utf-8")
    limit = csv.field_size_limit()
    rows = list(iter_csv_rows(path))
    assert len(rows[0][1]["b"]) == 300_000
    assert csv.field_size_limit() == limit


def test_bad_byte_inside_multiline_record(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b'a,b\n1,"first\nsecond \xfe"\n')
    with pytest.raises(DataError) as info:
        list(iter_csv_rows(path))
    assert (info.value.line, info.value.field) == (3, "b")
    assert "byte 0xfe at byte offset 20 (byte 7 of the line)" in str(info.value)


def test_duplicate_header_and_unterminated_quote(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,a\n1,2,3\n", encoding="utf-8")
    with pytest.raises(DataError, match="duplicate column name") as info:
        list(iter_csv_rows(path))
    assert (info.value.line, info.value.field) == (1, "a")
    path.write_text('a,b\n1,"open\n', encoding="utf-8")
    with pytest.raises(DataError, match="malformed CSV") as info:
        list(iter_csv_rows(path))
    assert info.value.line == 2


def test_load_report_keeps_counts_and_first_examples() -> None:
    report = LoadReport()
    for index in range(25):
        report.add("invalid_row", DataError("bad", path="f", line=index + 1))
    report.add("unknown_item", "x")
    assert report.counts == {"invalid_row": 25, "unknown_item": 1}
    assert report.total == 26 and report.get("missing") == 0
    assert len(report.examples) == 20 and report.examples[0] == "invalid_row: f:1: bad"
