"""Optional: load the real research sets in ../shared/data (never copied into the repo).

Skipped when the directory is absent. Set PERSONALENS_SHARED_DATA to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from personalens.data import (
    LoadReport,
    load_deeper_iterations,
    load_deeper_train_users,
    load_movielens,
    load_personax_csv,
    load_recbole,
)
from personalens.errors import DataError

SHARED = Path(os.environ.get("PERSONALENS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
if not SHARED.is_dir():
    pytest.skip(f"shared research data not found at {SHARED}", allow_module_level=True)


def _need(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_movielens_latest_small() -> None:
    ds = load_movielens(_need("movielens-latest-small"))
    assert ds.meta["variant"] == "latest" and ds.rating_scale == (0.5, 5.0, 0.5)
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (610, 9742, 100_836)
    assert len({x.item_id for x in ds.interactions}) == 9724  # 18 movies have no rating
    assert ds.items["11"].title == "American President, The (1995)"
    assert ds.items["1"].fields["genres"] == "Adventure, Animation, Children, Comedy, Fantasy"
    lengths = [len(h) for h in ds.histories()]
    assert (
        sum(n >= 50 for n in lengths),
        sum(n >= 200 for n in lengths),
        sum(n >= 480 for n in lengths),
    ) == (385, 134, 44)
    history = ds.history("1")
    times = [x.timestamp for x in history]
    assert times == sorted(times)  # type: ignore[type-var]


def test_personax_excerpt() -> None:
    ds = load_personax_csv(_need("personax-cds-excerpt/sampled_200.EXCERPT.csv"))
    assert ds.rating_scale == (0.0, 1.0, 1.0)
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (1, 10, 10)
    assert [x.label for x in ds.interactions].count(False) == 1
    foxtrot = ds.items["B000002J1M"]
    assert foxtrot.title == "Foxtrot" and foxtrot.fields["brand"] == "Genesis"
    assert foxtrot.fields["category"] == "CDs & Vinyl, Rock, Progressive, Progressive Rock"
    assert foxtrot.fields["description"].startswith("1972 album which was to become")
    assert "description" not in ds.items["B00000256E"].fields  # "[]"


@pytest.mark.parametrize(("name", "distinct_items"), [("CDs-100-user-dense", 269), ("CDs-100-user-sparse", 704)])
def test_agentcf_cds(name: str, distinct_items: int) -> None:
    directory = _need(f"agentcf-cds/{name}")
    _need("agentcf-cds/CDs-100-user-dense/CDs.item")
    ds = load_recbole(directory, name, item_file="../CDs-100-user-dense/CDs.item")
    assert ds.meta["format"] == "recbole-sequential"
    assert (len(ds.users), len(ds.interactions), len(ds.items)) == (100, 800, 64_031)
    assert len({x.item_id for x in ds.interactions}) == distinct_items
    assert {len(h) for h in ds.histories()} == {8}
    if name.endswith("dense"):
        assert ds.history("2867").item_ids == [
            "10410",
            "4233",
            "213",
            "9798",
            "18245",
            "24746",
            "3510",
            "1370",
        ]
        assert ds.items["0"].title == "Home Free"
        assert ds.items["0"].fields["category"] == "Folk; Contemporary Folk"


def test_deeper_movielens_rounds() -> None:
    report = LoadReport()
    rounds = load_deeper_iterations(_need("deeper/movielens_20m"), report=report)
    assert len(rounds) == 5000 and report.total == 0
    assert {r.iteration for r in rounds} == {1, 2, 3, 4, 5}
    assert all(len(w) == 10 for r in rounds for w in r.windows)
    by_key = {(r.user_id, r.iteration): r for r in rounds}
    for (user, k), item in by_key.items():
        assert [w.index for w in item.windows] == [k - 1, k, k + 1]
        if k > 1:
            assert by_key[(user, k - 1)].current.interactions == item.previous.interactions


def test_deeper_train_users() -> None:
    users = load_deeper_train_users(_need("deeper/food_com/train_users.csv"))
    assert len(users) == 1000
    assert {len(u.windows) for u in users} == {5}
    assert all(len(w) == 10 for u in users for w in u.windows)
    assert {x.rating for u in users for w in u.windows for x in w.interactions} == {0, 1, 2, 3, 4, 5}


def test_deeper_google_local_known_defect() -> None:
    """Two google_local users have a broken title list (two titles fused by bad quoting): 9 titles, 10
    ratings."""
    directory = _need("deeper/google_local")
    with pytest.raises(DataError, match="9 items but 10 ratings in U4") as info:
        load_deeper_iterations(directory, iterations=[3])
    assert (Path(info.value.path or "").name, info.value.line, info.value.field) == (
        "test_iteration_3.jsonl",
        436,
        "I4",
    )
    report = LoadReport()
    rounds = load_deeper_iterations(directory, iterations=[3], strict=False, report=report)
    assert len(rounds) == 821 and report.counts == {"invalid_row": 2}
