"""Before and after training: one-step refinement on held-out users (the layout of DeePer's Table 18).

Every refiner (the frozen base model, the trained adapter, a remote model, …) refines the same initial persona S0 of
the same held-out users once, from the same observation O1; the same predictor (the base model, never the refiner
being judged) scores S0 and each refined persona on the future window W2. Lower future MAE after refinement is
better; the table also gives the change against S0 and the previous/current errors.

Rows go to ``one_step.jsonl`` one per (user, refiner) as they finish, so the comparison is resumable, and each row
keeps the S0 it started from: a refiner added later (iteration 2 after iteration 1 was compared) starts from the very
same S0 instead of a regenerated one. Rows also record the writer's settings (re-asks of copies and of short answers);
rows of other settings are moved to ``one_step.stale.jsonl`` and redone, S0 included, rather than mixed in.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from personalens._files import move_rows_aside, read_jsonl_rows
from personalens.errors import PersonaLensError
from personalens.llm.base import ChatModel
from personalens.refinement.loop import DynamicRefiner, Predictor, RefineConfig
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows

ONE_STEP_FILE = "one_step.jsonl"
STALE_FILE = "one_step.stale.jsonl"

# A writer for a refiner model and a user; the default is PersonaWriter's defaults
WriterFor = Callable[[ChatModel, UserWindows], PersonaWriter]


def writer_settings(writer: PersonaWriter) -> dict[str, Any]:
    """What a row records of its writer: every setting but the model (the row names that itself)."""
    return json.loads(json.dumps({k: v for k, v in writer.config().items() if k != "model"}))


def _retire(path: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Move rows written with other writer settings (or none recorded) to the stale file; return the rest."""
    keep = [r for r in rows if r.get("writer") == settings]
    if len(keep) < len(rows):
        move_rows_aside(path, keep, [r for r in rows if r.get("writer") != settings], path.with_name(STALE_FILE))
    return keep


