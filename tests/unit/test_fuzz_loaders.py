"""Property-based fuzzing of every data loader: malformed and adversarial files either load into valid records or
raise :class:`~personalens.errors.DataError` naming the file (and the line and field when there is one), never
another exception type.

Each test starts from a small valid file of the loader's format and applies a few random mutations: random bytes,
truncation, missing / extra / replaced fields (huge numbers, NaN, inf, wrong types, quotes, NUL), duplicated or
deleted lines, other encodings, a byte-order mark, CRLF line ends, an empty file. JSON formats are also mutated at
the JSON level (values replaced by arbitrary JSON, keys dropped or added). Runs are derandomized, so CI sees the same
examples every time.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalens.data import (
    ColumnMap,
    load_agent4rec,
    load_deeper_iterations,
    load_deeper_train_users,
    load_lamp,
    load_movielens,
    load_personax_csv,
    load_recbole,
    load_table,
)
from personalens.data._validate import iter_jsonl, read_json_document
from personalens.data.records import Dataset
from personalens.errors import DataError

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ------------------------------------------------------------------------------------------------ mutations

ADVERSARIAL_TOKENS = [
    "",
    " ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "9" * 5000,
    "0x1F",
    "1_000",
    "\u0663",  # Arabic-Indic digit three: float() accepts it
    "\uff14",  # fullwidth 4
    "\x00",
    '"',
    "'",
    '"unterminated',
    "[",
    "{",
    "None",
    "True",
    "[]",
    "{}",
    "['a', 1]",
    "['a', None]",
    "[" * 200,
    "{'items': [], 'ratings': []}",
    "{'items': ['a'], 'ratings': [1e999]}",
    "{'items': ['a'], 'ratings': ['5']}",
    "{'items': [1], 'ratings': [4]}",
    "{'items': ['a', 'b'], 'ratings': [4]}",
    "2024-13-45",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "-1",
    "-0",
    "3.5",
    "é",
    "\u2028",
    "a\tb",
    "a|b",
    "a::b",
    "a,b",
]

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(ADVERSARIAL_TOKENS),
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10,
)

ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252", "crlf"]


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "crlf":
        return text.replace("\n", "\r\n").encode("utf-8", "surrogatepass")
    return text.encode(encoding, "replace")


def _mutate_fields(draw: Any, text: str, separator: str) -> str:
    """Replace, delete or add a field of one line, or duplicate / delete / truncate a line."""
    lines = text.split("\n")
    if not lines:
        return text
    index = draw(st.integers(0, len(lines) - 1))
    fields = lines[index].split(separator)
    op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "dup_line", "del_line", "cut_line"]))
    if op == "replace":
        position = draw(st.integers(0, len(fields) - 1))
        fields[position] = draw(st.one_of(st.sampled_from(ADVERSARIAL_TOKENS), st.text(max_size=8)))
    elif op == "delete" and len(fields) > 1:
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif op == "add":
        fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from(ADVERSARIAL_TOKENS)))
    elif op == "dup_line":
        lines.insert(index, lines[index])
    elif op == "del_line":
        del lines[index]
        return "\n".join(lines)
    elif op == "cut_line":
        cut = draw(st.integers(0, len(lines[index])))
        lines[index] = lines[index][:cut]
        return "\n".join(lines)
    lines[index] = separator.join(fields)
    return "\n".join(lines)


def _json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _json_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for position, inner in enumerate(value):
            yield from _json_paths(inner, (*prefix, position))


#: JSON text json.dumps cannot write: numbers past int()'s 4300-digit limit, nesting past the recursion limit.
RAW_JSON = ["9" * 5000, "-" + "1" * 4400, "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "1e999", "NaN"]
_RAW = "\x00raw\x00"


def _mutate_json(draw: Any, document: Any) -> Any:
    """Replace a value anywhere in ``document`` with arbitrary JSON (or a raw :data:`RAW_JSON` token, see
    :func:`_dumps`), or drop / add a key."""
    paths = list(_json_paths(document))
    path = draw(st.sampled_from(paths))
    new = _RAW if draw(st.integers(0, 5)) == 0 else draw(json_values)
    if not path:
        return new
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    op = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if op == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif op == "drop" and isinstance(parent, list):
        del parent[path[-1]]
    elif op == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = new
    else:
        parent[path[-1]] = new
    return document


def _dumps(draw: Any, document: Any) -> str:
    return json.dumps(document).replace(json.dumps(_RAW), draw(st.sampled_from(RAW_JSON)))


@st.composite
def mutated(draw: Any, template: str, separator: str = ",", json_lines: bool = False, json_doc: bool = False) -> bytes:
    """A file derived from the valid ``template`` by one to three mutations."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "json", "bytes", "random", "empty", "none"]))
    text = template
    if kind == "json" and json_doc:
        text = _dumps(draw, _mutate_json(draw, json.loads(template)))
    elif kind == "json" and json_lines:
        lines = template.strip("\n").split("\n")
        index = draw(st.integers(0, len(lines) - 1))
        lines[index] = _dumps(draw, _mutate_json(draw, json.loads(lines[index])))
        text = "\n".join(lines) + "\n"
    elif kind in ("fields", "json"):
        for _ in range(draw(st.integers(1, 3))):
            text = _mutate_fields(draw, text, separator)
    elif kind == "random":
        return draw(st.binary(max_size=300))
    elif kind == "empty":
        return draw(st.sampled_from([b"", b"\n", b"\r\n", b"\xef\xbb\xbf", b" \n\n"]))
    data = _encode(text, draw(st.sampled_from(ENCODINGS)))
    if kind == "bytes" or draw(st.integers(0, 9)) == 0:
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["insert", "cut", "flip"]))
            if op == "insert":
                data = data[:position] + draw(st.binary(min_size=1, max_size=4)) + data[position:]
            elif op == "cut":
                data = data[:position]
            elif data and position < len(data):
                data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    return data


