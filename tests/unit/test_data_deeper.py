"""DeePer: test_iteration_k.jsonl rounds and train_users.csv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from personalens.data import (
    Interaction,
    LoadReport,
    deeper_rating_scale,
    load_deeper_iterations,
    load_deeper_train_users,
)
from personalens.errors import DataError


def _round(
    user: str,
    k: int,
    windows: dict[int, tuple[list[Any], list[Any]]] | None = None,
    dataset: str = "movielens_20m",
    **extra: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": user,
        "iteration": k,
        "item_type": "movie",
        "split": "eval",
        "dataset_name": dataset,
        "source_url": "https://example.org",
    }
    if windows is None:
        windows = {j: ([f"{user}-m{j}a", f"{user}-m{j}b"], [float(j % 5) + 0.5, 4.0]) for j in (k - 1, k, k + 1)}
    for j, (titles, ratings) in windows.items():
        obj[f"U{j}"] = ratings
        obj[f"I{j}"] = titles
    obj.update(extra)
    return obj


def _jsonl(directory: Path, k: int, objects: list[dict[str, Any]]) -> Path:
    path = directory / f"test_iteration_{k}.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


def _check(info: pytest.ExceptionInfo[DataError], path: Path, line: int | None, field: str | None) -> str:
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    return str(info.value)


def test_rounds_happy_path(tmp_path: Path) -> None:
    _jsonl(tmp_path, 2, [_round("a", 2)])
    _jsonl(
        tmp_path,
        1,
        [_round("a", 1), _round("b", 1, {0: (["X"], [5]), 1: (["Y", "Y"], [1, 0.5]), 2: (["Z"], [3.5])})],
    )
    rounds = load_deeper_iterations(tmp_path)
    assert [(r.user_id, r.iteration) for r in rounds] == [("a", 1), ("b", 1), ("a", 2)]
    b = rounds[1]
    assert (b.item_type, b.dataset_name, b.split, b.source_url) == (
        "movie",
        "movielens_20m",
        "eval",
        "https://example.org",
    )
    assert [w.index for w in b.windows] == [0, 1, 2]
    assert b.previous.interactions == (Interaction("b", "X", 5.0),)
    assert b.current.interactions == (Interaction("b", "Y", 1.0), Interaction("b", "Y", 0.5))
    assert b.future.user_id == "b" and len(b.future) == 1
    a2 = rounds[2]
    assert [w.index for w in a2.windows] == [1, 2, 3]
    assert a2.windows[0].interactions == rounds[0].windows[1].interactions  # windows shift by one per round
    assert [r.iteration for r in load_deeper_iterations(tmp_path, iterations=[2])] == [2]


@pytest.mark.parametrize(
    ("windows", "field", "reason"),
    [
        ({0: (["x", "y"], [1.0]), 1: (["x"], [1.0]), 2: (["x"], [1.0])}, "I0", "2 items but 1 ratings in U0"),
        ({0: (["x"], [1.0]), 1: (["x", "y"], ["4", 1.0]), 2: (["x"], [1.0])}, "U1[0]", "expected a number"),
        ({0: (["x"], [1.0]), 1: (["x"], [True]), 2: (["x"], [1.0])}, "U1[0]", "expected a number"),
        ({0: (["x"], [1.0]), 1: (["x"], [1.0]), 2: (["x"], [5.5])}, "U2[0]", "outside the scale 0.5..5"),
        ({0: (["x"], [1.0]), 1: ([], []), 2: (["x"], [1.0])}, "I1", "empty window"),
        ({0: ([7], [1.0]), 1: (["x"], [1.0]), 2: (["x"], [1.0])}, "I0[0]", "expected an item title"),
        ({0: ("x", [1.0]), 1: (["x"], [1.0]), 2: (["x"], [1.0])}, "I0", "expected a list of item titles"),
        ({0: (["x"], [1.0]), 1: (["x"], [1.0])}, "U0", "expected three consecutive windows"),
    ],
)
def test_bad_windows(tmp_path: Path, windows: dict[int, tuple[Any, Any]], field: str, reason: str) -> None:
    path = _jsonl(tmp_path, 1, [_round("ok", 1), _round("bad", 1, windows)])
    with pytest.raises(DataError, match=reason) as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 2, field)


def test_round_level_errors(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, 1, [_round("a", 1), _round("a", 1)])
    with pytest.raises(DataError, match=r"duplicate user id 'a' in this round \(first at line 1\)") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 2, "id")
    path = _jsonl(tmp_path, 1, [_round("a", 2)])
    with pytest.raises(DataError, match="says iteration 2 but the file name says 1") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 1, "iteration")
    obj = _round("a", 1)
    del obj["dataset_name"]
    path = _jsonl(tmp_path, 1, [obj])
    with pytest.raises(DataError, match="missing required column") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 1, "dataset_name")
    obj = _round("a", 1)
    del obj["I2"]
    path = _jsonl(tmp_path, 1, [obj])
    with pytest.raises(DataError, match="missing key") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 1, "I2")


def test_malformed_json_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no test_iteration_<k>.jsonl files"):
        load_deeper_iterations(tmp_path)
    path = tmp_path / "test_iteration_1.jsonl"
    path.write_text(json.dumps(_round("a", 1)) + '\n{"id": "b",\n', encoding="utf-8")
    with pytest.raises(DataError, match="malformed JSON") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 2, None)
    path.write_bytes(
        json.dumps(_round("a", 1)).encode() + b"\n" + json.dumps(_round("b", 1)).encode().replace(b"b-m0a", b"b-m0\xff")
    )
    with pytest.raises(DataError, match="byte 0xff") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, 2, "I0[0]")
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="file is empty") as info:
        load_deeper_iterations(tmp_path)
    _check(info, path, None, None)


def test_lenient_mode_and_empty_titles(tmp_path: Path) -> None:
    bad = _round("bad", 1, {0: (["x", "y"], [1.0]), 1: (["x"], [1.0]), 2: (["x"], [1.0])})
    untitled = _round("c", 1, {0: ([""], [1.0]), 1: (["x"], [1.0]), 2: (["x"], [1.0])})
    _jsonl(tmp_path, 1, [_round("a", 1), bad, untitled])
    report = LoadReport()
    rounds = load_deeper_iterations(tmp_path, strict=False, report=report)
    assert [r.user_id for r in rounds] == ["a", "c"]
    assert rounds[1].previous.interactions[0].item_id == ""
    assert report.counts == {"invalid_row": 1, "empty_title": 1}


def test_rating_scales() -> None:
    assert deeper_rating_scale("movielens_20m") == (0.5, 5.0, 0.5)
    assert deeper_rating_scale("food_com") == (0.0, 5.0, 1.0)
    assert deeper_rating_scale("amazon_clothing_shoes_jewelry") == (1.0, 5.0, 1.0)
    assert deeper_rating_scale("something_else") is None


def test_explicit_or_no_scale(tmp_path: Path) -> None:
    _jsonl(tmp_path, 1, [_round("a", 1, {0: (["x"], [0]), 1: (["x"], [7]), 2: (["x"], [2])}, dataset="other")])
    assert load_deeper_iterations(tmp_path)[0].current.interactions[0].rating == 7.0
    with pytest.raises(DataError, match="outside the scale 0..5"):
        load_deeper_iterations(tmp_path, rating_scale=(0, 5, 1))


TRAIN_HEADER = "id,item_type,split,dataset_name,source_url,windows_0,windows_1\n"


def _window(items: list[Any], ratings: list[Any]) -> str:
    return '"' + repr({"items": items, "ratings": ratings}).replace('"', '""') + '"'


def _train(tmp_path: Path, *rows: str, header: str = TRAIN_HEADER) -> Path:
    path = tmp_path / "train_users.csv"
    path.write_text(header + "".join(rows), encoding="utf-8")
    return path


def test_train_users_happy_path(tmp_path: Path) -> None:
    row = (
        "u1,recipe,train,food_com,https://x,"
        + _window(["soup, hot", 'say "hi"'], [0, 5])
        + ","
        + _window(["tea"], [3])
        + "\n"
    )
    path = _train(tmp_path, row)
    users = load_deeper_train_users(path)
    assert len(users) == 1
    user = users[0]
    assert (user.user_id, user.item_type, user.split, user.dataset_name, user.source_url) == (
        "u1",
        "recipe",
        "train",
        "food_com",
        "https://x",
    )
    assert [w.index for w in user.windows] == [0, 1]
    assert user.windows[0].interactions == (
        Interaction("u1", "soup, hot", 0.0),
        Interaction("u1", 'say "hi"', 5.0),
    )
    assert user.windows[1].interactions == (Interaction("u1", "tea", 3.0),)


@pytest.mark.parametrize(
    ("cell", "field", "reason"),
    [
        (_window(["a", "b"], [1]), "windows_1.items", "2 items but 1 ratings"),
        (_window(["a"], ["4"]), "windows_1.ratings[0]", "expected a number"),
        (_window(["a"], [9]), "windows_1.ratings[0]", "outside the scale 0..5"),
        ("\"{'items': ['a'], 'ratings': [1\"", "windows_1", "malformed Python literal"),
        ('"[1, 2]"', "windows_1", "expected a dict"),
        ("\"{'items': ['a']}\"", "windows_1.ratings", "window has no 'ratings' key"),
        ("\"__import__('os').getcwd()\"", "windows_1", "malformed Python literal"),
        ("", "windows_1", "missing value"),
    ],
)
def test_train_users_bad_windows(tmp_path: Path, cell: str, field: str, reason: str) -> None:
    good = "u0,recipe,train,food_com,x," + _window(["a"], [1]) + "," + _window(["b"], [2]) + "\n"
    path = _train(tmp_path, good, "u1,recipe,train,food_com,x," + _window(["a"], [1]) + "," + cell + "\n")
    with pytest.raises(DataError, match=reason) as info:
        load_deeper_train_users(path)
    _check(info, path, 3, field)
    report = LoadReport()
    assert [u.user_id for u in load_deeper_train_users(path, strict=False, report=report)] == ["u0"]
    assert report.counts == {"invalid_row": 1}


def test_train_users_structure_errors(tmp_path: Path) -> None:
    path = _train(tmp_path, "u,recipe,train,food_com,x,a,b\n", header="id,item_type,split,dataset_name,x,y,z\n")
    with pytest.raises(DataError, match="columns present") as info:
        load_deeper_train_users(path)
    _check(info, path, 1, "windows_0")
    cell = _window(["a"], [1])
    path = _train(
        tmp_path,
        f"u,recipe,train,food_com,{cell},{cell}\n",
        header="id,item_type,split,dataset_name,windows_0,windows_2\n",
    )
    with pytest.raises(DataError, match="without gaps") as info:
        load_deeper_train_users(path)
    _check(info, path, 1, "windows_2")
    path = _train(tmp_path, f"u,r,t,food_com,x,{cell},{cell}\n", f"u,r,t,food_com,x,{cell},{cell}\n")
    with pytest.raises(DataError, match=r"duplicate user id 'u' \(first at line 2\)") as info:
        load_deeper_train_users(path)
    _check(info, path, 3, "id")
