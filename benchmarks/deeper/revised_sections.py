"""How often a Refine answer gives its analysis first and the profile under a "Revised Profile" heading, and what
cutting it to that section (``PersonaWriter(revised_only=True)``) removes (benchmarks/deeper/README.md).

Reads the first answers to Refine prompts that earlier runs left in the LLM response cache
(``~/.cache/personalens/responses.sqlite``, or ``--cache``; read-only, no model is loaded), so it measures nothing on
a machine that has not run ``eval dynamic`` or ``train`` before. One row per model and sampling setting:

* answers: cached first answers to a Refine prompt;
* cut: answers with a revised section (:func:`personalens.profiling.summarize.revised_section`);
* words: median words of the cut answers before and after the cut;
* quoting ratings: cut answers that quote a predicted next to an actual rating, before and after the cut.

    .venv/bin/python benchmarks/deeper/revised_sections.py [--examples 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
from collections import defaultdict
from pathlib import Path

from personalens.profiling.summarize import revised_section

REFINE_MARK = "predictions were too high"  # a phrase of the Refine prompt (refinement/prompts.py)
QUOTES_RATINGS = re.compile(r"predicted\W*(?:rating\W*)?\d[\d.]*.{0,40}?actual", re.IGNORECASE | re.DOTALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/personalens/responses.sqlite")
    parser.add_argument("--examples", type=int, default=0, help="print the first N cut answers around the cut")
    args = parser.parse_args()
    db = sqlite3.connect(f"file:{args.cache}?mode=ro", uri=True)
    groups: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    query = "select model, request, response from responses where request like ?"
    for model, request, response in db.execute(query, (f"%{REFINE_MARK}%",)):
        req = json.loads(request)
        if len(req.get("messages", [])) != 1:  # a follow-up in a conversation, not a first answer
            continue
        text = json.loads(response).get("text", "")
        section, cut = revised_section(text)
        who = "adapter" if "+lora:" in model else "base"
        setting = f"T {req.get('temperature') or 0:g}, top-p {req.get('top_p') or 1:g}"
        setting += f", penalty {req['repetition_penalty']:g}" if req.get("repetition_penalty") else ""
        groups[f"{who}, {setting}"].append((text, section, cut))
    print("| model, sampling | answers | cut | median words before -> after | quoting ratings before -> after |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in sorted(groups.items()):
        cut = [(t, s) for t, s, c in rows if c]
        before = statistics.median(len(t.split()) for t, _ in cut) if cut else 0
        after = statistics.median(len(s.split()) for _, s in cut) if cut else 0
        quoting = (
            sum(bool(QUOTES_RATINGS.search(t)) for t, _ in cut),
            sum(bool(QUOTES_RATINGS.search(s)) for _, s in cut),
        )
        print(f"| {name} | {len(rows)} | {len(cut)} | {before:g} -> {after:g} | {quoting[0]} -> {quoting[1]} |")
    shown = 0
    for rows in groups.values():
        for text, section, cut in rows:
            if cut and shown < args.examples:
                shown += 1
                at = text.rfind(section.splitlines()[0])
                print(f"\n--- example {shown}: ...{text[max(0, at - 300) : at]!r}\n>>> {section[:300]!r}")


if __name__ == "__main__":
    main()