# ------------------------------------------------------------------------------------------------ checking


@contextmanager
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pl-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def loads_or_data_error(call: Callable[[], Any], where: Path) -> Any:
    """Run ``call``: a result is returned; a :class:`DataError` must name a file under ``where`` (and its line and
    field when it carries them); any other exception fails the test."""
    try:
        return call()
    except DataError as error:
        message = str(error)
        assert error.path is not None, f"DataError without a file: {message}"
        assert error.path.startswith(str(where)), f"DataError names {error.path}, not a file under {where}"
        assert message.startswith(error.path), message
        if error.line is not None:
            assert error.line >= 1, message
            assert message.startswith(f"{error.path}:{error.line}: "), message
        if error.field:
            assert f"field {error.field!r}" in message, message
        return None


def check_dataset(dataset: Dataset | None) -> None:
    if dataset is None:
        return
    assert dataset.interactions
    for x in dataset.interactions:
        assert isinstance(x.user_id, str) and x.user_id.strip()
        assert isinstance(x.item_id, str) and x.item_id.strip()
        assert x.rating is None or (isinstance(x.rating, float) and math.isfinite(x.rating))
        assert x.timestamp is None or (isinstance(x.timestamp, float) and math.isfinite(x.timestamp))
        assert x.label is None or isinstance(x.label, bool)
    if dataset.rating_scale is not None:
        low, high, _ = dataset.rating_scale
        assert all(x.rating is None or low - 1e-9 <= x.rating <= high + 1e-9 for x in dataset.interactions)


STRICT = st.booleans()

# ------------------------------------------------------------------------------------------------ tabular

TABLE_CSV = (
    "user,item,rating,timestamp,title,genres,label\n"
    "1,10,4.5,1700000000,Alien,Sci-Fi,true\n"
    "1,11,3,2024-01-02T03:04:05,Heat,Crime,0\n"
    '2,10,5,1700000100,Alien,Sci-Fi,"like"\n'
)
TABLE_COLUMNS = ColumnMap(
    user="user", item="item", rating="rating", timestamp="timestamp", title="title", item_fields=("genres",)
)
TABLE_JSONL = (
    '{"user": 1, "item": "10", "rating": 4.5, "timestamp": 1700000000, "title": "Alien", "genres": ["Sci-Fi"], '
    '"label": true}\n'
    '{"user": "1", "item": 11, "rating": 3, "timestamp": "2024-01-02T03:04:05", "title": "Heat", "genres": "Crime", '
    '"label": "dislike"}\n'
)
JSONL_COLUMNS = ColumnMap(
    user="user", item="item", rating="rating", timestamp="timestamp", label="label", title="title",
    item_fields=("genres",),
)  # fmt: skip


@FUZZ
@given(content=mutated(TABLE_CSV), strict=STRICT, scale=st.sampled_from([None, (0.5, 5.0, 0.5)]))
def test_fuzz_table_csv(content: bytes, strict: bool, scale: Any) -> None:
    with folder() as where:
        path = where / "table.csv"
        path.write_bytes(content)
        check_dataset(
            loads_or_data_error(
                lambda: load_table(path, columns=TABLE_COLUMNS, rating_scale=scale, strict=strict), where
            )
        )


