"""Compare a LaMP run's current rows with the rows an earlier configuration of the same run wrote (kept in the same
rows.jsonl under other digests), method by method, on the examples both finished.

Used for the change of label reading on the LaMP-2M-like table (version 1 → 3):

    git show 2d730d1:benchmarks/agent/results/lamp2m-hetrec/config.json > /tmp/lamp2m-v1.json
    .venv/bin/python benchmarks/agent/compare_digests.py benchmarks/agent/results/lamp2m-hetrec /tmp/lamp2m-v1.json

and for the tool keyword on the same table ("Action:" → "Tool:", since "action" is a tag), with how often each
configuration answered "action" and the probability it gave that tag on average:

    git show e0e82d4:benchmarks/agent/results/lamp2m-hetrec/config.json > /tmp/lamp2m-action.json
    .venv/bin/python benchmarks/agent/compare_digests.py \
        benchmarks/agent/results/lamp2m-hetrec /tmp/lamp2m-action.json --label action

Prints, per method, the number of shared examples, accuracy (or MAE) and the unreadable count under each
configuration, and how many answers changed; with ``--label``, how often each configuration answered that label (and
how often it was the gold answer) and the mean probability it gave it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from personalens.evaluation.lamp import read_rows


def _digests(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text())["digests"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="result folder with rows.jsonl and the current config.json")
    parser.add_argument("earlier", type=Path, help="config.json of the earlier configuration")
    parser.add_argument("--label", action="append", default=[], help="also count answers of this label (repeatable)")
    args = parser.parse_args()
    now, before = _digests(args.run / "config.json"), _digests(args.earlier)
    rows = read_rows(args.run / "rows.jsonl")
    sets: dict[str, dict[tuple[str, str], dict]] = {"now": {}, "before": {}}
    for r in rows:
        for name, digests in (("now", now), ("before", before)):
            if digests.get(r["method"]) == r["digest"]:
                sets[name][(r["method"], r["example"])] = r
    rating = any("abs_error" in r for r in rows)
    key, label = ("abs_error", "MAE") if rating else ("correct", "accuracy")
    extra = "".join(f" '{x}' answers (gold) before | now | mean p before | now |" for x in args.label)
    print(
        f"| method | examples | {label} before | {label} now | unreadable before | unreadable now | answers changed |"
        + extra
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|---:|---:|---:|" * len(args.label))
    for method in now:
        if method not in before or now[method] == before[method]:
            continue
        shared = sorted(e for (m, e) in sets["now"] if m == method and (m, e) in sets["before"])
        if not shared:
            continue
        a = [sets["before"][(method, e)] for e in shared]
        b = [sets["now"][(method, e)] for e in shared]
        score_a = sum(float(r[key]) for r in a) / len(shared)
        score_b = sum(float(r[key]) for r in b) / len(shared)
        unread_a = sum(1 for r in a if not r.get("parsed", True))
        unread_b = sum(1 for r in b if not r.get("parsed", True))
        changed = sum(1 for x, y in zip(a, b, strict=True) if x["pred"] != y["pred"])
        cells = ""
        for x in args.label:
            gold = sum(1 for r in a if r.get("gold") == x)
            counts = [sum(1 for r in rs if r["pred"] == x) for rs in (a, b)]
            mean_p = [sum((r.get("scores") or {}).get(x, 0.0) for r in rs) / len(rs) for rs in (a, b)]
            cells += f" {counts[0]} ({gold}) | {counts[1]} | {mean_p[0]:.2f} | {mean_p[1]:.2f} |"
        print(
            f"| {method} | {len(shared)} | {score_a:.3f} | {score_b:.3f} | {unread_a} | {unread_b} | {changed} |"
            + cells
        )


if __name__ == "__main__":
    main()
