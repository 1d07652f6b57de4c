"""LaMP: official JSON questions/outputs, time-based profile split, Dataset mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from personalens.data import (
    Interaction,
    LampProfileEntry,
    LoadReport,
    lamp_time_split,
    lamp_to_dataset,
    load_lamp,
)
from personalens.errors import DataError

LAMP3 = [
    {
        "id": "310",
        "input": "What is the score of this review? review: great phone",
        "profile": [
            {"text": "Loved it", "score": "5", "id": "3100", "date": "2013-04-02"},
            {"text": "Broke fast", "score": "1", "id": "3101", "date": "2014-11-20"},
            {"text": "Fine", "score": 3, "id": "3102", "date": "2012-01-05"},
        ],
    },
    {
        "id": "311",
        "input": "What is the score of this review? review: meh",
        "profile": [
            {"text": "Okay", "score": "4", "id": "3110", "date": "2015-06-01"},
        ],
    },
]
GOLDS = {"task": "LaMP_3", "golds": [{"id": "311", "output": "3"}, {"id": "310", "output": "5"}]}
UTC = UTC


def _json(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def _check(info: pytest.ExceptionInfo[DataError], path: Path | None, line: int | None, field: str | None) -> str:
    expected_path = str(path) if path is not None else None
    assert (info.value.path, info.value.line, info.value.field) == (expected_path, line, field)
    return str(info.value)


def test_load_questions_and_outputs(tmp_path: Path) -> None:
    questions = _json(tmp_path, "dev_questions.json", LAMP3)
    outputs = _json(tmp_path, "dev_outputs.json", GOLDS)
    examples = load_lamp(questions, outputs)
    assert [(x.id, x.output, x.task) for x in examples] == [("310", "5", "LaMP_3"), ("311", "3", "LaMP_3")]
    first = examples[0]
    assert first.input == "What is the score of this review? review: great phone"
    assert first.profile[0] == LampProfileEntry(
        "3100", {"text": "Loved it", "score": "5", "date": "2013-04-02"}, datetime(2013, 4, 2, tzinfo=UTC)
    )
    assert first.profile[2].get("score") == 3
    assert load_lamp(questions)[0].output is None


def test_dates_accept_years_and_datetimes(tmp_path: Path) -> None:
    data = [
        {
            "id": 1,
            "input": "q",
            "profile": [
                {"id": 1, "date": 2004},
                {"id": 2, "date": "2004-05"},
                {"id": 3, "date": "2004-05-06 07:08:09"},
                {"id": 4},
            ],
        }
    ]
    example = load_lamp(_json(tmp_path, "q.json", data))[0]
    assert example.id == "1"
    assert [e.date for e in example.profile] == [
        datetime(2004, 1, 1, tzinfo=UTC),
        datetime(2004, 5, 1, tzinfo=UTC),
        datetime(2004, 5, 6, 7, 8, 9, tzinfo=UTC),
        None,
    ]


def test_unmatched_output_ids(tmp_path: Path) -> None:
    questions = _json(tmp_path, "q.json", LAMP3)
    outputs = _json(
        tmp_path,
        "o.json",
        {"task": "LaMP_3", "golds": [{"id": "310", "output": "5"}, {"id": "999", "output": "1"}]},
    )
    with pytest.raises(DataError) as info:
        load_lamp(questions, outputs)
    message = _check(info, outputs, None, "golds")
    assert "1 question id(s) have no gold output: ['311']" in message
    assert "1 gold id(s) match no question: ['999']" in message
    report = LoadReport()
    examples = load_lamp(questions, outputs, strict=False, report=report)
    assert [x.output for x in examples] == ["5", None]
    assert report.counts == {"unmatched_ids": 1}


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d[1].update(profile=[]), "[1].profile", "empty profile"),
        (lambda d: d[1]["profile"][0].update(date="next tuesday"), "[1].profile[0].date", "not a date"),
        (lambda d: d[0]["profile"][2].update(score="five"), "[0].profile[2].score", "not a number"),
        (lambda d: d[1].update(id="310"), "[1].id", r"duplicate id '310' \(first at \[0\]\)"),
        (lambda d: d[1].pop("input"), "[1].input", "missing key"),
        (lambda d: d[1].update(input=5), "[1].input", "expected a string"),
        (lambda d: d[1]["profile"][0].pop("id"), "[1].profile[0].id", "missing key"),
        (lambda d: d[1].update(profile="none"), "[1].profile", "expected a list"),
        (lambda d: d.append("oops"), "[2]", "expected a JSON object"),
    ],
)
def test_question_errors_name_the_index(tmp_path: Path, mutate: Any, field: str, reason: str) -> None:
    data = json.loads(json.dumps(LAMP3))
    mutate(data)
    path = _json(tmp_path, "q.json", data)
    with pytest.raises(DataError, match=reason) as info:
        load_lamp(path)
    _check(info, path, None, field)
    report = LoadReport()
    assert len(load_lamp(path, strict=False, report=report)) == len(data) - 1
    assert report.counts == {"invalid_row": 1}


def test_output_file_errors(tmp_path: Path) -> None:
    questions = _json(tmp_path, "q.json", LAMP3)
    outputs = _json(
        tmp_path,
        "o.json",
        {"task": "LaMP_3", "golds": [{"id": "310", "output": "5"}, {"id": "310", "output": "4"}]},
    )
    with pytest.raises(DataError, match="duplicate id '310'") as info:
        load_lamp(questions, outputs)
    _check(info, outputs, None, "golds[1].id")
    outputs = _json(tmp_path, "o.json", {"task": "LaMP_3", "golds": [{"id": "310"}]})
    with pytest.raises(DataError, match="missing key") as info:
        load_lamp(questions, outputs)
    _check(info, outputs, None, "golds[0].output")
    outputs = _json(tmp_path, "o.json", [])
    with pytest.raises(DataError, match="expected a JSON object"):
        load_lamp(questions, outputs)


def test_malformed_json_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text('[\n {"id": "1",\n  "input": "q"\n  "profile": []}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match="malformed JSON") as info:
        load_lamp(path)
    _check(info, path, 4, None)
    path.write_bytes(b'[\n {"id": "1", "input": "caf\xe9", "profile": []}\n]\n')
    with pytest.raises(DataError, match=r"byte 0xe9 at byte offset 28 \(byte 26 of the line\)") as info:
        load_lamp(path)
    _check(info, path, 2, None)
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON array"):
        load_lamp(path)
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="questions array is empty"):
        load_lamp(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="file is empty"):
        load_lamp(path)
    with pytest.raises(DataError, match="file not found"):
        load_lamp(tmp_path / "missing.json")


def test_time_split_by_cutoff(tmp_path: Path) -> None:
    examples = load_lamp(_json(tmp_path, "q.json", LAMP3))
    splits = lamp_time_split(examples, "2014-01-01")
    assert [e.id for e in splits[0].example.profile] == ["3100", "3102"]  # file order is kept
    assert [e.id for e in splits[0].held_out] == ["3101"]
    assert splits[0].example.output is None and splits[0].example.id == "310"
    assert splits[1].example.profile == () and [e.id for e in splits[1].held_out] == ["3110"]
    assert [e.id for e in lamp_time_split(examples, 2013)[0].held_out] == ["3100", "3101"]


def test_time_split_by_fraction(tmp_path: Path) -> None:
    examples = load_lamp(_json(tmp_path, "q.json", LAMP3))
    splits = lamp_time_split(examples, holdout_fraction=0.5)
    assert [e.id for e in splits[0].example.profile] == ["3102"]  # oldest kept
    assert [e.id for e in splits[0].held_out] == ["3100", "3101"]
    assert [e.id for e in splits[1].example.profile] == ["3110"]  # at least one entry stays
    with pytest.raises(ValueError, match="exactly one"):
        lamp_time_split(examples)


def test_time_split_undated(tmp_path: Path) -> None:
    data = [{"id": "1", "input": "q", "profile": [{"id": "a", "date": "2001-01-01"}, {"id": "b"}]}]
    path = _json(tmp_path, "q.json", data)
    examples = load_lamp(path)
    with pytest.raises(DataError, match="has no date") as info:
        lamp_time_split(examples, "2010-01-01")
    _check(info, path, None, "[0].profile[1].date")
    split = lamp_time_split(examples, "2010-01-01", undated="held_out")[0]
    assert [e.id for e in split.example.profile] == ["a"] and [e.id for e in split.held_out] == ["b"]


def test_lamp3_to_dataset(tmp_path: Path) -> None:
    examples = load_lamp(_json(tmp_path, "q.json", LAMP3), _json(tmp_path, "o.json", GOLDS))
    ds = lamp_to_dataset(examples)
    assert ds.rating_scale == (1.0, 5.0, 1.0) and ds.meta["task"] == "LaMP_3"
    assert ds.history("310").interactions == (
        Interaction("310", "3102", 3.0, None, datetime(2012, 1, 5, tzinfo=UTC).timestamp(), "Fine"),
        Interaction("310", "3100", 5.0, None, datetime(2013, 4, 2, tzinfo=UTC).timestamp(), "Loved it"),
        Interaction("310", "3101", 1.0, None, datetime(2014, 11, 20, tzinfo=UTC).timestamp(), "Broke fast"),
    )


def test_lamp3_score_off_scale(tmp_path: Path) -> None:
    data = json.loads(json.dumps(LAMP3))
    data[1]["profile"][0]["score"] = "6"
    path = _json(tmp_path, "q.json", data)
    with pytest.raises(DataError, match="outside the scale 1..5") as info:
        lamp_to_dataset(load_lamp(path))
    _check(info, path, None, "[1].profile[0].score")


def test_lamp2_to_dataset(tmp_path: Path) -> None:
    data = [
        {
            "id": "20",
            "input": "Which tag does this movie relate to? description: a heist",
            "profile": [
                {"tag": "sci-fi", "description": "Robots in space.", "id": "200"},
                {"tag": "comedy", "description": "A wedding goes wrong.", "id": "201"},
            ],
        }
    ]
    ds = lamp_to_dataset(load_lamp(_json(tmp_path, "q.json", data)), name="lamp2")
    assert ds.name == "lamp2" and ds.rating_scale is None and ds.meta["task"] == "LaMP_2"
    assert ds.interactions == [
        Interaction("20", "200", text="sci-fi"),
        Interaction("20", "201", text="comedy"),
    ]
    assert dict(ds.items["200"].fields) == {"description": "Robots in space."}


def test_generic_task_to_dataset(tmp_path: Path) -> None:
    data = [
        {
            "id": "50",
            "input": "Generate a title",
            "profile": [{"title": "On Things", "abstract": "We study things.", "id": "500", "date": "1999"}],
        }
    ]
    ds = lamp_to_dataset(load_lamp(_json(tmp_path, "q.json", data)), task="LaMP-5")
    assert ds.meta["task"] == "LaMP_5"
    assert ds.items["500"].title == "On Things"
    assert dict(ds.items["500"].fields) == {"abstract": "We study things."}
    assert ds.interactions[0].timestamp == datetime(1999, 1, 1, tzinfo=UTC).timestamp()
