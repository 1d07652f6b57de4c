"""Leave-last-out next-item tasks: one held-out target per user plus sampled negatives, written to disk and reused.

Every method of an experiment must rank the same candidates, so the candidate sets are drawn once, saved as JSON and
read back on later runs. The draw is reproducible from the file's own header: the negatives for a user come from
``numpy.random.default_rng([seed, user_key])`` over the *sorted* pool of items the user never touched (anywhere in
their data, before or after the target), so the same data and seed give the same file on any machine.

Target rules (``target``):

* ``"last"``: the user's last interaction in time (Kang & McAuley's leave-last-out, as in the PersonaX paper).
* ``"last_liked"``: the last interaction labelled liked; interactions after it are dropped from the history too, so
  nothing from the future of the target is ever profiled. Useful when personas describe likes and the data has
  dislikes (MovieLens with rating > 3 / < 3).

``negatives=None`` asks for full-catalogue ranking: every item the user never touched is a negative (the list is not
written to the file; it is recomputed from the catalogue, which the file's fingerprint pins).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personalens.data.records import Dataset, History, Interaction
from personalens.errors import DataError

TargetRule = Literal["last", "last_liked"]
FORMAT_VERSION = 1


def user_key(user_id: str) -> int:
    """A stable 63-bit integer for a user id (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True, slots=True)
class RankingTask:
    """One user's test case: the profiling history (strictly before the target), the positive and the candidates.

    ``candidates`` lists item ids in the order the rankers see them (the positive at a seeded position, so a ranker
    that ties everything scores like chance rather than best or worst case).
    """

    user_id: str
    history: History
    positive: str
    candidates: tuple[str, ...]

    @property
    def positive_index(self) -> int:
        return self.candidates.index(self.positive)


def is_liked(x: Interaction, like_above: float | None) -> bool:
    """A like: its label when it has one, else no rating at all, else a rating above ``like_above`` (any rating
    when ``like_above`` is ``None``)."""
    if x.label is not None:
        return x.label
    if x.rating is None:
        return True
    return like_above is None or x.rating > like_above


def split_target(history: History, rule: TargetRule, *, like_above: float | None = None) -> tuple[History, Interaction]:
    """The profiling history and the held-out target under ``rule`` (see the module doc)."""
    rows = history.interactions
    if rule == "last":
        index = len(rows) - 1
    elif rule == "last_liked":
        index = next((i for i in range(len(rows) - 1, -1, -1) if is_liked(rows[i], like_above)), -1)
        if index < 0:
            raise ValueError(f"user {history.user_id!r} has no liked interaction to hold out")
    else:
        raise ValueError(f"target rule must be 'last' or 'last_liked', not {rule!r}")
    if index == 0:
        raise ValueError(f"user {history.user_id!r} has nothing before the target to profile")
    return History(history.user_id, rows[:index]), rows[index]


def catalogue_fingerprint(dataset: Dataset) -> str:
    """sha256 over the sorted item ids and every (user, item) pair: what the negatives are drawn from."""
    h = hashlib.sha256()
    for item_id in sorted(dataset.items):
        h.update(item_id.encode() + b"\x00")
    h.update(b"\x01")
    for x in sorted((x.user_id, x.item_id) for x in dataset.interactions):
        h.update(f"{x[0]}\x00{x[1]}\x00".encode())
    return h.hexdigest()


def draw_negatives(pool: Sequence[str], touched: set[str], n: int | None, seed: int, user_id: str) -> list[str]:
    """``n`` items from the sorted ``pool`` minus ``touched``, without replacement (all of them when ``n`` is
    ``None``). Raises ``ValueError`` when the pool is too small."""
    free = [i for i in pool if i not in touched]
    if n is None:
        return free
    if n > len(free):
        raise ValueError(f"user {user_id!r}: only {len(free)} untouched items for {n} negatives")
    rng = np.random.default_rng([seed, user_key(user_id)])
    picks = rng.choice(len(free), size=n, replace=False)
    return [free[int(i)] for i in picks]


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    """How candidate sets are drawn; every field is written into the file header and checked on reuse."""

    negatives: int | None = 9
    target: TargetRule = "last"
    like_above: float | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"negatives": self.negatives, "target": self.target, "like_above": self.like_above, "seed": self.seed}


def make_tasks(
    dataset: Dataset, user_ids: Sequence[str], spec: CandidateSpec
) -> tuple[list[RankingTask], dict[str, str]]:
    """Draw one task per user. Users whose history cannot give a task come back in the second value with the
    reason (they are reported, never dropped silently)."""
    pool = sorted(dataset.items)
    tasks: list[RankingTask] = []
    problems: dict[str, str] = {}
    for user_id in user_ids:
        full = dataset.history(user_id)
        try:
            history, target = split_target(full, spec.target, like_above=spec.like_above)
            negatives = draw_negatives(pool, set(full.item_ids), spec.negatives, spec.seed, user_id)
        except ValueError as exc:
            problems[user_id] = str(exc)
            continue
        candidates = [target.item_id, *negatives]
        if spec.negatives is not None:
            order = np.random.default_rng([spec.seed, user_key(user_id), 1]).permutation(len(candidates))
            candidates = [candidates[int(i)] for i in order]
        tasks.append(RankingTask(user_id, history, target.item_id, tuple(candidates)))
    if problems and not tasks:
        raise DataError(f"no user gives a ranking task: {next(iter(problems.values()))}")
    return tasks, problems