@FUZZ
@given(content=mutated(TABLE_JSONL, json_lines=True), strict=STRICT)
def test_fuzz_table_jsonl(content: bytes, strict: bool) -> None:
    with folder() as where:
        path = where / "table.jsonl"
        path.write_bytes(content)
        check_dataset(loads_or_data_error(lambda: load_table(path, columns=JSONL_COLUMNS, strict=strict), where))


_PARQUET_COLUMN_TYPES = st.sampled_from(["int", "float", "str", "bool", "list", "null", "datetime", "date"])


@st.composite
def parquet_columns(draw: Any) -> dict[str, Any]:
    from datetime import UTC, date, datetime

    rows = draw(st.integers(0, 4))
    values: dict[str, st.SearchStrategy[Any]] = {
        "int": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(allow_nan=True, allow_infinity=True),
        "str": st.one_of(st.text(max_size=8), st.sampled_from(ADVERSARIAL_TOKENS)),
        "bool": st.booleans(),
        "list": st.lists(st.text(max_size=4), max_size=3),
        "null": st.none(),
        "datetime": st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
            lambda d: d.replace(tzinfo=UTC)
        ),
        "date": st.dates(min_value=date(1, 1, 1)),
    }
    out = {}
    for name in ("user", "item", "rating", "timestamp", "title", "genres", "label"):
        if draw(st.integers(0, 12)) == 0:
            continue  # a missing column
        kind = draw(_PARQUET_COLUMN_TYPES)
        out[name] = [draw(st.one_of(st.none(), values[kind])) for _ in range(rows)]
    return out


@FUZZ
@given(columns=parquet_columns(), garbage=st.one_of(st.none(), st.binary(max_size=64)), strict=STRICT)
def test_fuzz_table_parquet(columns: dict[str, Any], garbage: bytes | None, strict: bool) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with folder() as where:
        path = where / "table.parquet"
        if garbage is not None:
            path.write_bytes(garbage)
        else:
            try:
                table = pa.table({name: pa.array(values) for name, values in columns.items()} or {"x": pa.array([])})
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                return  # not representable in Parquet
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            path.write_bytes(buffer.getvalue())
        check_dataset(loads_or_data_error(lambda: load_table(path, columns=JSONL_COLUMNS, strict=strict), where))


# ------------------------------------------------------------------------------------------------ MovieLens

ML_LATEST = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,10,4.5,964982703\n1,11,3.0,964981247\n2,10,5.0,964982224\n",
    "movies.csv": 'movieId,title,genres\n10,Alien (1979),Horror|Sci-Fi\n11,"Heat, The (1995)",Action|Crime\n',
}
_FLAGS = "|".join(["0", "1"] + ["0"] * 17)
ML_100K = {
    "u.data": "1\t10\t4\t881250949\n1\t11\t3\t881250950\n2\t10\t5\t881250951\n",
    "u.item": f"10|Alien (1979)|01-Jan-1979||http://x|{_FLAGS}\n11|Heat (1995)|01-Jan-1995||http://y|{_FLAGS}\n",
}
ML_1M = {
    "ratings.dat": "1::10::4::978300760\n1::11::3::978302109\n2::10::5::978301968\n",
    "movies.dat": "10::Alien (1979)::Horror|Sci-Fi\n11::Heat (1995)::Action|Crime|Thriller\n",
}


def _write_mutated(draw: Any, where: Path, files: dict[str, str], separators: dict[str, str]) -> None:
    """Write every file of ``files``; one or two of them are mutated."""
    names = list(files)
    chosen = set(draw(st.lists(st.sampled_from(names), min_size=1, max_size=2)))
    for name, text in files.items():
        if name in chosen:
            (where / name).write_bytes(draw(mutated(text, separators.get(name, ","))))
        else:
            (where / name).write_text(text, encoding="utf-8")


@FUZZ
@given(data=st.data(), layout=st.sampled_from(["latest", "100k", "1m"]), strict=STRICT)
def test_fuzz_movielens(data: st.DataObject, layout: str, strict: bool) -> None:
    files, separators = {
        "latest": (ML_LATEST, {}),
        "100k": (ML_100K, {"u.data": "\t", "u.item": "|"}),
        "1m": (ML_1M, {"ratings.dat": "::", "movies.dat": "::"}),
    }[layout]
    with folder() as where:
        _write_mutated(data.draw, where, files, separators)
        on_duplicate = data.draw(st.sampled_from(["error", "drop", "keep"]))
        check_dataset(
            loads_or_data_error(lambda: load_movielens(where, strict=strict, on_duplicate=on_duplicate), where)
        )


