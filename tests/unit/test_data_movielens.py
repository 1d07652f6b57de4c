"""load_movielens: latest-small/20M CSV, 100K and 1M layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalens.data import Interaction, detect_movielens, load_movielens
from personalens.errors import DataError

MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    "99,Nothing Known (2001),(no genres listed)\n"
)
RATINGS_CSV = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,0.5,964981247\n2,99,5.0,1445714994\n"


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _latest(tmp_path: Path, ratings: str = RATINGS_CSV, movies: str | bytes = MOVIES_CSV) -> Path:
    _write(tmp_path, "movies.csv", movies)
    _write(tmp_path, "ratings.csv", ratings)
    return tmp_path


def _check(info: pytest.ExceptionInfo[DataError], path: Path, line: int | None, field: str | None) -> str:
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    return str(info.value)


def test_latest_small_layout_exact_values(tmp_path: Path) -> None:
    ds = load_movielens(_latest(tmp_path))
    assert detect_movielens(tmp_path) == "latest"
    assert ds.rating_scale == (0.5, 5.0, 0.5)
    assert ds.meta["variant"] == "latest"
    assert ds.interactions == [
        Interaction("1", "1", 4.0, None, 964982703.0),
        Interaction("1", "11", 0.5, None, 964981247.0),
        Interaction("2", "99", 5.0, None, 1445714994.0),
    ]
    assert ds.items["11"].title == "American President, The (1995)"
    assert dict(ds.items["1"].fields) == {"genres": "Adventure, Animation, Children"}
    assert dict(ds.items["99"].fields) == {}
    assert ds.history("1").item_ids == ["11", "1"]


U_ITEM_FLAGS = "|".join(["0"] * 19)


def _flags(*on: int) -> str:
    flags = ["0"] * 19
    for index in on:
        flags[index] = "1"
    return "|".join(flags)


def test_100k_layout_latin1(tmp_path: Path) -> None:
    u_item = (
        "1|Toy Story (1995)|01-Jan-1995||http://x|"
        + _flags(3, 4, 5)
        + "\n"
        + "2|Caf\xe9 au lait (1993)|01-Jan-1993||http://y|"
        + _flags(0)
        + "\n"
    ).encode("latin-1")
    _write(tmp_path, "u.item", u_item)
    _write(tmp_path, "u.data", "196\t1\t3\t881250949\n186\t2\t1\t891717742\n")
    ds = load_movielens(tmp_path)
    assert ds.meta["variant"] == "100k" and ds.rating_scale == (1.0, 5.0, 1.0)
    assert ds.interactions == [
        Interaction("196", "1", 3.0, None, 881250949.0),
        Interaction("186", "2", 1.0, None, 891717742.0),
    ]
    assert ds.items["1"].fields["genres"] == "Animation, Children's, Comedy"
    assert ds.items["2"].title == "Café au lait (1993)"
    assert dict(ds.items["2"].fields) == {}  # only the "unknown" flag


def test_100k_bad_genre_flag(tmp_path: Path) -> None:
    u_item = _write(tmp_path, "u.item", "1|T|d||u|" + U_ITEM_FLAGS.replace("0", "2", 1) + "\n")
    _write(tmp_path, "u.data", "1\t1\t3\t5\n")
    with pytest.raises(DataError, match="genre flag") as info:
        load_movielens(tmp_path)
    _check(info, u_item, 1, "unknown")


def test_100k_rating_off_scale(tmp_path: Path) -> None:
    _write(tmp_path, "u.item", "1|T|d||u|" + U_ITEM_FLAGS + "\n")
    u_data = _write(tmp_path, "u.data", "1\t1\t3\t5\n1\t1\t3.5\t6\n")
    with pytest.raises(DataError, match="outside the scale 1..5 in steps of 1") as info:
        load_movielens(tmp_path)
    _check(info, u_data, 2, "rating")


def test_1m_layout(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n".encode("latin-1"),
    )
    _write(tmp_path, "ratings.dat", b"1::1::5::978300760\r\n1::2::3::978302109\r\n")
    ds = load_movielens(tmp_path)
    assert ds.meta["variant"] == "1m" and ds.rating_scale == (1.0, 5.0, 1.0)
    assert ds.interactions == [
        Interaction("1", "1", 5.0, None, 978300760.0),
        Interaction("1", "2", 3.0, None, 978302109.0),
    ]
    assert ds.items["1"].fields["genres"] == "Animation, Children's, Comedy"


def test_1m_wrong_field_count(tmp_path: Path) -> None:
    _write(tmp_path, "movies.dat", "1::T::Drama\n")
    ratings = _write(tmp_path, "ratings.dat", "1::1::5::978300760\n1::1::5\n")
    with pytest.raises(DataError, match="expected 4 fields separated by '::'") as info:
        load_movielens(tmp_path)
    _check(info, ratings, 2, "Timestamp")


def test_unknown_movie_strict_and_lenient(tmp_path: Path) -> None:
    _latest(tmp_path, ratings=RATINGS_CSV + "3,12345,3.0,1\n")
    with pytest.raises(DataError, match="movie '12345' is not in movies.csv") as info:
        load_movielens(tmp_path)
    _check(info, tmp_path / "ratings.csv", 5, "movieId")
    ds = load_movielens(tmp_path, strict=False)
    assert len(ds.interactions) == 3
    assert ds.meta["load_report"].counts == {"unknown_item": 1}


def test_rating_not_a_number_and_off_scale(tmp_path: Path) -> None:
    _latest(tmp_path, ratings=RATINGS_CSV + "3,1,abc,1\n")
    with pytest.raises(DataError, match="not a number: 'abc'") as info:
        load_movielens(tmp_path)
    _check(info, tmp_path / "ratings.csv", 5, "rating")
    _latest(tmp_path, ratings=RATINGS_CSV + "3,1,5.5,1\n")
    with pytest.raises(DataError, match="outside the scale 0.5..5") as info:
        load_movielens(tmp_path)
    _check(info, tmp_path / "ratings.csv", 5, "rating")


def test_missing_column_lists_present(tmp_path: Path) -> None:
    _latest(tmp_path, ratings="userId,movieId,score,timestamp\n1,1,4,5\n")
    with pytest.raises(DataError) as info:
        load_movielens(tmp_path)
    message = _check(info, tmp_path / "ratings.csv", 1, "rating")
    assert "columns present: ['userId', 'movieId', 'score', 'timestamp']" in message


def test_duplicates(tmp_path: Path) -> None:
    _latest(tmp_path, ratings=RATINGS_CSV + "1,1,4.0,964982703\n")
    with pytest.raises(DataError, match="exact duplicate of line 2"):
        load_movielens(tmp_path)
    ds = load_movielens(tmp_path, on_duplicate="drop")
    assert len(ds.interactions) == 3 and ds.meta["load_report"].get("duplicate_row") == 1
    _latest(tmp_path, movies=MOVIES_CSV + "1,Again (1995),Drama\n")
    with pytest.raises(DataError, match=r"duplicate movie id '1' \(first at line 2\)") as info:
        load_movielens(tmp_path)
    _check(info, tmp_path / "movies.csv", 5, "movieId")


def test_non_utf8_in_latest_csv(tmp_path: Path) -> None:
    _latest(tmp_path, movies=MOVIES_CSV.encode() + b"5,Caf\xe9 (1990),Drama\n")
    with pytest.raises(DataError, match="not valid utf-8: byte 0xe9") as info:
        load_movielens(tmp_path)
    _check(info, tmp_path / "movies.csv", 5, "title")


def test_detection_errors(tmp_path: Path) -> None:
    _write(tmp_path, "README.txt", "hi")
    with pytest.raises(DataError, match=r"no MovieLens files.*found \['README.txt'\]"):
        load_movielens(tmp_path)
    _write(tmp_path, "ratings.csv", RATINGS_CSV)
    with pytest.raises(DataError, match="not movies.csv") as info:
        load_movielens(tmp_path)
    assert info.value.path == str(tmp_path / "movies.csv")
    with pytest.raises(DataError, match="directory not found"):
        load_movielens(tmp_path / "absent")


def test_empty_ratings_file(tmp_path: Path) -> None:
    _latest(tmp_path, ratings="")
    with pytest.raises(DataError, match="file is empty") as info:
        load_movielens(tmp_path)
    _check(info, tmp_path / "ratings.csv", None, None)
