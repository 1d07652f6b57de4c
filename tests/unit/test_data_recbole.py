"""load_recbole: RecBole atomic files, plain and sequential, with an optional .item file."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalens.data import Interaction, load_recbole
from personalens.errors import DataError

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\t10\t4\t881250949\n"
    "u1\t11\t2.5\t881250000\n"
    "u2\t10\t5\t891717742\n"
)
ITEM = (
    "item_id:token\ttitle:token_seq\tcategory:token_seq\tprice:float\n"
    "10\tHome Free\tFolk; Contemporary Folk\t9.99\n"
    "11\tNeil Young Archives, Vol. 1\tPop\t\n"
)
SEQ_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _check(info: pytest.ExceptionInfo[DataError], path: Path, line: int | None, field: str | None) -> str:
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    return str(info.value)


def test_plain_inter_with_item_file(tmp_path: Path) -> None:
    _write(tmp_path, "ml.inter", INTER)
    _write(tmp_path, "ml.item", ITEM)
    ds = load_recbole(tmp_path, "ml", rating_scale=(0.5, 5, 0.5))
    assert ds.name == "ml" and ds.meta["format"] == "recbole"
    assert ds.interactions == [
        Interaction("u1", "10", 4.0, None, 881250949.0),
        Interaction("u1", "11", 2.5, None, 881250000.0),
        Interaction("u2", "10", 5.0, None, 891717742.0),
    ]
    assert ds.history("u1").item_ids == ["11", "10"]
    assert ds.items["10"].title == "Home Free"
    assert dict(ds.items["10"].fields) == {"category": "Folk; Contemporary Folk", "price": "9.99"}
    assert dict(ds.items["11"].fields) == {"category": "Pop"}


def test_sequential_split_files_merge_into_sequences(tmp_path: Path) -> None:
    _write(tmp_path, "cds.train.inter", SEQ_HEADER + "u1\ta\tb\nu1\ta b\tc\nu2\tx\ty\n")
    _write(tmp_path, "cds.valid.inter", SEQ_HEADER + "u1\ta b c\td\nu2\tx y\tz\n")
    _write(tmp_path, "cds.test.inter", SEQ_HEADER + "u1\tb c d\te\nu2\tx y z\tw\n")  # u1's list is truncated
    ds = load_recbole(tmp_path, "cds")
    assert ds.meta["format"] == "recbole-sequential"
    assert [Path(p).name for p in ds.meta["files"]] == [
        "cds.train.inter",
        "cds.valid.inter",
        "cds.test.inter",
    ]
    assert ds.history("u1").item_ids == ["a", "b", "c", "d", "e"]
    assert ds.history("u2").item_ids == ["x", "y", "z", "w"]
    assert all(x.timestamp is None and x.rating is None for x in ds.interactions)
    assert set(ds.items) == {"a", "b", "c", "d", "e", "x", "y", "z", "w"}
    head, tail = ds.history("u1").split_last(1)
    assert tail[0].item_id == "e" and head.item_ids == ["a", "b", "c", "d"]


def test_sequential_with_list_columns(tmp_path: Path) -> None:
    header = "user_id:token\titem_id_list:token_seq\ttimestamp_list:float_seq\titem_id:token\ttimestamp:float\n"
    _write(tmp_path, "s.inter", header + "u\ta b\t1 2\tc\t3\n")
    ds = load_recbole(tmp_path, "s")
    assert [(x.item_id, x.timestamp) for x in ds.interactions] == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_sequence_that_does_not_continue(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.inter", SEQ_HEADER + "u1\ta\tb\nu1\ta c\td\n")
    with pytest.raises(DataError, match="does not continue user 'u1'") as info:
        load_recbole(tmp_path, "s")
    _check(info, path, 3, "item_id_list")


def test_list_length_mismatch(tmp_path: Path) -> None:
    header = "user_id:token\titem_id_list:token_seq\trating_list:float_seq\titem_id:token\n"
    path = _write(tmp_path, "s.inter", header + "u\ta b\t4\tc\n")
    with pytest.raises(DataError, match="has 1 values but item_id_list has 2") as info:
        load_recbole(tmp_path, "s")
    _check(info, path, 2, "rating_list")


def test_header_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "h.inter", "user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(DataError, match="unknown RecBole type 'int'") as info:
        load_recbole(tmp_path, "h")
    _check(info, path, 1, "item_id")
    path = _write(tmp_path, "h.inter", "user_id\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match="is not 'name:type'") as info:
        load_recbole(tmp_path, "h")
    _check(info, path, 1, "user_id")
    path = _write(tmp_path, "h.inter", "user_id:token\tproduct:token\n1\t2\n")
    with pytest.raises(DataError, match=r"columns present: \['user_id', 'product'\]") as info:
        load_recbole(tmp_path, "h")
    _check(info, path, 1, "item_id")
    path = _write(tmp_path, "h.inter", "user_id:token\titem_id:token\trating:token_seq\n1\t2\t3\n")
    with pytest.raises(DataError, match="must be of type float") as info:
        load_recbole(tmp_path, "h")
    _check(info, path, 1, "rating")


def test_bad_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "v.inter", INTER + "u3\t12\tabc\t1\n")
    with pytest.raises(DataError, match="not a number: 'abc'") as info:
        load_recbole(tmp_path, "v")
    _check(info, path, 5, "rating")
    with pytest.raises(DataError, match="rating '2.5' is outside the scale 1..4 in steps of 1") as info:
        load_recbole(tmp_path, "v", rating_scale=(1, 4, 1))
    _check(info, path, 3, "rating")
    path = _write(tmp_path, "v.inter", INTER + "u3\t12\t3\n")
    with pytest.raises(DataError, match="expected 4 fields") as info:
        load_recbole(tmp_path, "v")
    _check(info, path, 5, "timestamp")


def test_unknown_item_strict_and_lenient(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.inter", INTER + "u3\t99\t1\t5\n")
    _write(tmp_path, "x.item", ITEM)
    with pytest.raises(DataError, match="item '99' is not in x.item") as info:
        load_recbole(tmp_path, "x")
    _check(info, path, 5, "item_id")
    ds = load_recbole(tmp_path, "x", strict=False)
    assert len(ds.interactions) == 3 and ds.meta["load_report"].counts == {"unknown_item": 1}


def test_unknown_item_in_a_history_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.inter", SEQ_HEADER + "u\t10 99\t11\n")
    _write(tmp_path, "shared.item", ITEM)
    with pytest.raises(DataError, match="item '99'") as info:
        load_recbole(tmp_path, "s", item_file="shared.item")
    _check(info, path, 2, "item_id_list[1]")


def test_item_file_errors(tmp_path: Path) -> None:
    _write(tmp_path, "x.inter", INTER)
    item = _write(tmp_path, "x.item", ITEM + "10\tAgain\tPop\t1\n")
    with pytest.raises(DataError, match=r"duplicate item id '10' \(first at line 2\)") as info:
        load_recbole(tmp_path, "x")
    _check(info, item, 4, "item_id")
    item = _write(tmp_path, "x.item", ITEM.replace("9.99", "cheap"))
    with pytest.raises(DataError, match="not a number: 'cheap'") as info:
        load_recbole(tmp_path, "x")
    _check(info, item, 2, "price")
    with pytest.raises(DataError, match="item file not found"):
        load_recbole(tmp_path, "x", item_file="nope.item")


def test_duplicate_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.inter", INTER + "u1\t10\t4\t881250949\n")
    with pytest.raises(DataError, match="exact duplicate of line 2") as info:
        load_recbole(tmp_path, "d")
    _check(info, path, 5, None)
    assert len(load_recbole(tmp_path, "d", on_duplicate="drop").interactions) == 3


def test_missing_files_and_empty_file(tmp_path: Path) -> None:
    _write(tmp_path, "other.inter", INTER)
    with pytest.raises(DataError, match=r"no ml.inter or ml.\{train,valid,test\}.inter; found \['other.inter'\]"):
        load_recbole(tmp_path, "ml")
    path = _write(tmp_path, "e.inter", "")
    with pytest.raises(DataError, match="file is empty") as info:
        load_recbole(tmp_path, "e")
    _check(info, path, None, None)


def test_non_utf8_token(tmp_path: Path) -> None:
    path = _write(tmp_path, "b.inter", INTER.encode() + b"u\xc3\x28\t10\t1\t1\n")
    with pytest.raises(DataError, match="byte 0xc3") as info:
        load_recbole(tmp_path, "b")
    _check(info, path, 5, "user_id")