# ------------------------------------------------------------------------------------------------ PersonaX

PERSONAX_CSV = (
    "item_id,user_id,rating,timestamp,title,brand,category,description\n"
    "A1,U1,5,1700000000,Thing,Acme,\"['Pop', 'Rock']\",\"['A fine thing.']\"\n"
    'A2,U1,1,1700000100,Other,Acme,"[\'Jazz\']","[]"\n'
    "A1,U2,4,1700000200,Thing,Acme,\"['Pop', 'Rock']\",\"['A fine thing.']\"\n"
)


@FUZZ
@given(content=mutated(PERSONAX_CSV), strict=STRICT, scale=st.sampled_from([None, (1.0, 5.0, 1.0), (0.0, 1.0, 1.0)]))
def test_fuzz_personax(content: bytes, strict: bool, scale: Any) -> None:
    with folder() as where:
        path = where / "personax.csv"
        path.write_bytes(content)
        check_dataset(loads_or_data_error(lambda: load_personax_csv(path, rating_scale=scale, strict=strict), where))


# ------------------------------------------------------------------------------------------------ RecBole

RECBOLE_PLAIN = {
    "ml.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n1\t11\t3\t101\n"
    "2\t10\t5\t102\n",
    "ml.item": "item_id:token\ttitle:token_seq\tyear:float\n10\tAlien\t1979\n11\tHeat\t1995\n",
}
RECBOLE_SEQUENTIAL = {
    "ml.inter": "user_id:token\titem_id_list:token_seq\trating_list:float_seq\titem_id:token\n"
    "1\t10\t4\t11\n1\t10 11\t4 3\t12\n2\t\t\t10\n",
}


@FUZZ
@given(data=st.data(), sequential=st.booleans(), strict=STRICT)
def test_fuzz_recbole(data: st.DataObject, sequential: bool, strict: bool) -> None:
    files = RECBOLE_SEQUENTIAL if sequential else RECBOLE_PLAIN
    with folder() as where:
        _write_mutated(data.draw, where, files, dict.fromkeys(files, "\t"))
        scale = data.draw(st.sampled_from([None, (1.0, 5.0, 1.0)]))
        check_dataset(loads_or_data_error(lambda: load_recbole(where, "ml", rating_scale=scale, strict=strict), where))


# ------------------------------------------------------------------------------------------------ DeePer

DEEPER_ROUND = {
    "id": "u1",
    "iteration": 1,
    "item_type": "movie",
    "dataset_name": "amazon_movies",
    "I0": ["A", "B"],
    "U0": [4, 5],
    "I1": ["C"],
    "U1": [3],
    "I2": ["D", "E"],
    "U2": [1, 2],
}
DEEPER_JSONL = json.dumps(DEEPER_ROUND) + "\n" + json.dumps({**DEEPER_ROUND, "id": "u2"}) + "\n"
DEEPER_TRAIN = (
    "id,item_type,split,dataset_name,source_url,windows_0,windows_1\n"
    "u1,movie,train,amazon_movies,http://x,\"{'items': ['A', 'B'], 'ratings': [4, 5]}\","
    "\"{'items': ['C'], 'ratings': [3]}\"\n"
    "u2,movie,train,movielens_20m,,\"{'items': ['A'], 'ratings': [4.5]}\",\"{'items': ['C'], 'ratings': [0.5]}\"\n"
)


@FUZZ
@given(content=mutated(DEEPER_JSONL, json_lines=True), strict=STRICT)
def test_fuzz_deeper_iterations(content: bytes, strict: bool) -> None:
    with folder() as where:
        (where / "test_iteration_1.jsonl").write_bytes(content)
        rounds = loads_or_data_error(lambda: load_deeper_iterations(where, strict=strict), where)
        for item in rounds or []:
            for window in item.windows:
                assert window.interactions
                assert all(x.rating is not None and math.isfinite(x.rating) for x in window.interactions)


@FUZZ
@given(content=mutated(DEEPER_TRAIN), strict=STRICT)
def test_fuzz_deeper_train_users(content: bytes, strict: bool) -> None:
    with folder() as where:
        path = where / "train_users.csv"
        path.write_bytes(content)
        users = loads_or_data_error(lambda: load_deeper_train_users(path, strict=strict), where)
        for user in users or []:
            assert user.windows
            for window in user.windows:
                assert all(x.rating is not None and math.isfinite(x.rating) for x in window.interactions)


# ------------------------------------------------------------------------------------------------ LaMP

