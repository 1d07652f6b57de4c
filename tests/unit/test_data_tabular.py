"""load_table: CSV / JSONL / Parquet with a column mapping."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from personalens.data import ColumnMap, Interaction, load_table
from personalens.errors import BackendUnavailable, DataError

COLUMNS = ColumnMap(
    user="uid",
    item="iid",
    rating="stars",
    label="liked",
    timestamp="ts",
    text="review",
    title="name",
    item_fields=("genre",),
)
HEADER = "uid,iid,stars,liked,ts,review,name,genre\n"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _error(info: pytest.ExceptionInfo[DataError], path: Path, line: int | None, field: str | None) -> str:
    error = info.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    message = str(error)
    assert message.startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    if field is not None:
        assert f"field {field!r}" in message
    return message


def test_csv_happy_path_exact_values(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "reviews.csv",
        HEADER
        + 'u1,i1,4,like,1000,"great, really",Alpha,rock\n'
        + "u1,i2,2.5,0,1970-01-01T00:00:10Z,,Beta,\n"
        + "u2,i1,5,TRUE,2001-09-09T01:46:40+00:00,ok,Alpha,rock\n",
    )
    ds = load_table(path, columns=COLUMNS, rating_scale=(0.5, 5, 0.5))
    assert ds.name == "reviews"
    assert ds.rating_scale == (0.5, 5.0, 0.5)
    assert ds.interactions == [
        Interaction("u1", "i1", 4.0, True, 1000.0, "great, really"),
        Interaction("u1", "i2", 2.5, False, 10.0, None),
        Interaction("u2", "i1", 5.0, True, 1_000_000_000.0, "ok"),
    ]
    assert ds.items["i1"].title == "Alpha"
    assert dict(ds.items["i1"].fields) == {"genre": "rock"}
    assert dict(ds.items["i2"].fields) == {}
    assert ds.history("u1").item_ids == ["i2", "i1"]  # sorted by time
    assert ds.meta["format"] == "csv" and ds.meta["load_report"].total == 0


def test_minimal_mapping_and_naive_iso_is_utc(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,t\na,x,2020-01-01\na,y,2020-01-01 00:00:01\n")
    ds = load_table(path, columns=ColumnMap(user="u", item="i", timestamp="t"), name="mini")
    assert ds.name == "mini"
    assert [x.timestamp for x in ds.interactions] == [1577836800.0, 1577836801.0]
    assert ds.rating_scale is None and ds.items["x"].title == ""


def test_jsonl_happy_path(tmp_path: Path) -> None:
    rows = [
        {
            "uid": 7,
            "iid": "a",
            "stars": 3,
            "liked": True,
            "ts": 5,
            "review": None,
            "name": "A",
            "genre": ["Pop", "Rock"],
        },
        {
            "uid": "8",
            "iid": "b",
            "stars": "1",
            "liked": "dislike",
            "ts": "1970-01-01T00:01:00",
            "review": "meh",
            "name": "B",
            "genre": "Jazz",
        },
    ]
    path = _write(tmp_path, "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_table(path, columns=COLUMNS, rating_scale=(1, 5, 1))
    assert ds.interactions == [
        Interaction("7", "a", 3.0, True, 5.0, None),
        Interaction("8", "b", 1.0, False, 60.0, "meh"),
    ]
    assert ds.items["a"].fields["genre"] == "Pop, Rock"
    assert ds.meta["format"] == "jsonl"


def test_parquet_happy_path(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"u": ["a", "b"], "i": [1, 2], "r": [4.5, 3.0], "extra": [0, 0]}), path)
    ds = load_table(path, columns=ColumnMap(user="u", item="i", rating="r"))
    assert ds.interactions == [Interaction("a", "1", 4.5), Interaction("b", "2", 3.0)]
    assert ds.meta["format"] == "parquet"


def test_parquet_missing_column_names_present(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"u": ["a"], "i": ["x"]}), path)
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", rating="score"))
    assert "columns present: ['u', 'i']" in _error(info, path, None, "score")


def test_parquet_bad_value_reports_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"u": ["a", "b"], "i": ["x", "y"], "r": ["4", "abc"]}), path)
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", rating="r"))
    _error(info, path, 2, "r")


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(BackendUnavailable, match=r"personalens\[parquet\]"):
        load_table(tmp_path / "t.parquet", columns=ColumnMap(user="u", item="i"))


def test_unknown_extension_needs_format(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.txt", "u,i\na,b\n")
    with pytest.raises(DataError, match="cannot infer the format"):
        load_table(path, columns=ColumnMap(user="u", item="i"))
    assert len(load_table(path, columns=ColumnMap(user="u", item="i"), format="csv").interactions) == 1


def test_missing_column_names_columns_present(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "uid,iid,score\na,b,1\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="uid", item="iid", rating="stars"))
    message = _error(info, path, 1, "stars")
    assert "columns present: ['uid', 'iid', 'score']" in message


def test_rating_not_a_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,r\na,b,4\na,c,abc\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", rating="r"))
    assert "not a number: 'abc'" in _error(info, path, 3, "r")


def test_rating_outside_scale(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,r\na,b,4.5\na,c,6\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", rating="r"), rating_scale=(0.5, 5, 0.5))
    assert "outside the scale 0.5..5" in _error(info, path, 3, "r")
    off_step = _write(tmp_path, "s.csv", "u,i,r\na,b,4.25\n")
    with pytest.raises(DataError) as info:
        load_table(off_step, columns=ColumnMap(user="u", item="i", rating="r"), rating_scale=(0.5, 5, 0.5))
    _error(info, off_step, 2, "r")


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("t", "yesterday", "not a timestamp"),
        ("l", "maybe", "not a label"),
        ("u", "", "missing value"),
        ("t", "nan", "not a finite number"),
    ],
)
def test_bad_values_name_line_and_field(tmp_path: Path, column: str, value: str, reason: str) -> None:
    row = {"u": "a", "i": "b", "t": "10", "l": "1"}
    row[column] = value
    path = _write(tmp_path, "t.csv", "u,i,t,l\na,z,1,0\n" + ",".join(row.values()) + "\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", timestamp="t", label="l"))
    assert reason in _error(info, path, 3, column)


def test_quoted_newline_keeps_physical_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", 'u,i,r,txt\na,b,1,"two\nlines"\na,c,x,ok\n')
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", rating="r", text="txt"))
    _error(info, path, 4, "r")


def test_wrong_field_count(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,r\na,b,1\na,c\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", rating="r"))
    assert "expected 3 fields" in _error(info, path, 3, "r")


def test_exact_duplicates_error_drop_keep(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,r\na,b,1\na,c,2\na,b,1\na,b,2\n")
    cols = ColumnMap(user="u", item="i", rating="r")
    with pytest.raises(DataError) as info:
        load_table(path, columns=cols)
    assert "exact duplicate of line 2" in _error(info, path, 4, None)
    dropped = load_table(path, columns=cols, on_duplicate="drop")
    assert [(x.item_id, x.rating) for x in dropped.interactions] == [("b", 1), ("c", 2), ("b", 2)]
    assert dropped.meta["load_report"].get("duplicate_row") == 1
    assert len(load_table(path, columns=cols, on_duplicate="keep").interactions) == 4


def test_lenient_mode_skips_and_counts(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,r\na,b,1\na,c,abc\na,d\n,e,3\na,f,4\n")
    ds = load_table(path, columns=ColumnMap(user="u", item="i", rating="r"), strict=False)
    assert [x.item_id for x in ds.interactions] == ["b", "f"]
    report = ds.meta["load_report"]
    assert report.get("invalid_row") == 3
    assert report.examples[0].startswith(f"invalid_row: {path}:3: field 'r'")


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    cols = ColumnMap(user="u", item="i")
    empty = _write(tmp_path, "e.csv", "")
    with pytest.raises(DataError, match="file is empty") as info:
        load_table(empty, columns=cols)
    _error(info, empty, None, None)
    header = _write(tmp_path, "h.csv", "u,i\n\n")
    with pytest.raises(DataError, match="no data rows"):
        load_table(header, columns=cols)
    bad = _write(tmp_path, "b.csv", "u,i\n,\n")
    with pytest.raises(DataError) as info:
        load_table(bad, columns=cols, strict=False)
    assert "no interactions" in str(info.value)


def test_non_utf8_byte_reports_line_offset_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", b"u,i,title\na,b,ok\na,c,caf\xe9\n")
    with pytest.raises(DataError) as info:
        load_table(path, columns=ColumnMap(user="u", item="i", title="title"))
    message = _error(info, path, 3, "title")
    assert "byte 0xe9 at byte offset 24 (byte 7 of the line)" in message


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "\ufeffu,i\r\na,b\r\n".encode())
    assert load_table(path, columns=ColumnMap(user="u", item="i")).interactions == [Interaction("a", "b")]


def test_item_metadata_conflict(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "u,i,name\na,x,Alpha\nb,x,\nc,x,Omega\n")
    cols = ColumnMap(user="u", item="i", title="name")
    with pytest.raises(DataError) as info:
        load_table(path, columns=cols)
    assert "item 'x' has title 'Alpha' (line 2) but 'Omega'" in _error(info, path, 4, "name")
    ds = load_table(path, columns=cols, strict=False)
    assert ds.items["x"].title == "Alpha" and len(ds.interactions) == 3
    assert ds.meta["load_report"].get("item_conflict") == 1


def test_jsonl_errors(tmp_path: Path) -> None:
    cols = ColumnMap(user="u", item="i")
    broken = _write(tmp_path, "b.jsonl", '{"u": "a", "i": "b"}\n{"u": "a", "i": \n')
    with pytest.raises(DataError, match="malformed JSON") as info:
        load_table(broken, columns=cols)
    _error(info, broken, 2, None)
    missing = _write(tmp_path, "m.jsonl", '{"u": "a", "item": "b"}\n')
    with pytest.raises(DataError) as info:
        load_table(missing, columns=cols)
    assert "columns present: ['u', 'item']" in _error(info, missing, 1, "i")
    not_object = _write(tmp_path, "n.jsonl", "[1, 2]\n")
    with pytest.raises(DataError, match="expected a JSON object"):
        load_table(not_object, columns=cols)
    bad_bytes = _write(tmp_path, "u.jsonl", b'{"u": "a", "i": "b\xff"}\n')
    with pytest.raises(DataError) as info:
        load_table(bad_bytes, columns=cols)
    assert "byte 0xff" in _error(info, bad_bytes, 1, "i")
    wrong_type = _write(tmp_path, "w.jsonl", '{"u": "a", "i": {"x": 1}}\n')
    with pytest.raises(DataError, match="not an identifier") as info:
        load_table(wrong_type, columns=cols)
    _error(info, wrong_type, 1, "i")


def test_column_map_validation() -> None:
    with pytest.raises(ValueError, match="mapped twice"):
        ColumnMap(user="a", item="a")
    assert ColumnMap(user="u", item="i", item_fields=["g"]).item_fields == ("g",)  # type: ignore[arg-type]
