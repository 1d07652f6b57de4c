"""load_personax_csv: PersonaX's Amazon CSV with Python-literal list columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalens.data import Interaction, load_personax_csv
from personalens.errors import DataError

HEADER = "item_id,user_id,rating,timestamp,title,brand,category,description\n"
# The description cell mirrors the real files: CSV-doubled quotes around a Python list whose strings use both
# quote styles, an escaped apostrophe and HTML entities.
DESCRIPTION = '"[""It\'s &quot;great&quot;"", \'Genesis\\\'s ""Foxtrot""\']"'
ROWS = (
    f"I1,U1,1,967593600,Blue Album,Band A,\"['CDs & Vinyl', 'Rock']\",{DESCRIPTION}\n"
    "I2,U1,0,968112000,Red Album,Band B,\"['CDs & Vinyl', 'Pop', 'Oldies']\",[]\n"
    f"I1,U2,1,968630400,Blue Album,Band A,\"['CDs & Vinyl', 'Rock']\",{DESCRIPTION}\n"
)


def _write(tmp_path: Path, content: str | bytes, name: str = "sampled.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _check(info: pytest.ExceptionInfo[DataError], path: Path, line: int | None, field: str | None) -> str:
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    return str(info.value)


def test_binary_ratings_become_labels(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER + ROWS.replace("\"['x']\"", '"[""It\'s """"great"""", they said."", \'Second part\']"'),
    )
    ds = load_personax_csv(path)
    assert ds.name == "sampled"
    assert ds.rating_scale == (0.0, 1.0, 1.0)
    assert ds.interactions == [
        Interaction("U1", "I1", 1.0, True, 967593600.0),
        Interaction("U1", "I2", 0.0, False, 968112000.0),
        Interaction("U2", "I1", 1.0, True, 968630400.0),
    ]
    blue = ds.items["I1"]
    assert blue.title == "Blue Album"
    assert dict(blue.fields) == {
        "brand": "Band A",
        "category": "CDs & Vinyl, Rock",
        "description": "It's &quot;great&quot;, Genesis's \"Foxtrot\"",
    }
    assert dict(ds.items["I2"].fields) == {"brand": "Band B", "category": "CDs & Vinyl, Pop, Oldies"}


def test_item_description_conflict_is_an_error(tmp_path: Path) -> None:
    first, second, third = ROWS.splitlines(keepends=True)
    path = _write(tmp_path, HEADER + first + second + third.replace(DESCRIPTION, "['other']"))
    with pytest.raises(DataError, match="item 'I1' has description") as info:
        load_personax_csv(path)
    _check(info, path, 4, "description")
    ds = load_personax_csv(path, strict=False)
    assert ds.meta["load_report"].counts == {"item_conflict": 1}


def test_star_ratings_and_missing_optional_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "item_id,user_id,rating,timestamp,title\nA,u,5,10,T\nB,u,3,11,S\n")
    ds = load_personax_csv(path)
    assert ds.rating_scale == (1.0, 5.0, 1.0)
    assert [(x.rating, x.label) for x in ds.interactions] == [(5.0, None), (3.0, None)]
    assert dict(ds.items["A"].fields) == {}


def test_star_rating_off_scale_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "item_id,user_id,rating,timestamp,title\nA,u,5,10,T\nB,u,7,11,S\nC,u,1,12,R\n")
    with pytest.raises(DataError, match="outside the scale 1..5") as info:
        load_personax_csv(path)
    _check(info, path, 3, "rating")
    assert len(load_personax_csv(path, strict=False).interactions) == 2
    with pytest.raises(DataError) as info:
        load_personax_csv(path, rating_scale=(1, 5, 1))
    _check(info, path, 3, "rating")


@pytest.mark.parametrize(
    ("category", "reason"),
    [
        ("\"['Rock', \"", "malformed Python literal"),
        ("\"{'a': 1}\"", "expected a list literal, found dict"),
        ("\"__import__('os').system('echo hacked')\"", "malformed Python literal"),
        ("\"[['nested']]\"", "list element 0 is not text"),
    ],
)
def test_bad_literals(tmp_path: Path, category: str, reason: str) -> None:
    path = _write(tmp_path, HEADER + f"A,u,1,10,T,B,{category},[]\n")
    with pytest.raises(DataError, match=reason) as info:
        load_personax_csv(path)
    _check(info, path, 2, "category")


def test_missing_required_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "item_id,user_id,rating,timestamp\nA,u,1,10\n")
    with pytest.raises(DataError) as info:
        load_personax_csv(path)
    assert "columns present: ['item_id', 'user_id', 'rating', 'timestamp']" in _check(info, path, 1, "title")


def test_wrong_types(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "A,u,abc,10,T,B,[],[]\n")
    with pytest.raises(DataError, match="not a number: 'abc'") as info:
        load_personax_csv(path)
    _check(info, path, 2, "rating")
    path = _write(tmp_path, HEADER + "A,u,1,last week,T,B,[],[]\n")
    with pytest.raises(DataError, match="not a timestamp") as info:
        load_personax_csv(path)
    _check(info, path, 2, "timestamp")


def test_duplicate_rows(tmp_path: Path) -> None:
    row = "A,u,1,10,T,B,[],[]\n"
    path = _write(tmp_path, HEADER + row + row)
    with pytest.raises(DataError, match="exact duplicate of line 2") as info:
        load_personax_csv(path)
    _check(info, path, 3, None)
    assert len(load_personax_csv(path, on_duplicate="drop").interactions) == 1


def test_non_utf8_description(tmp_path: Path) -> None:
    path = _write(tmp_path, (HEADER + "A,u,1,10,T,B,[],\"['ok']\"\n").encode() + b"C,u,1,10,T,B,[],\"['\xff']\"\n")
    with pytest.raises(DataError, match="byte 0xff") as info:
        load_personax_csv(path)
    _check(info, path, 3, "description")


def test_header_only(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER)
    with pytest.raises(DataError, match="no data rows") as info:
        load_personax_csv(path)
    _check(info, path, None, None)


def test_explicit_binary_scale_still_sets_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "item_id,user_id,rating,timestamp,title\nA,u,1,10,T\nB,u,0,11,S\n")
    ds = load_personax_csv(path, rating_scale=(0, 1, 1))
    assert [x.label for x in ds.interactions] == [True, False]
    with pytest.raises(DataError, match="outside the scale 0..1") as info:
        load_personax_csv(
            _write(tmp_path, "item_id,user_id,rating,timestamp,title\nA,u,2,10,T\n"), rating_scale=(0, 1, 1)
        )
    assert (info.value.line, info.value.field) == (2, "rating")
