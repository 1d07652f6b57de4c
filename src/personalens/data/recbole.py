"""RecBole atomic files: ``<name>.inter`` (or ``.train/.valid/.test.inter``) and an optional ``.item`` file.

Column types come from the header suffixes ``:token``, ``:float``, ``:token_seq`` and ``:float_seq``. Both the
plain form (one interaction per row) and the sequential form (``item_id_list:token_seq`` history + target
``item_id``) are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personalens.data._validate import (
    Deduper,
    LoadReport,
    check_scale,
    iter_split_rows,
    parse_id,
    parse_label,
    parse_number,
    parse_rating,
    require_columns,
    require_rows,
    skip_or_raise,
)
from personalens.data.records import Dataset, Interaction, Item, freeze_fields
from personalens.errors import DataError

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
SPLITS = ("train", "valid", "test")


@dataclass(slots=True)
class _Step:
    """One position of a user's sequence, with where it came from (for errors)."""

    item: str
    rating: float | None
    timestamp: float | None
    label: bool | None
    path: Path
    line: int
    field: str


class _Header:
    """The parsed header of an atomic file: column names and their RecBole types."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.types: dict[str, str] = {}

    def __call__(self, raw: list[str]) -> list[str]:
        names = []
        for column in raw:
            name, sep, kind = column.partition(":")
            if not sep or not name:
                raise DataError(f"header column {column!r} is not 'name:type'", path=self.path, line=1, field=column)
            if kind not in RECBOLE_TYPES:
                raise DataError(
                    f"unknown RecBole type {kind!r}; expected one of {list(RECBOLE_TYPES)}",
                    path=self.path,
                    line=1,
                    field=name,
                )
            self.types[name] = kind
            names.append(name)
        return names

    def expect(self, name: str, *kinds: str) -> None:
        kind = self.types.get(name)
        if kind is not None and kind not in kinds:
            raise DataError(
                f"column must be of type {' or '.join(kinds)}, not {kind}", path=self.path, line=1, field=name
            )


def _inter_files(directory: Path, dataset_name: str) -> list[tuple[str, Path]]:
    whole = directory / f"{dataset_name}.inter"
    if whole.is_file():
        return [("all", whole)]
    splits = [(s, directory / f"{dataset_name}.{s}.inter") for s in SPLITS]
    found = [(s, p) for s, p in splits if p.is_file()]
    if found:
        return found
    present = sorted(p.name for p in directory.iterdir())[:20]
    raise DataError(
        f"no {dataset_name}.inter or {dataset_name}.{{train,valid,test}}.inter; found {present}",
        path=directory,
    )


def load_recbole(
    directory: str | Path,
    dataset_name: str,
    *,
    item_file: str | Path | None = None,
    rating_scale: tuple[float, float, float] | None = None,
    strict: bool = True,
    on_duplicate: Literal["error", "drop", "keep"] = "error",
) -> Dataset:
    """Load ``<dataset_name>.inter`` from ``directory``, or its ``.train/.valid/.test.inter`` split files in
    that order when there is no single ``.inter``.

    Recognised columns: ``user_id``, ``item_id`` (``:token``), ``rating``, ``timestamp``, ``label``
    (``:float``) and, in the sequential form, ``item_id_list`` (``:token_seq``) with optional
    ``rating_list``/``timestamp_list`` (``:float_seq``). Sequential rows merge into one sequence per user:
    each row's history must be a suffix of what that user's earlier rows built (a truncated list is fine), and
    its target is appended. Without timestamps the file order is the history order.

    Items come from ``item_file`` (relative to ``directory``) or ``<dataset_name>.item`` when it exists:
    ``item_id:token`` plus ``title`` and any other columns as text fields. When an item file is read, an
    interaction with an item missing from it fails with ``strict=True`` and is dropped and counted with
    ``strict=False``; without one, items are bare ids. ``.random`` negative files are not read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("RecBole directory not found", path=directory)
    scale = check_scale(rating_scale)
    report = LoadReport()
    items_path = None
    if item_file is not None:
        items_path = directory / item_file
        if not items_path.is_file():
            raise DataError("item file not found", path=items_path)
    elif (directory / f"{dataset_name}.item").is_file():
        items_path = directory / f"{dataset_name}.item"
    items = _load_items(items_path, strict, report) if items_path is not None else None

    deduper = Deduper(on_duplicate, report)
    sequences: dict[str, list[_Step]] = {}
    files = _inter_files(directory, dataset_name)
    sequential: bool | None = None
    for _, path in files:
        header = _Header(path)
        rows = iter_split_rows(path, separator="\t", on_header=header, strict=strict, report=report)
        first = True
        for line, row in rows:
            if first:
                first = False
                is_seq = "item_id_list" in header.types
                if sequential is not None and is_seq != sequential:
                    raise DataError(
                        "mixes the sequential and the plain form with the other split files",
                        path=path,
                        line=1,
                        field="item_id_list",
                    )
                sequential = is_seq
                _check_inter_header(header, list(row))
            if not deduper.keep(tuple(row.values()), path, line):
                continue
            try:
                _add_row(row, header, sequences, scale, path, line)
            except DataError as error:
                skip_or_raise(error, strict=strict, report=report)

    interactions: list[Interaction] = []
    for user, steps in sequences.items():
        for step in steps:
            if items is not None and step.item not in items:
                problem = DataError(
                    f"item {step.item!r} is not in {items_path.name if items_path else ''}",
                    path=step.path,
                    line=step.line,
                    field=step.field,
                )
                skip_or_raise(problem, strict=strict, report=report, kind="unknown_item")
                continue
            interactions.append(Interaction(user, step.item, step.rating, step.label, step.timestamp))
    require_rows(len(interactions), files[-1][1])
    if items is None:
        items = {x.item_id: Item(x.item_id) for x in interactions}
    meta: dict[str, Any] = {
        "source": str(directory),
        "format": "recbole-sequential" if sequential else "recbole",
        "files": [str(p) for _, p in files],
        "item_file": str(items_path) if items_path else None,
        "load_report": report,
    }
    return Dataset(dataset_name, items, interactions, scale, meta)