LAMP_QUESTIONS = json.dumps(
    [
        {
            "id": "1",
            "input": "Rate this review",
            "profile": [{"id": "p1", "date": "2020-01-01", "score": 3, "text": "good"}, {"id": "p2", "text": "bad"}],
        },
        {"id": 2, "input": "Another", "profile": [{"id": "p3", "date": 2004, "score": "4"}]},
    ],
    indent=1,
)
LAMP_OUTPUTS = json.dumps({"task": "LaMP_3", "golds": [{"id": "1", "output": "3"}, {"id": "2", "output": 4}]})


@FUZZ
@given(data=st.data(), strict=STRICT, with_outputs=st.booleans())
def test_fuzz_lamp(data: st.DataObject, strict: bool, with_outputs: bool) -> None:
    with folder() as where:
        questions, outputs = where / "questions.json", where / "outputs.json"
        target = data.draw(st.sampled_from(["questions", "outputs"])) if with_outputs else "questions"
        questions.write_bytes(
            data.draw(mutated(LAMP_QUESTIONS, json_doc=True)) if target == "questions" else LAMP_QUESTIONS.encode()
        )
        outputs.write_bytes(
            data.draw(mutated(LAMP_OUTPUTS, json_doc=True)) if target == "outputs" else LAMP_OUTPUTS.encode()
        )
        examples = loads_or_data_error(
            lambda: load_lamp(questions, outputs if with_outputs else None, strict=strict), where
        )
        for example in examples or []:
            assert isinstance(example.id, str) and example.profile


# ------------------------------------------------------------------------------------------------ Agent4Rec

AGENT4REC = {
    "movie_detail.csv": "movie_id,title,genres,rating,summary\n0,Alien,Horror|Sci-Fi,4.1,space\n"
    '1,"Heat, The",Crime,3.9,heist\n2,Up,Animation,4.0,balloons\n',
    "train.txt": "0 0 1\n1 1\n",
    "valid.txt": "0 2\n1 0\n",
    "test.txt": "1 2\n",
}


@FUZZ
@given(data=st.data(), strict=STRICT)
def test_fuzz_agent4rec(data: st.DataObject, strict: bool) -> None:
    separators = {"movie_detail.csv": ",", "train.txt": " ", "valid.txt": " ", "test.txt": " "}
    with folder() as where:
        _write_mutated(data.draw, where, AGENT4REC, separators)
        check_dataset(loads_or_data_error(lambda: load_agent4rec(where, strict=strict), where))


# ------------------------------------------------------------------------------------------------ regressions


@pytest.mark.parametrize(
    "line",
    [
        '{"user": 1, "item": 2, "rating": ' + "9" * 5000 + "}",  # int() digit limit: ValueError, not JSONDecodeError
        "[" * 100_000,  # nesting: RecursionError
    ],
)
def test_regression_jsonl_unparseable_values_are_data_errors(tmp_path: Path, line: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:1: malformed JSON"):
        list(iter_jsonl(path))
    report_rows = list(iter_jsonl(path, strict=False))
    assert report_rows == []


@pytest.mark.parametrize("document", ["[" + "9" * 5000 + "]", "[" * 100_000])
def test_regression_json_document_unparseable_values_are_data_errors(tmp_path: Path, document: str) -> None:
    path = tmp_path / "q.json"
    path.write_text(document)
    with pytest.raises(DataError, match=r"q\.json.*malformed JSON"):
        read_json_document(path)


def test_regression_huge_json_integer_rating_is_a_data_error(tmp_path: Path) -> None:
    # 10**400 parses as a Python int; float() of it raised OverflowError
    path = tmp_path / "t.jsonl"
    path.write_text('{"user": 1, "item": 2, "rating": 1' + "0" * 400 + ', "timestamp": 1' + "0" * 400 + "}\n")
    columns = ColumnMap(user="user", item="item", rating="rating")
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'rating': not a finite number"):
        load_table(path, columns=columns)
    columns = ColumnMap(user="user", item="item", timestamp="timestamp")
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'timestamp': not a finite number"):
        load_table(path, columns=columns)


def test_regression_huge_integer_rating_in_deeper_window(tmp_path: Path) -> None:
    (tmp_path / "test_iteration_1.jsonl").write_text(
        json.dumps({**DEEPER_ROUND, "U1": [10**400]}).replace("Infinity", "1e999") + "\n"
    )
    with pytest.raises(DataError, match=r"test_iteration_1\.jsonl:1: field 'U1\[0\]': not a finite number"):
        load_deeper_iterations(tmp_path)
