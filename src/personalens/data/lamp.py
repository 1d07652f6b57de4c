"""LaMP benchmark files in the official JSON format, a time-based profile split and a Dataset view.

Questions file: a JSON array of ``{"id", "input", "profile": [{"id", ...task fields...}]}``. Outputs file:
``{"task": "LaMP_3", "golds": [{"id", "output"}]}``. Errors name the file, the JSON line when known, and the
element as a field path such as ``[12].profile[3].date``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from personalens.data._validate import (
    ItemTable,
    LoadReport,
    bad_type,
    parse_datetime,
    parse_id,
    parse_number,
    parse_rating,
    read_json_document,
    skip_or_raise,
)
from personalens.data.records import Dataset, Interaction
from personalens.errors import DataError

LAMP3_SCALE = (1.0, 5.0, 1.0)
_MAX_LISTED = 5


@dataclass(frozen=True, slots=True)
class LampProfileEntry:
    """One profile entry: its ``id``, every other field as given (read-only), and ``date`` parsed (UTC)."""

    id: str
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    date: datetime | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


@dataclass(frozen=True, slots=True)
class LampExample:
    """One LaMP question with its user profile and, when an outputs file was read, its gold ``output``.

    ``source`` and ``index`` say where the example was read from, for error messages; they are not compared.
    """

    id: str
    input: str
    profile: tuple[LampProfileEntry, ...]
    output: str | None = None
    task: str | None = None
    source: str | None = field(default=None, compare=False, repr=False)
    index: int | None = field(default=None, compare=False, repr=False)

    def _where(self, suffix: str = "") -> tuple[str | None, str]:
        return self.source, (f"[{self.index}]" if self.index is not None else f"id={self.id}") + suffix


@dataclass(frozen=True, slots=True)
class LampTimeSplit:
    """An example whose profile keeps only entries before the cutoff, and the entries held out."""

    example: LampExample
    held_out: tuple[LampProfileEntry, ...]


def load_lamp(
    questions_path: str | Path,
    outputs_path: str | Path | None = None,
    *,
    strict: bool = True,
    report: LoadReport | None = None,
) -> list[LampExample]:
    """Read a LaMP questions file and, optionally, its outputs file.

    Checks: ids are unique; ``input`` is text; ``profile`` is a non-empty list of objects with an ``id``;
    ``date`` (when present) parses as ISO-8601 or a year; ``score`` (when present) is a number. With an
    outputs file, every question must have exactly one gold output and every gold must match a question; the
    error lists the missing and extra ids. ``strict=False`` skips bad examples, keeps questions without gold
    (``output=None``) and ignores extra golds, counting all of it in ``report``.
    """
    questions_path = Path(questions_path)
    report = report if report is not None else LoadReport()
    data = read_json_document(questions_path)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array of questions, found {type(data).__name__}", path=questions_path)
    if not data:
        raise DataError("the questions array is empty", path=questions_path, field="[]")
    examples: list[LampExample] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(data):
        try:
            example = _example(raw, index, questions_path, first_index)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        first_index[example.id] = index
        examples.append(example)
    if not examples:
        raise DataError("no usable questions", path=questions_path)
    if outputs_path is None:
        return examples
    outputs_path = Path(outputs_path)
    task, golds = _read_outputs(outputs_path)
    question_ids = {x.id for x in examples}
    missing = [x.id for x in examples if x.id not in golds]
    extra = [gold_id for gold_id in golds if gold_id not in question_ids]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} question id(s) have no gold output: {_listed(missing)}")
        if extra:
            parts.append(f"{len(extra)} gold id(s) match no question: {_listed(extra)}")
        problem = DataError("; ".join(parts) + f" (questions: {questions_path.name})", path=outputs_path, field="golds")
        skip_or_raise(problem, strict=strict, report=report, kind="unmatched_ids")
    return [LampExample(x.id, x.input, x.profile, golds.get(x.id), task, x.source, x.index) for x in examples]


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(ids) > _MAX_LISTED else ''}]"


def _example(raw: Any, index: int, path: Path, first_index: dict[str, int]) -> LampExample:
    where = f"[{index}]"
    if not isinstance(raw, dict):
        raise bad_type(raw, "a JSON object", path, None, where)
    for key in ("id", "input", "profile"):
        if key not in raw:
            raise DataError(f"missing key; keys present: {sorted(raw)}", path=path, field=f"{where}.{key}")
    example_id = parse_id(raw["id"], path, None, f"{where}.id")
    if example_id in first_index:
        raise DataError(
            f"duplicate id {example_id!r} (first at [{first_index[example_id]}])",
            path=path,
            field=f"{where}.id",
        )
    if not isinstance(raw["input"], str):
        raise bad_type(raw["input"], "a string", path, None, f"{where}.input")
    profile = raw["profile"]
    if not isinstance(profile, list):
        raise bad_type(profile, "a list of profile entries", path, None, f"{where}.profile")
    if not profile:
        raise DataError("empty profile", path=path, field=f"{where}.profile")
    entries = []
    for position, entry in enumerate(profile):
        entries.append(_entry(entry, path, f"{where}.profile[{position}]"))
    return LampExample(example_id, raw["input"], tuple(entries), source=str(path), index=index)


def _entry(raw: Any, path: Path, where: str) -> LampProfileEntry:
    if not isinstance(raw, dict):
        raise bad_type(raw, "a JSON object", path, None, where)
    if "id" not in raw:
        raise DataError(f"missing key; keys present: {sorted(raw)}", path=path, field=f"{where}.id")
    entry_id = parse_id(raw["id"], path, None, f"{where}.id")
    when = parse_datetime(raw["date"], path, None, f"{where}.date") if "date" in raw else None
    if "score" in raw:
        parse_number(raw["score"], path, None, f"{where}.score")
    fields = MappingProxyType({k: v for k, v in raw.items() if k != "id"})
    return LampProfileEntry(entry_id, fields, when)


def _read_outputs(path: Path) -> tuple[str | None, dict[str, str]]:
    data = read_json_document(path)
    if not isinstance(data, dict):
        raise bad_type(data, 'a JSON object {"task": ..., "golds": [...]}', path, None, "")
    if "golds" not in data:
        raise DataError(f"missing key; keys present: {sorted(data)}", path=path, field="golds")
    task = data.get("task")
    if task is not None and not isinstance(task, str):
        raise bad_type(task, "a string", path, None, "task")
    golds_raw = data["golds"]
    if not isinstance(golds_raw, list):
        raise bad_type(golds_raw, "a list", path, None, "golds")
    golds: dict[str, str] = {}
    first: dict[str, int] = {}
    for index, gold in enumerate(golds_raw):
        where = f"golds[{index}]"
        if not isinstance(gold, dict):
            raise bad_type(gold, "a JSON object", path, None, where)
        for key in ("id", "output"):
            if key not in gold:
                raise DataError(f"missing key; keys present: {sorted(gold)}", path=path, field=f"{where}.{key}")
        gold_id = parse_id(gold["id"], path, None, f"{where}.id")
        if gold_id in golds:
            raise DataError(
                f"duplicate id {gold_id!r} (first at golds[{first[gold_id]}])", path=path, field=f"{where}.id"
            )
        output = gold["output"]
        if isinstance(output, bool) or not isinstance(output, str | int | float):
            raise bad_type(output, "a string", path, None, f"{where}.output")
        if isinstance(output, float) and not math.isfinite(output):
            raise bad_type(output, "a string", path, None, f"{where}.output")
        golds[gold_id] = output if isinstance(output, str) else str(output)
        first[gold_id] = index
    return task, golds


def lamp_time_split(
    examples: Iterable[LampExample],
    cutoff: datetime | date | str | int | None = None,
    *,
    holdout_fraction: float | None = None,
    undated: Literal["error", "profile", "held_out"] = "error",
) -> list[LampTimeSplit]:
    """Split every example's profile by time; give exactly one of ``cutoff`` and ``holdout_fraction``.

    ``cutoff`` (a datetime, date, ISO-8601 text or a year; naive means UTC): entries dated strictly before it
    stay in the profile, the rest are held out. ``holdout_fraction``: per example, the most recent
    ``ceil(fraction * n)`` entries are held out (at least one profile entry is kept; ties keep file order).
    Entries without a date raise unless ``undated`` says where they go.
    """
    if (cutoff is None) == (holdout_fraction is None):
        raise ValueError("give exactly one of cutoff and holdout_fraction")
    if undated not in ("error", "profile", "held_out"):
        raise ValueError(f"undated must be 'error', 'profile' or 'held_out', not {undated!r}")
    if holdout_fraction is not None and not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be between 0 and 1, not {holdout_fraction!r}")
    moment = parse_datetime(cutoff, None, None, "cutoff") if cutoff is not None else None
    out = []
    for example in examples:
        dated: list[tuple[datetime, int, LampProfileEntry]] = []
        keep: list[LampProfileEntry] = []
        held: list[LampProfileEntry] = []
        for position, entry in enumerate(example.profile):
            if entry.date is None:
                if undated == "error":
                    path, where = example._where(f".profile[{position}].date")
                    raise DataError(
                        "profile entry has no date; pass undated='profile' or 'held_out'",
                        path=path,
                        field=where,
                    )
                (keep if undated == "profile" else held).append(entry)
            else:
                dated.append((entry.date, position, entry))
        dated.sort(key=lambda t: (t[0], t[1]))
        if moment is not None:
            keep.extend(e for d, _, e in dated if d < moment)
            held.extend(e for d, _, e in dated if d >= moment)
        elif dated:
            count = min(len(dated) - 1, math.ceil(holdout_fraction * len(dated)))  # type: ignore[operator]
            keep.extend(e for _, _, e in dated[: len(dated) - count])
            held.extend(e for _, _, e in dated[len(dated) - count :])
        order = {id(e): i for i, e in enumerate(example.profile)}
        keep.sort(key=lambda e: order[id(e)])
        held.sort(key=lambda e: order[id(e)])
        trimmed = LampExample(
            example.id,
            example.input,
            tuple(keep),
            example.output,
            example.task,
            example.source,
            example.index,
        )
        out.append(LampTimeSplit(trimmed, tuple(held)))
    return out


def _task_number(task: str | None) -> str | None:
    if task is None:
        return None
    text = task.strip().lower().replace("lamp", "").strip("-_ ")
    return text or None


def lamp_to_dataset(
    examples: Sequence[LampExample],
    *,
    task: str | None = None,
    name: str = "lamp",
    strict: bool = True,
) -> Dataset:
    """Map LaMP profiles to a :class:`Dataset`: each example is a user, each profile entry an interaction.

    The task comes from ``task`` (``"LaMP_3"``, ``"LaMP-2"``, ``"3"``), else from the examples, else from the
    fields (``score`` means LaMP-3, ``tag`` LaMP-2). LaMP-3: ``score`` becomes the rating on ``(1, 5, 1)`` and
    ``text`` the interaction text. LaMP-2: ``tag`` becomes the interaction text and ``description`` an item
    field. Other tasks: ``text`` is the interaction text, ``title`` the item title, other string fields item
    fields. The entry ``date`` becomes the timestamp. The query and gold output are not included.
    """
    number = _task_number(task) or next((_task_number(x.task) for x in examples if x.task), None)
    if number is None:
        keys = {k for x in examples for e in x.profile for k in e.fields}
        number = "3" if "score" in keys else "2" if "tag" in keys else None
    report = LoadReport()
    items = ItemTable(strict=strict, report=report)
    interactions: list[Interaction] = []
    for example in examples:
        for position, entry in enumerate(example.profile):
            path, where = example._where(f".profile[{position}]")
            timestamp = entry.date.timestamp() if entry.date is not None else None
            rating = None
            if number == "3":
                if "score" not in entry.fields:
                    raise DataError("LaMP-3 profile entry has no score", path=path, field=f"{where}.score")
                rating = parse_rating(entry.fields["score"], LAMP3_SCALE, path, None, f"{where}.score")
                text = _string(entry.get("text"), path, f"{where}.text")
                title, fields = "", []
            elif number == "2":
                text = _string(entry.get("tag"), path, f"{where}.tag")
                title = ""
                fields = [("description", _string(entry.get("description"), path, f"{where}.description"))]
            else:
                text = _string(entry.get("text"), path, f"{where}.text")
                title = _string(entry.get("title"), path, f"{where}.title")
                fields = [
                    (k, v.strip())
                    for k, v in entry.fields.items()
                    if k not in ("text", "title", "date") and isinstance(v, str)
                ]
            items.add(entry.id, title.strip(), fields, path, None, where=_prefixed(where))
            interactions.append(Interaction(example.id, entry.id, rating, None, timestamp, text or None))
    if not interactions:
        raise DataError("no profile entries to map", field="profile")
    meta = {"format": "lamp", "task": f"LaMP_{number}" if number else None, "load_report": report}
    return Dataset(name, items.items, interactions, LAMP3_SCALE if number == "3" else None, meta)


def _prefixed(where: str) -> Callable[[str], str]:
    return lambda key: f"{where}.{key}"


def _string(value: Any, path: str | None, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_type(value, "a string", path, None, where)
    return value