def _check_inter_header(header: _Header, names: list[str]) -> None:
    require_columns(names, ["user_id", "item_id"], header.path)
    header.expect("user_id", "token")
    header.expect("item_id", "token")
    header.expect("item_id_list", "token_seq")
    for name in ("rating", "timestamp", "label"):
        header.expect(name, "float")
    for name in ("rating_list", "timestamp_list"):
        header.expect(name, "float_seq")
        if name in header.types and "item_id_list" not in header.types:
            raise DataError("a _list column needs item_id_list", path=header.path, line=1, field=name)


def _floats(text: str, path: Path, line: int, field: str) -> list[float]:
    return [parse_number(x, path, line, f"{field}[{i}]") for i, x in enumerate(text.split())]


def _add_row(
    row: dict[str, str],
    header: _Header,
    sequences: dict[str, list[_Step]],
    scale: tuple[float, float, float] | None,
    path: Path,
    line: int,
) -> None:
    user = parse_id(row["user_id"], path, line, "user_id")
    item = parse_id(row["item_id"], path, line, "item_id")
    rating = parse_rating(row["rating"], scale, path, line, "rating") if "rating" in row else None
    timestamp = parse_number(row["timestamp"], path, line, "timestamp") if "timestamp" in row else None
    label = parse_label(row["label"], path, line, "label") if "label" in row else None
    for name, kind in header.types.items():
        if kind == "float" and name not in ("rating", "timestamp", "label") and row[name].strip():
            parse_number(row[name], path, line, name)
    target = _Step(item, rating, timestamp, label, path, line, "item_id")
    if "item_id_list" not in row:
        sequences.setdefault(user, []).append(target)
        return
    history = row["item_id_list"].split()
    ratings = _floats(row["rating_list"], path, line, "rating_list") if "rating_list" in row else None
    times = _floats(row["timestamp_list"], path, line, "timestamp_list") if "timestamp_list" in row else None
    for name, values in (("rating_list", ratings), ("timestamp_list", times)):
        if values is not None and len(values) != len(history):
            raise DataError(
                f"has {len(values)} values but item_id_list has {len(history)} items",
                path=path,
                line=line,
                field=name,
            )
    if ratings is not None and scale is not None:
        for index, value in enumerate(ratings):
            parse_rating(value, scale, path, line, f"rating_list[{index}]")
    known = sequences.get(user)
    if known is None:
        steps = [
            _Step(
                history[i],
                ratings[i] if ratings else None,
                times[i] if times else None,
                None,
                path,
                line,
                f"item_id_list[{i}]",
            )
            for i in range(len(history))
        ]
        sequences[user] = [*steps, target]
        return
    tail = [step.item for step in known[len(known) - len(history) :]] if history else []
    if len(history) > len(known) or tail != history:
        raise DataError(
            f"history of {len(history)} items does not continue user {user!r}'s sequence "
            f"of {len(known)} items "
            f"(last: {[s.item for s in known[-3:]]}, this row ends with {history[-3:]})",
            path=path,
            line=line,
            field="item_id_list",
        )
    known.append(target)


def _load_items(path: Path, strict: bool, report: LoadReport) -> dict[str, Item]:
    header = _Header(path)
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    checked = False
    for line, row in iter_split_rows(path, separator="\t", on_header=header, strict=strict, report=report):
        if not checked:
            require_columns(list(row), ["item_id"], path)
            header.expect("item_id", "token")
            checked = True
        try:
            item_id = parse_id(row["item_id"], path, line, "item_id")
            if item_id in items:
                raise DataError(
                    f"duplicate item id {item_id!r} (first at line {first_line[item_id]})",
                    path=path,
                    line=line,
                    field="item_id",
                )
            fields = []
            for name, value in row.items():
                if name in ("item_id", "title"):
                    continue
                kind = header.types[name]
                if kind == "float" and value.strip():
                    parse_number(value, path, line, name)
                elif kind == "float_seq":
                    _floats(value, path, line, name)
                fields.append((name, value.strip()))
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        first_line[item_id] = line
        items[item_id] = Item(item_id, row.get("title", "").strip(), freeze_fields(fields))
    return items
