"""The held-out one-step comparison of a training run again, with the persona writer's answer clean-ups on
(benchmarks/deeper/README.md).

The training run's own comparison (``RUN/eval/one_step.md``) writes as its candidates were sampled; the small run
predates the clean-ups, so it stores answers whole. The iteration-1 adapter learnt to restate the old profile under a
"Current Profile" heading before a "Revised Profile" one (81 of its 91 greedy Refine answers in the response cache),
so stored whole and cut at 320 words its refinements are mostly the old profile. This script asks: with each answer
cut to its revised section and sentences that name an item dropped (``revised_only``, ``drop_naming``), how do the
refiners compare? Every refiner refines the same S0 as in ``RUN/eval/one_step.jsonl`` (users without one there get a
new S0), with the training run's writer otherwise (single replies, a short answer asked for again in full, no copy
re-ask) and the same base-model predictor. Cached answers are reused; what the clean-ups change is scored anew.

Rows go to ``--out`` (default ``RUN/eval-clean``), resumable; the table to ``one_step.md`` there and stdout, with
how many refinements were cut, had sentences dropped, or stayed under the minimum length.

    .venv/bin/python benchmarks/deeper/one_step_clean.py benchmarks/deeper/train-small.toml \\
        benchmarks/deeper/results/train-small

Loads the embedded model (and each adapter in turn); run nothing else on the model meanwhile.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from personalens._files import read_jsonl_rows
from personalens.factory import build_chat_model
from personalens.llm.base import ChatModel
from personalens.refinement.loop import ProbabilityPredictor
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows
from personalens.settings import load_settings
from personalens.training.evaluate import ONE_STEP_FILE, compare_refiners, render_one_step
from personalens.training.pipeline import ADAPTER_GGUF, TrainPipeline, load_train_config


def _unused(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("this script trains nothing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the training TOML of the run")
    parser.add_argument("run", type=Path, help="the run's output folder")
    parser.add_argument("--out", type=Path, default=None, help="rows and table (default: RUN/eval-clean)")
    args = parser.parse_args()
    out = args.out or args.run / "eval-clean"
    config = load_train_config(args.config)
    settings = load_settings()
    base = build_chat_model(settings)
    opened: list[Any] = [base]
    refiners: dict[str, ChatModel] = {"base": base}
    for iteration in ("iter1", "iter2"):
        adapter = args.run / iteration / ADAPTER_GGUF
        if adapter.exists():
            model = build_chat_model(
                dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, lora=str(adapter)))
            )
            opened.append(model)
            refiners[f"iteration {iteration[-1]}"] = model
    pipeline = TrainPipeline(  # only for its held-out users and predictor: nothing is trained or exported
        config,
        args.run,
        model_for=lambda adapter: base,
        predictor=ProbabilityPredictor(base),
        base_model=None,
        trainer=_unused,
        exporter=_unused,
    )
    first, _ = read_jsonl_rows(args.run / "eval" / ONE_STEP_FILE)

    def writer_for(model: ChatModel, user: UserWindows) -> PersonaWriter:
        return pipeline.writer(model, user, revised_only=True, drop_naming=True)

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        print(kind, payload, file=sys.stderr, flush=True)

    try:
        rows = compare_refiners(
            pipeline.heldout_users(),
            refiners,
            out,
            initial_writer=base,
            predictor=pipeline.predictor,
            writer_for=writer_for,
            initial={r["user"]: r["initial"] for r in first if r.get("initial")},
            on_event=on_event,
        )
    finally:
        for model in opened:
            model.close()
    table = render_one_step(rows, title="One-step refinement on held-out users, answers cleaned up")
    lines = ["", "| refiner | refinements | cut to the revised section | sentences dropped | under min_words |"]
    lines.append("|---|---:|---:|---:|---:|")
    for name in refiners:
        mine = [r for r in rows if r["refiner"] == name]
        flags = [r.get("flags") or {} for r in mine]
        cut = sum(f.get("cut_to_revision", 0) > 0 for f in flags)
        dropped = sum(f.get("dropped_sentences", 0) > 0 for f in flags)
        short = sum(bool(f.get("short")) for f in flags)
        lines.append(f"| {name} | {len(mine)} | {cut} | {dropped} | {short} |")
    text = table + "\n".join(lines) + "\n"
    (out / "one_step.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
