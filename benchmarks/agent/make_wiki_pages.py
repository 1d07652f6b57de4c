"""Write the offline encyclopedia for a LaMP-2M-like task: one MediaWiki-style page per movie named in the task's
questions and profiles (``wiki-pages.jsonl`` next to them), served on loopback by ``RecordedWikipedia`` during
``personalens eval lamp``.

    .venv/bin/python benchmarks/agent/make_wiki_pages.py eval-data/lamp2m-hetrec
"""

from __future__ import annotations

import sys
from pathlib import Path

from personalens.agent.wikiserver import pages_from_lamp, write_pages_jsonl
from personalens.data.lamp import load_lamp


def main(folder: str) -> None:
    root = Path(folder)
    examples = load_lamp(root / "questions.json", root / "outputs.json")
    pages = pages_from_lamp(examples)
    write_pages_jsonl(pages, root / "wiki-pages.jsonl")
    print(f"{len(pages)} pages from {len(examples)} examples -> {root / 'wiki-pages.jsonl'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
