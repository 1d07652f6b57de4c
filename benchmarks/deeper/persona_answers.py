"""What the persona writer's answer clean-up does to the answers earlier runs got (benchmarks/deeper/README.md).

Reads the first answers to persona prompts that earlier runs left in the LLM response cache
(``~/.cache/personalens/responses.sqlite``, or ``--cache``; read-only, no model is loaded), so it measures nothing on
a machine that has not run ``eval dynamic`` or ``train`` before. Two tables, one row per prompt kind, model and
sampling setting:

1. Revised sections (``PersonaWriter(revised_only=True)``): answers; answers with a revised section
   (:func:`personalens.profiling.summarize.revised_section`); median words of those before and after the cut; those
   that quote a predicted next to an actual rating, before and after the cut.
2. Naming sentences (``PersonaWriter(drop_naming=True)``), dropped as the writer drops them (from the revised
   section, line by line, before it is cleaned and bounded to --max-words): answers whose stored form would name an
   item the prompt listed; sentences dropped; median words of those answers as stored before and after the drop; how
   many of them the drop takes under --min-words that were not already.

    .venv/bin/python benchmarks/deeper/persona_answers.py [--examples 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
from collections import defaultdict
from pathlib import Path

from personalens.profiling.summarize import (
    bound_words,
    clean_persona_text,
    drop_naming_sentences,
    find_leaked_titles,
    revised_section,
)

# phrases of the refinement prompts (refinement/prompts.py) that tell the kinds apart
KINDS = (
    ("refine", "predictions were too high"),
    ("inc_update", "Since then the person rated"),
    ("hier_merge", "Long-term profile"),
    ("initial/regen", "Write a profile of this person"),
)
ITEM_LINE = re.compile(r"^- (.*?): (?:rated [\d.]+|predicted [\d.]+, actual [\d.]+)$", re.MULTILINE)
QUOTES_RATINGS = re.compile(r"predicted\W*(?:rating\W*)?\d[\d.]*.{0,40}?actual", re.IGNORECASE | re.DOTALL)


def first_answers(cache: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """(answer, item titles of the prompt) per "kind, model, sampling" group."""
    db = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    groups: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for model, request, response in db.execute("select model, request, response from responses"):
        req = json.loads(request)
        messages = req.get("messages", [])
        if len(messages) != 1 or req.get("prefill"):  # a follow-up, or a scoring request
            continue
        prompt = messages[0]["content"] if isinstance(messages[0], dict) else messages[0][1]
        kind = next((name for name, phrase in KINDS if phrase in prompt), None)
        if kind is None or "Rules:" not in prompt:
            continue
        who = "adapter" if "+lora:" in model else "base"
        setting = f"T {req.get('temperature') or 0:g}, top-p {req.get('top_p') or 1:g}"
        setting += f", penalty {req['repetition_penalty']:g}" if req.get("repetition_penalty") else ""
        groups[f"{kind}, {who}, {setting}"].append((json.loads(response).get("text", ""), ITEM_LINE.findall(prompt)))
    return dict(sorted(groups.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/personalens/responses.sqlite")
    parser.add_argument("--min-words", type=int, default=200)
    parser.add_argument("--max-words", type=int, default=320)
    parser.add_argument("--examples", type=int, default=0, help="print the first N cut answers around the cut")
    args = parser.parse_args()
    groups = first_answers(args.cache)

    print("Revised sections\n")
    print(
        "| prompt, model, sampling | answers | cut | median words before -> after | quoting ratings before -> after |"
    )
    print("|---|---:|---:|---:|---:|")
    examples = []
    for name, rows in groups.items():
        cut = [(t, s) for t, s, c in ((t, *revised_section(t)) for t, _ in rows) if c]
        examples += cut
        before = statistics.median(len(t.split()) for t, _ in cut) if cut else 0
        after = statistics.median(len(s.split()) for _, s in cut) if cut else 0
        quoting = [sum(bool(QUOTES_RATINGS.search(x[i])) for x in cut) for i in (0, 1)]
        print(f"| {name} | {len(rows)} | {len(cut)} | {before:g} -> {after:g} | {quoting[0]} -> {quoting[1]} |")

    print("\nNaming sentences (dropped from the revised section line by line; words as stored)\n")
    print(
        "| prompt, model, sampling | answers | naming an item | sentences dropped | median words before -> after "
        f"| newly under {args.min_words} words |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in groups.items():
        naming, dropped, before, after, newly_short = 0, 0, [], [], 0
        for text, titles in rows:
            section = revised_section(text)[0]
            stored = bound_words(clean_persona_text(section), args.max_words)[0]
            if not find_leaked_titles(stored, titles):
                continue
            kept, n = drop_naming_sentences(section, titles)
            naming, dropped = naming + 1, dropped + n
            before.append(len(stored.split()))
            after.append(len(bound_words(clean_persona_text(kept), args.max_words)[0].split()))
            newly_short += before[-1] >= args.min_words > after[-1]
        words = f"{statistics.median(before):g} -> {statistics.median(after):g}" if before else ""
        print(f"| {name} | {len(rows)} | {naming} | {dropped} | {words} | {newly_short} |")

    for i, (text, section) in enumerate(examples[: args.examples], 1):
        at = text.rfind(section.splitlines()[0])
        print(f"\n--- example {i}: ...{text[max(0, at - 300) : at]!r}\n>>> {section[:300]!r}")


if __name__ == "__main__":
    main()