def _task_row(task: RankingTask, full: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user": task.user_id,
        "positive": task.positive,
        "history_length": len(task.history),
        "history_last": task.history.interactions[-1].item_id,
    }
    if not full:
        row["candidates"] = list(task.candidates)
    return row


def save_tasks(
    path: str | Path,
    dataset: Dataset,
    tasks: Sequence[RankingTask],
    spec: CandidateSpec,
    skipped: dict[str, str] | None = None,
) -> Path:
    """Write the tasks as JSON (header, the users without a task and why, one row per task), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": "personalens-candidates",
        "version": FORMAT_VERSION,
        "dataset": dataset.name,
        "catalogue_sha256": catalogue_fingerprint(dataset),
        "spec": spec.to_dict(),
        "skipped": dict(skipped or {}),
        "tasks": [_task_row(t, spec.negatives is None) for t in tasks],
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_skipped(path: str | Path) -> dict[str, str]:
    """The users a candidate file has no task for, with the reason."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return dict(doc.get("skipped") or {})


def load_tasks(path: str | Path, dataset: Dataset, spec: CandidateSpec | None = None) -> list[RankingTask]:
    """Read tasks written by :func:`save_tasks` and rebuild each history from ``dataset``.

    Raises :class:`DataError` when the file was drawn from other data or with another spec (delete it or point the
    experiment elsewhere to draw afresh) or when a row does not match the data.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read candidate file: {exc}", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != "personalens-candidates":
        raise DataError("not a personalens candidate file", path=path, field="format")
    if doc.get("version") != FORMAT_VERSION:
        raise DataError(f"candidate file version {doc.get('version')!r}, expected {FORMAT_VERSION}", path=path)
    if doc.get("catalogue_sha256") != catalogue_fingerprint(dataset):
        raise DataError(
            f"candidate file was drawn from other data than {dataset.name!r} as loaded now; delete it to redraw",
            path=path,
            field="catalogue_sha256",
        )
    saved = CandidateSpec(**doc["spec"])
    if spec is not None and saved != spec:
        raise DataError(f"candidate file was drawn with {saved}, not {spec}; delete it to redraw", path=path)
    pool = sorted(dataset.items)
    tasks = []
    for index, row in enumerate(doc.get("tasks", [])):
        where = f"tasks[{index}]"
        try:
            full = dataset.history(row["user"])
            history, target = split_target(full, saved.target, like_above=saved.like_above)
        except (KeyError, ValueError, DataError) as exc:
            raise DataError(f"{where}: {exc}", path=path, field="user") from None
        if target.item_id != row.get("positive") or len(history) != row.get("history_length"):
            raise DataError(f"{where}: positive or history does not match the data", path=path, field="positive")
        if saved.negatives is None:
            candidates = (target.item_id, *draw_negatives(pool, set(full.item_ids), None, saved.seed, full.user_id))
        else:
            candidates = tuple(row.get("candidates") or ())
            if target.item_id not in candidates or len(candidates) != saved.negatives + 1:
                raise DataError(f"{where}: candidate list is malformed", path=path, field="candidates")
        tasks.append(RankingTask(full.user_id, history, target.item_id, candidates))
    return tasks


def prepare_tasks(
    path: str | Path, dataset: Dataset, user_ids: Sequence[str], spec: CandidateSpec
) -> tuple[list[RankingTask], dict[str, str]]:
    """Load the candidate file when it exists (checking it matches), else draw and write it.

    Returns the tasks for ``user_ids`` (in that order) and the users without a task with the reason. Users in the
    file but not in ``user_ids`` are left out; a user in neither the tasks nor the skipped list is an error (the file
    must cover the run; delete it to redraw)."""
    path = Path(path)
    if path.exists():
        tasks = load_tasks(path, dataset, spec)
        skipped = read_skipped(path)
        by_user = {t.user_id: t for t in tasks}
        missing = [u for u in user_ids if u not in by_user and u not in skipped]
        if missing:
            raise DataError(
                f"candidate file lacks {len(missing)} users (e.g. {missing[0]!r}); delete it to redraw", path=path
            )
        return [by_user[u] for u in user_ids if u in by_user], {u: skipped[u] for u in user_ids if u in skipped}
    tasks, skipped = make_tasks(dataset, user_ids, spec)
    save_tasks(path, dataset, tasks, spec, skipped)
    return tasks, skipped


__all__ = [
    "CandidateSpec",
    "RankingTask",
    "catalogue_fingerprint",
    "draw_negatives",
    "is_liked",
    "load_tasks",
    "make_tasks",
    "prepare_tasks",
    "read_skipped",
    "save_tasks",
    "split_target",
    "user_key",
]
