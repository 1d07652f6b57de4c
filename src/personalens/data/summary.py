"""Load any supported format by name and describe what was loaded (behind ``personalens data stats``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from personalens.data.records import Dataset
from personalens.errors import DataError

FORMATS = ("movielens", "personax", "recbole", "agent4rec", "deeper", "deeper-train", "lamp", "csv", "jsonl", "parquet")


def _dataset_summary(dataset: Dataset) -> dict[str, Any]:
    lengths = sorted(len(h) for h in dataset.histories())
    report = dataset.meta.get("load_report")
    return {
        "name": dataset.name,
        "users": len(lengths),
        "items": len(dataset.items),
        "interactions": len(dataset.interactions),
        "rating_scale": dataset.rating_scale,
        "history_length": {
            "min": lengths[0] if lengths else 0,
            "median": statistics.median(lengths) if lengths else 0,
            "max": lengths[-1] if lengths else 0,
        },
        "skipped": dict(report.counts) if report is not None and getattr(report, "counts", None) else {},
    }


DATASET_FORMATS = ("movielens", "personax", "recbole", "agent4rec")


def load_dataset(path: Path, fmt: str = "movielens", *, name: str | None = None, strict: bool = True) -> Dataset:
    """Load a behaviour dataset (users, items, interactions) in one of :data:`DATASET_FORMATS`."""
    from personalens import data

    if fmt == "movielens":
        return data.load_movielens(path, strict=strict)
    if fmt == "personax":
        return data.load_personax_csv(path, strict=strict)
    if fmt == "recbole":
        if not name:
            raise DataError("RecBole needs --name (the atomic files' stem, e.g. CDs)", path=path)
        return data.load_recbole(path, name, strict=strict)
    if fmt == "agent4rec":
        return data.load_agent4rec(path, strict=strict)
    raise DataError(f"format {fmt!r} is not a behaviour dataset; use one of {', '.join(DATASET_FORMATS)}", path=path)


def dataset_stats(path: Path, fmt: str, *, name: str | None = None, strict: bool = True) -> dict[str, Any]:
    """Load ``path`` as ``fmt`` with full validation and return its size. Raises :class:`DataError` on bad input."""
    from personalens import data

    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", path=path)
    if fmt in DATASET_FORMATS:
        return _dataset_summary(load_dataset(path, fmt, name=name, strict=strict))
    if fmt == "deeper":
        rounds = data.load_deeper_iterations(path, strict=strict)
        return {
            "rounds": len(rounds),
            "users": len({r.user_id for r in rounds}),
            "iterations": sorted({r.iteration for r in rounds}),
        }
    if fmt == "deeper-train":
        users = data.load_deeper_train_users(path, strict=strict)
        return {"users": len(users), "windows_per_user": sorted({len(u.windows) for u in users})}
    if fmt == "lamp":
        examples = data.load_lamp(path, strict=strict)
        sizes = [len(e.profile) for e in examples]
        return {
            "examples": len(examples),
            "profile_entries": {
                "min": min(sizes, default=0),
                "max": max(sizes, default=0),
                "total": sum(sizes),
            },
        }
    raise DataError(
        "generic tables need a column mapping; use personalens.data.load_table(path, columns=ColumnMap(...))",
        path=path,
    )
