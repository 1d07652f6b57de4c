"""Writing habits in a training run's folder (benchmarks/deeper/README.md, refiner training): how many personas or
answers begin with a Markdown heading, restate the old profile before revising it, their median length and
self-repeated word trigrams; exact duplicate candidates, seconds per sampled context, candidates naming an item of
their window, and those whose stored leak flag differs from what ``find_leaked_titles`` says today (the rule changed
while a run was sampling). With ``--config`` (the run's
training TOML) also the preference pairs that each iteration's thresholds give on the candidates sampled so far, and
on iteration 1's candidates cut to iteration 2's number per context (what the smaller M alone costs in pairs).

    .venv/bin/python benchmarks/deeper/train_habits.py benchmarks/deeper/results/train-small \
        --config benchmarks/deeper/train-small.toml

Reads ``iter*/contexts.jsonl`` (the personas a context starts from), ``iter*/pairs.jsonl`` (chosen and rejected
answers), ``iter*/samples.jsonl`` (candidates) and ``eval/one_step.jsonl`` (the held-out refinements, stored as the
run's writer stored them); nothing runs on a model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from personalens.profiling.summarize import find_leaked_titles, repeated_trigram_share
from personalens.training.contexts import read_contexts
from personalens.training.pairs import PairConfig, build_pairs
from personalens.training.pipeline import load_train_config
from personalens.training.sampling import read_samples


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _answer(value: str | list[dict[str, str]]) -> str:
    """A pair's answer: plain text, or TRL's conversational form (the last message's content)."""
    return value if isinstance(value, str) else value[-1]["content"]


def _names_old_profile(text: str) -> bool:
    return "Current Profile" in text or "Original Profile" in text


def _restates(text: str) -> bool:
    """Restates the old profile under its own heading and then revises it."""
    return _names_old_profile(text) and "Revised" in text


def _habits(name: str, texts: Iterable[str]) -> None:
    found = list(texts)
    if not found:
        return
    words = [len(t.split()) for t in found]
    headings = sum(t.lstrip().startswith("#") for t in found)
    print(
        f"{name}: {len(found)} texts, heading first {headings}, a current/original "
        f"profile heading {sum(map(_names_old_profile, found))}, restate the profile and revise it "
        f"{sum(map(_restates, found))}, median words {statistics.median(words):g}, under 200 words "
        f"{sum(w < 200 for w in words)}, median self-repeated trigrams "
        f"{statistics.median(repeated_trigram_share(t) for t in found):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the folder given to `personalens train --out`")
    parser.add_argument("--config", type=Path, help="the run's training TOML: also count the pairs so far")
    args = parser.parse_args()
    run = args.run
    for folder in sorted(run.glob("iter*")):
        if (folder / "contexts.jsonl").is_file():
            _habits(f"{folder.name} context personas", (r["persona"] for r in _rows(folder / "contexts.jsonl")))
        if (folder / "pairs.jsonl").is_file():
            pairs = _rows(folder / "pairs.jsonl")
            _habits(f"{folder.name} chosen answers", (_answer(p["chosen"]) for p in pairs))
            _habits(f"{folder.name} rejected answers", (_answer(p["rejected"]) for p in pairs))
        if (folder / "samples.jsonl").is_file():
            samples = _rows(folder / "samples.jsonl")
            candidates = sum(len(s["candidates"]) for s in samples)
            twins = sum(len(s["candidates"]) - len({c["text"] for c in s["candidates"]}) for s in samples)
            seconds = [s["usage"]["seconds"] for s in samples]
            titles = _context_titles(run)
            verdicts = [
                (tuple(c["leaked"]), find_leaked_titles(c["text"], titles[s["context_id"]]))
                for s in samples
                for c in s["candidates"]
            ]
            print(
                f"{folder.name} samples: {len(samples)} contexts, {candidates} candidates, {twins} exact duplicates, "
                f"{statistics.fmean(seconds):.0f} s per context on average, "
                f"{sum(bool(now) for _, now in verdicts)} naming an item, "
                f"{sum(stored != now for stored, now in verdicts)} whose stored leak flag differs from today's rule"
            )
    one_step = run / "eval" / "one_step.jsonl"
    if one_step.is_file():
        rows = _rows(one_step)
        for refiner in dict.fromkeys(r["refiner"] for r in rows):
            _habits(f"held-out refinements by {refiner}", (r["persona"] for r in rows if r["refiner"] == refiner))
    if args.config is not None:
        _pairs_so_far(run, args.config)


def _context_titles(run: Path) -> dict[str, list[str]]:
    """Per context id, the item texts of its current window (what a candidate must not name)."""
    out: dict[str, list[str]] = {}
    for folder in sorted(run.glob("iter*")):
        if (folder / "contexts.jsonl").is_file():
            out.update({cid: [x.text for x in c.current] for cid, c in read_contexts(folder).items()})
    return out


def _pairs_so_far(run: Path, config_path: Path) -> None:
    config = load_train_config(config_path)
    m2 = config.candidates_iteration2 or config.sampling.candidates
    margins = {"iter1": config.pairs.margin, "iter2": config.margin_iteration2}
    for name, margin in margins.items():
        if not (run / name / "samples.jsonl").is_file():
            continue
        samples = read_samples(run / name)
        thresholds = PairConfig(**{**asdict(config.pairs), "margin": margin})
        pairs = build_pairs(samples, thresholds, iteration=int(name[-1]))
        with_pairs = len({p.context_id for p in pairs})
        print(
            f"{name} pairs so far (δ {margin:g}): {len(pairs)} from {len(samples)} contexts ({with_pairs} with a pair)"
        )
        if name == "iter1":
            first = {k: v[:m2] for k, v in samples.items()}
            for delta in sorted({config.pairs.margin, config.margin_iteration2}):
                cut = build_pairs(first, PairConfig(**{**asdict(config.pairs), "margin": delta}), iteration=1)
                print(f"iter1 pairs from each context's first {m2} candidates only (δ {delta:g}): {len(cut)}")


if __name__ == "__main__":
    main()
