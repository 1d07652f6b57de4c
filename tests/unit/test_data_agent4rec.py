"""load_agent4rec: Agent4Rec's MovieLens-1M subset (train/valid/test .txt + movie_detail.csv)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalens.cli import app
from personalens.data import Interaction, load_agent4rec
from personalens.data.summary import DATASET_FORMATS, FORMATS, dataset_stats, load_dataset
from personalens.errors import DataError

MOVIE_DETAIL = (
    "movie_id,title,genres,rating,summary\n"
    "0,Toy Story (1995),Animation|Children's|Comedy,4.146846413095811,Toys on an adventure.\n"
    '1,"American President, The (1995)",Comedy|Drama|Romance,3.79,"A widowed president, in love."\n'
    "2,Heat (1995),Action|Crime|Thriller,3.9,A detective hunts a thief.\n"
    "3,Blank (2000),Drama,2.5,\n"
)
TRAIN = "0 2 1\n1 3\n\n"
VALID = "0 3\n1 0\n"
TEST = "0 0\n1 2 1\n"


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _dir(
    tmp_path: Path,
    *,
    train: str | bytes = TRAIN,
    valid: str | bytes = VALID,
    test: str | bytes = TEST,
    movies: str | bytes = MOVIE_DETAIL,
) -> Path:
    for name, content in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        _write(tmp_path, name, content)
    _write(tmp_path, "movie_detail.csv", movies)
    return tmp_path


def _check(info: pytest.ExceptionInfo[DataError], path: Path, line: int | None, field: str | None) -> str:
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    message = str(info.value)
    assert message.startswith(str(path))
    if line is not None:
        assert f"{path}:{line}:" in message
    if field is not None:
        assert f"field {field!r}" in message
    return message


# --------------------------------------------------------------------------------------------------- happy path


def test_items_interactions_order_and_splits(tmp_path: Path) -> None:
    ds = load_agent4rec(_dir(tmp_path))
    assert ds.name == "agent4rec-ml1m" and ds.rating_scale is None
    assert ds.users == ["0", "1"]
    assert ds.interactions == [
        Interaction("0", "2"),
        Interaction("0", "1"),
        Interaction("0", "3"),
        Interaction("0", "0"),
        Interaction("1", "3"),
        Interaction("1", "0"),
        Interaction("1", "2"),
        Interaction("1", "1"),
    ]
    assert all(x.rating is None and x.label is None and x.timestamp is None for x in ds.interactions)
    # train, then valid, then test, each in file order (no timestamps, so nothing is re-sorted)
    assert ds.history("0").item_ids == ["2", "1", "3", "0"]
    assert ds.history("1").item_ids == ["3", "0", "2", "1"]
    assert ds.meta["order"] == "file"
    assert ds.meta["format"] == "agent4rec"
    assert ds.meta["splits"] == {
        "train": {"0": ("2", "1"), "1": ("3",)},
        "valid": {"0": ("3",), "1": ("0",)},
        "test": {"0": ("0",), "1": ("2", "1")},
    }
    assert list(ds.meta["splits"]) == ["train", "valid", "test"]
    assert ds.meta["splits"]["test"]["1"][0] == "2"  # "the first test item"
    assert ds.meta["load_report"].total == 0


def test_item_text_keeps_the_mean_rating_out(tmp_path: Path) -> None:
    ds = load_agent4rec(_dir(tmp_path))
    toy = ds.items["0"]
    assert toy.title == "Toy Story (1995)"
    assert dict(toy.fields) == {"genres": "Animation, Children's, Comedy", "summary": "Toys on an adventure."}
    assert ds.items["1"].title == "American President, The (1995)"
    assert ds.items["1"].fields["summary"] == "A widowed president, in love."
    assert dict(ds.items["3"].fields) == {"genres": "Drama"}  # empty summary is left out
    assert "4.14" not in toy.text() and "rating" not in toy.text()
    assert ds.meta["item_mean_rating"] == {"0": 4.146846413095811, "1": 3.79, "2": 3.9, "3": 2.5}
    assert set(ds.items) == {"0", "1", "2", "3"}


def test_blank_lines_crlf_and_extra_spaces_are_accepted(tmp_path: Path) -> None:
    ds = load_agent4rec(_dir(tmp_path, train="\n0  2 1 \r\n\n1 3\r\n\n", valid="0 3\n\n\n1 0\n"))
    assert ds.meta["splits"]["train"] == {"0": ("2", "1"), "1": ("3",)}
    assert ds.meta["load_report"].total == 0


def test_user_missing_from_a_split_and_a_user_line_without_items(tmp_path: Path) -> None:
    ds = load_agent4rec(_dir(tmp_path, valid="0 3\n", test="0 0\n1\n"))
    assert ds.meta["splits"]["valid"] == {"0": ("3",)}
    assert ds.meta["splits"]["test"] == {"0": ("0",), "1": ()}
    assert ds.history("1").item_ids == ["3"]


def test_registered_as_a_dataset_format(tmp_path: Path) -> None:
    assert "agent4rec" in FORMATS and "agent4rec" in DATASET_FORMATS
    path = _dir(tmp_path)
    assert len(load_dataset(path, "agent4rec").interactions) == 8
    stats = dataset_stats(path, "agent4rec")
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 4, 8)
    assert stats["history_length"] == {"min": 4, "median": 4.0, "max": 4}


def test_cli_data_stats(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "stats", "--format", "agent4rec", str(_dir(tmp_path))])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["name"], stats["users"], stats["items"], stats["interactions"]) == ("agent4rec-ml1m", 2, 4, 8)
    assert stats["rating_scale"] is None


def test_cli_data_stats_names_file_line_and_field(tmp_path: Path) -> None:
    path = _dir(tmp_path, valid="0 3\n1 x\n")
    result = CliRunner().invoke(app, ["data", "stats", "--format", "agent4rec", str(path)])
    assert result.exit_code != 0
    assert f"{tmp_path / 'valid.txt'}:2" in str(result.exception) and "'item_id'" in str(result.exception)


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("split", "content", "line", "field", "words"),
    [
        ("train", "0 2 x1\n1 3\n", 1, "item_id", "not a non-negative integer index: 'x1'"),
        ("train", "0 2 1\n\n1 2.5\n", 3, "item_id", "'2.5'"),
        ("valid", "0 3\n1 -1\n", 2, "item_id", "'-1'"),
        ("valid", "u0 3\n1 0\n", 1, "user_id", "'u0'"),
        ("test", "0 0\n1 9\n", 2, "item_id", "item '9' (token 1 after the user) is not in movie_detail.csv"),
        ("valid", "0 3\n1 0\n0 1\n", 3, "user_id", "user '0' has a second line in this file (first at line 1)"),
        ("train", "0 2 1 2\n1 3\n", 1, "item_id", "lists item '2' again (token 3 after the user; first earlier"),
        ("test", "0 0\n1 2 3\n", 2, "item_id", "lists item '3' again (token 2 after the user; first train.txt:2)"),
        ("test", "0 0 1\n1 2\n", 1, "item_id", "first train.txt:1"),
    ],
)
def test_split_file_errors_name_file_line_and_field(
    tmp_path: Path, split: str, content: str, line: int, field: str, words: str
) -> None:
    path = _dir(tmp_path, **{split: content})
    with pytest.raises(DataError) as info:
        load_agent4rec(path)
    assert words in _check(info, path / f"{split}.txt", line, field)


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ("x,Bad (2000),Drama,3.0,S\n", "movie_id", "not a non-negative integer index: 'x'"),
        ("2,Again (2000),Drama,3.0,S\n", "movie_id", "duplicate movie id '2' (first at line 4)"),
        ("4,Odd (2000),Drama,high,S\n", "rating", "not a number: 'high'"),
    ],
)
def test_movie_detail_errors(tmp_path: Path, row: str, field: str, words: str) -> None:
    path = _dir(tmp_path, movies=MOVIE_DETAIL + row)
    with pytest.raises(DataError) as info:
        load_agent4rec(path)
    assert words in _check(info, path / "movie_detail.csv", 6, field)


def test_movie_detail_missing_column(tmp_path: Path) -> None:
    path = _dir(tmp_path, movies="movie_id,title,genres,rating\n0,A (1999),Drama,3.0\n")
    with pytest.raises(DataError) as info:
        load_agent4rec(path)
    assert "missing required column" in _check(info, path / "movie_detail.csv", 1, "summary")


@pytest.mark.parametrize("missing", ["train.txt", "valid.txt", "test.txt", "movie_detail.csv"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    path = _dir(tmp_path)
    (path / missing).unlink()
    with pytest.raises(DataError) as info:
        load_agent4rec(path)
    assert "file not found" in _check(info, path / missing, None, None)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_agent4rec(tmp_path / "nope")
    assert "directory not found" in _check(info, tmp_path / "nope", None, None)


def test_empty_split_file(tmp_path: Path) -> None:
    path = _dir(tmp_path, valid="\n\n")
    with pytest.raises(DataError) as info:
        load_agent4rec(path)
    assert "no user lines" in _check(info, path / "valid.txt", None, None)


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = _dir(tmp_path, train=b"0 2 1\n1 3\xff\n")
    with pytest.raises(DataError) as info:
        load_agent4rec(path)
    assert "byte 0xff" in _check(info, path / "train.txt", 2, None)
    ds = load_agent4rec(path, strict=False)
    assert ds.meta["load_report"].counts == {"invalid_row": 1}
    assert "1" not in ds.meta["splits"]["train"]


# --------------------------------------------------------------------------------------------------- strict=False


def test_non_strict_skips_and_counts(tmp_path: Path) -> None:
    path = _dir(
        tmp_path,
        train="0 2 x 1 2 9\nu1 3\n1 3\n",  # bad item, repeated item, unknown item; bad user token
        valid="0 3 1\n1 0\n1 2\n",  # item 1 repeats train; user 1 has a second line
        test="0 0\n1 2 1\n",
        movies=MOVIE_DETAIL + "3,Dup (2001),Drama,1,S\n4,Odd (2000),Drama,high,S\n",
    )
    ds = load_agent4rec(path, strict=False)
    report = ds.meta["load_report"]
    assert report.counts == {
        "duplicate_item": 1,
        "invalid_value": 1,
        "invalid_item": 1,
        "duplicate_interaction": 1,
        "unknown_item": 1,
        "invalid_row": 1,
        "cross_split_duplicate": 1,
        "duplicate_user": 1,
    }
    assert report.total == 8 and len(report.examples) == 8
    assert any("train.txt:1: field 'item_id'" in e for e in report.examples)
    assert ds.meta["splits"] == {
        "train": {"0": ("2", "1"), "1": ("3",)},
        "valid": {"0": ("3",), "1": ("0",)},
        "test": {"0": ("0",), "1": ("2", "1")},
    }
    assert ds.history("0").item_ids == ["2", "1", "3", "0"]
    assert ds.items["3"].title == "Blank (2000)"  # the first of a repeated movie id is kept
    assert "4" in ds.items and "4" not in ds.meta["item_mean_rating"]  # a bad mean rating keeps the item


def test_non_strict_with_nothing_left_fails(tmp_path: Path) -> None:
    path = _dir(tmp_path, train="0 9\n", valid="0 8\n", test="0 7\n")
    with pytest.raises(DataError) as info:
        load_agent4rec(path, strict=False)
    assert "no interactions left" in str(info.value)


# --------------------------------------------------------------------------------------------------- real data

SHARED = Path(os.environ.get("PERSONALENS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def test_real_agent4rec_ml1m() -> None:
    path = SHARED / "agent4rec-ml1m"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    ds = load_agent4rec(path)
    assert ds.meta["load_report"].total == 0
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (1000, 3292, 185_249)
    assert set(ds.items) == {str(i) for i in range(3292)}
    assert len({x.item_id for x in ds.interactions}) == 3292
    splits = ds.meta["splits"]
    assert {name: sum(map(len, users.values())) for name, users in splits.items()} == {
        "train": 74_271,
        "valid": 55_486,
        "test": 55_492,
    }
    assert all(len(users) == 1000 for users in splits.values())
    lengths = [len(h) for h in ds.histories()]
    assert (min(lengths), statistics.median(lengths), max(lengths)) == (22, 115.0, 1584)
    toy = ds.items["0"]
    assert toy.title == "Toy Story (1995)" and toy.fields["genres"] == "Animation, Children's, Comedy"
    assert set(toy.fields) == {"genres", "summary"}
    # movie_id is the 0-based index of the .txt files: the most listed items are MovieLens-1M's most rated films
    counts: dict[str, int] = {}
    for x in ds.interactions:
        counts[x.item_id] = counts.get(x.item_id, 0) + 1
    top = sorted(counts, key=lambda item: -counts[item])[:4]
    assert [ds.items[i].title for i in top] == [
        "American Beauty (1999)",
        "Star Wars: Episode V - The Empire Strikes Back (1980)",
        "Star Wars: Episode IV - A New Hope (1977)",
        "Star Wars: Episode VI - Return of the Jedi (1983)",
    ]
    history = ds.history("0")
    assert history.item_ids[: len(splits["train"]["0"])] == list(splits["train"]["0"])
    assert history.item_ids[-len(splits["test"]["0"]) :] == list(splits["test"]["0"])