def compare_refiners(
    users: Sequence[UserWindows],
    refiners: Mapping[str, ChatModel],
    out_dir: str | Path,
    *,
    initial_writer: ChatModel,
    predictor: Predictor,
    min_words: int = 200,
    max_words: int = 320,
    writer_for: WriterFor | None = None,
    initial: Mapping[str, str] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every refiner once on every user (S0 written by ``initial_writer``), append rows, return all rows.

    ``initial`` gives S0 per user id instead (e.g. the S0 of another comparison's rows, so a second comparison of the
    same refiners under other writer settings starts from the very same personas); S0 already in ``out_dir``'s rows
    comes first.

    ``writer_for(model, user)`` gives the writer of S0 and of each refinement; by default a :class:`PersonaWriter`
    with ``min_words``/``max_words`` and its default re-asks. A training run passes the writer its candidates were
    sampled with, so a trained refiner is judged on the kind of answer it was trained on."""
    emit = on_event or (lambda kind, payload: None)

    def default_writer(model: ChatModel, user: UserWindows) -> PersonaWriter:
        return PersonaWriter(model, domain=user.domain, scale=user.scale, min_words=min_words, max_words=max_words)

    make = writer_for or default_writer
    path = Path(out_dir) / ONE_STEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, _ = read_jsonl_rows(path)
    settings = writer_settings(make(initial_writer, users[0])) if users else {}
    if rows and users:
        before = len(rows)
        rows = _retire(path, rows, settings)
        if len(rows) < before:
            emit("stale", {"rows": before - len(rows), "file": str(path.with_name(STALE_FILE))})
    done = {(r["user"], r["refiner"]) for r in rows}
    initial = {**(initial or {}), **{r["user"]: r["initial"] for r in rows if r.get("initial")}}
    with path.open("a", encoding="utf-8") as sink:
        for user in users:
            if all((user.user_id, name) in done for name in refiners):
                continue
            s0 = initial.get(user.user_id)
            if s0 is None:
                try:
                    s0 = make(initial_writer, user).initial(user.windows[0]).text
                except PersonaLensError as exc:
                    emit("failed", {"user": user.user_id, "error": str(exc)})
                    continue
            for name, model in refiners.items():
                if (user.user_id, name) in done:
                    continue
                refiner = DynamicRefiner(make(model, user), predictor, RefineConfig("refine"))
                try:
                    trace = refiner.run(user, rounds=1, initial=s0)
                except PersonaLensError as exc:
                    emit("failed", {"user": user.user_id, "refiner": name, "error": str(exc)})
                    continue
                (record,) = trace.rounds
                row = {
                    "domain": user.source or user.domain,
                    "user": user.user_id,
                    "refiner": name,
                    "model": model.model_id,
                    "before": {
                        "previous": record.before.previous,
                        "current": record.before.current,
                        "future": record.before.future,
                    },
                    "after": {
                        "previous": record.after.previous,
                        "current": record.after.current,
                        "future": record.after.future,
                    },
                    "persona_words": len(record.persona.split()),
                    "initial": s0,
                    "persona": record.persona,
                    "writer": settings,
                    "flags": record.flags,
                    "usage": record.usage.to_dict(),
                }
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                rows.append(row)
                emit("row", {"user": user.user_id, "refiner": name})
    return rows


def summarise_one_step(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per domain and refiner, over the users every refiner finished: mean MAE before/after on each window, the
    future change and its share."""
    refiners = {r["refiner"] for r in rows}
    by_user: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        by_user.setdefault((r["domain"], r["user"]), {})[r["refiner"]] = r
    complete: dict[str, list[dict[str, Mapping[str, Any]]]] = {}
    for (domain, _), per in sorted(by_user.items()):
        if set(per) == refiners:
            complete.setdefault(domain, []).append(per)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for domain, users in complete.items():
        for name in sorted(refiners):
            chosen = [per[name] for per in users]
            cell: dict[str, float] = {"users": float(len(chosen))}
            for when in ("before", "after"):
                for w in ("previous", "current", "future"):
                    cell[f"{when}_{w}"] = statistics.fmean(float(r[when][w]) for r in chosen)
            cell["future_change"] = cell["after_future"] - cell["before_future"]
            cell["future_change_pct"] = (
                100.0 * cell["future_change"] / cell["before_future"] if cell["before_future"] else 0.0
            )
            out.setdefault(domain, {})[name] = cell
    return out


def paired_against(rows: Sequence[Mapping[str, Any]], reference: str = "base") -> dict[str, dict[str, float]]:
    """Each other refiner against ``reference`` user by user, over every domain at once: the mean difference of the
    refined personas' future MAE (negative: better than the reference), its standard error, and on how many users
    it was lower, equal or higher. A held-out set of tens of users is small; this says whether a difference in the
    means is more than noise."""
    by_user: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        by_user.setdefault((r["domain"], r["user"]), {})[r["refiner"]] = float(r["after"]["future"])
    names = sorted({r["refiner"] for r in rows} - {reference})
    out: dict[str, dict[str, float]] = {}
    for name in names:
        diffs = [per[name] - per[reference] for per in by_user.values() if name in per and reference in per]
        if not diffs:
            continue
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        out[name] = {
            "users": float(len(diffs)),
            "mean_diff": statistics.fmean(diffs),
            "se": se,
            "lower": float(sum(d < 0 for d in diffs)),
            "equal": float(sum(d == 0 for d in diffs)),
            "higher": float(sum(d > 0 for d in diffs)),
        }
    return out


def render_one_step(rows: Sequence[Mapping[str, Any]], *, title: str = "One-step refinement on held-out users") -> str:
    table = summarise_one_step(rows)
    lines = [
        f"# {title}",
        "",
        "Future-window MAE of S0 and of its one-step refinement (Table 18 layout); the same "
        "base-model predictor scores every persona; users every refiner finished.",
        "",
    ]
    lines.append("| domain | refiner | users | future MAE S0 | future MAE refined | change | previous | current |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for domain, per in table.items():
        for name, c in sorted(per.items()):
            lines.append(
                f"| {domain} | {name} | {int(c['users'])} | {c['before_future']:.3f} | {c['after_future']:.3f} | "
                f"{c['future_change']:+.3f} ({c['future_change_pct']:+.1f}%) | "
                f"{c['before_previous']:.3f} → {c['after_previous']:.3f} | "
                f"{c['before_current']:.3f} → {c['after_current']:.3f} |"
            )
    paired = paired_against(rows)
    if paired:
        lines += [
            "",
            "Against the base model's refinement, user by user over all domains (future MAE of the refined persona; "
            "negative is better; ± one standard error):",
            "",
            "| refiner | users | mean difference | lower / equal / higher |",
            "|---|---:|---:|---:|",
        ]
        for name, p in paired.items():
            se = "" if math.isnan(p["se"]) else f" ± {p['se']:.3f}"
            lines.append(
                f"| {name} | {int(p['users'])} | {p['mean_diff']:+.3f}{se} | "
                f"{int(p['lower'])} / {int(p['equal'])} / {int(p['higher'])} |"
            )
    return "\n".join(lines) + "\n"


__all__ = ["ONE_STEP_FILE", "compare_refiners", "paired_against", "render_one_step", "summarise_one_step"]
