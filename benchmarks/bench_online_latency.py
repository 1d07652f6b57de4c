"""Online cost per recommendation request (the PersonaX paper's Figure 2, measured instead of modelled).

    .venv/bin/python benchmarks/bench_online_latency.py [--users 2] [--sizes 5 10 20] [--k 10]
        [--data ../shared/data/movielens-latest-small] [--min-ratings 200] [--out bench-results/online_latency.json]

For each sampled MovieLens user (>= ``--min-ratings`` ratings; profile = liked behaviours before the held-out last
liked item) and each candidate-set size N_I, one request = "rank these N_I candidates for this user" with the
embedded LLM scoring every candidate from its rating-token probabilities. What differs is where the persona comes
from:

* **PersonaX** — personas were written *offline* (one per cluster, timed separately and reported as the offline
  cost); online: embed the candidates, pick each candidate's persona by centroid similarity, score.
* **Recent + Summarisation** — online: summarise the k most recent behaviours, then score.
* **Relevance + Summarisation** — online, per candidate: take the k behaviours nearest the candidate (their
  embeddings computed offline), summarise them, score the candidate with that persona (N_I summaries per request).

The LLM response cache is off, so every request really runs the model; llama.cpp's own prompt-prefix reuse stays on,
as it would in production. Requests run one after another on an otherwise idle machine (2 cores here): run nothing
else at the same time. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalens.data import load_movielens
from personalens.data.records import Interaction, Item
from personalens.embed.minilm import MiniLMEmbedder
from personalens.evaluation.candidates import draw_negatives, split_target
from personalens.evaluation.rankers import LLMRanker, PersonaText, SummaryProfiler
from personalens.jobs.build import behaviour_times
from personalens.llm.base import Usage
from personalens.llm.embedded import LlamaCppModel
from personalens.llm.usage import UsageMeter
from personalens.selection import PersonaXSelector, make_sampler

FIELDS = ("genres",)
METHODS = ("PersonaX (cached)", "Recent + Summarisation", "Relevance + Summarisation")


@dataclass
class Context:
    """What one user's requests need: the backends, the behaviours and PersonaX's cached personas."""

    embedder: MiniLMEmbedder
    profiler: SummaryProfiler
    ranker: LLMRanker
    k: int
    liked: list[Interaction]
    items: dict[str, Item]
    behaviour_vecs: np.ndarray
    times: np.ndarray
    personas: list[PersonaText]
    centroids: np.ndarray


def serve(method: str, cands: list[Item], ctx: Context) -> None:
    """One request: rank ``cands`` for the user, with the persona coming from where ``method`` says."""
    if method.startswith("PersonaX"):
        c_vec = ctx.embedder.embed([c.text(FIELDS) for c in cands])
        c_vec = c_vec / np.linalg.norm(c_vec, axis=1, keepdims=True)
        assign = np.argmax(c_vec @ ctx.centroids.T, axis=1)
        ctx.ranker.score(ctx.personas, [int(a) for a in assign], cands)
    elif method.startswith("Recent"):
        picks = make_sampler("recent").sample(ctx.behaviour_vecs, ctx.k, timestamps=ctx.times)
        persona = ctx.profiler.persona([ctx.liked[int(i)] for i in picks], ctx.items)
        ctx.ranker.score([persona], [0] * len(cands), cands)
    else:
        c_vec = ctx.embedder.embed([c.text(FIELDS) for c in cands])
        sampler = make_sampler("relevance")
        shown: list[PersonaText] = []
        for c in range(len(cands)):
            picks = sampler.sample(ctx.behaviour_vecs, ctx.k, timestamps=ctx.times, target=c_vec[c])
            shown.append(ctx.profiler.persona([ctx.liked[int(i)] for i in picks], ctx.items))
        ctx.ranker.score(shown, list(range(len(cands))), cands)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/movielens-latest-small")
    )
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--min-ratings", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--k", type=int, default=10, help="behaviours per online persona (Recent, Relevance)")
    parser.add_argument("--ratio", type=float, default=0.1, help="PersonaX selection ratio (offline)")
    parser.add_argument("--max-words", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/online_latency.json")
    args = parser.parse_args()

    raw = load_movielens(args.data)
    counts: dict[str, int] = {}
    for x in raw.interactions:
        counts[x.user_id] = counts.get(x.user_id, 0) + 1
    dataset = raw.with_labels(like_above=3.0, dislike_below=3.0)
    eligible = sorted((u for u, n in counts.items() if n >= args.min_ratings), key=int)
    rng = np.random.default_rng(args.seed)
    users = [eligible[int(i)] for i in sorted(rng.choice(len(eligible), size=args.users, replace=False))]
    pool = sorted(dataset.items)
    embedder = MiniLMEmbedder()
    backend = LlamaCppModel()
    model = UsageMeter(backend)
    t0 = time.perf_counter()
    backend.load()
    load_seconds = time.perf_counter() - t0
    profiler = SummaryProfiler(model, max_words=args.max_words, max_items=max(args.k, 30), item_fields=FIELDS)
    ranker = LLMRanker(model, item_fields=FIELDS)
    results: list[dict] = []
    offline: list[dict] = []
    for user in users:
        history, target = split_target(dataset.history(user), "last_liked")
        liked = [x for x in history if x.label]
        items: dict[str, Item] = dataset.items
        behaviour_vecs = embedder.embed([items[x.item_id].text(FIELDS) for x in liked])  # offline for every method
        times = behaviour_times(liked)
        negatives = draw_negatives(pool, set(dataset.history(user).item_ids), max(args.sizes) - 1, args.seed, user)
        all_candidates = [target.item_id, *negatives]

        # ---- PersonaX offline: select, one persona per cluster, keep centroids (what the store would hold)
        t = time.perf_counter()
        before = model.total
        selection = PersonaXSelector(ratio=args.ratio).select(behaviour_vecs, times)
        groups = [g for g in selection.selected_by_cluster if len(g)]
        keep = [c for c, g in enumerate(selection.selected_by_cluster) if len(g)]
        personas = [profiler.persona([liked[i] for i in g], items) for g in groups]
        centroids = np.asarray(selection.centroids, dtype=np.float64)[keep]
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        offline.append(
            {
                "user": user,
                "behaviours": len(liked),
                "clusters": len(groups),
                "budget": selection.budget,
                "seconds": round(time.perf_counter() - t, 2),
                "usage": (model.total - before).to_dict(),
            }
        )
        log(f"user {user}: {len(liked)} liked, offline PersonaX {offline[-1]['seconds']} s for {len(groups)} personas")

        ctx = Context(embedder, profiler, ranker, args.k, liked, items, behaviour_vecs, times, personas, centroids)
        for size in args.sizes:
            cands = [items[c] for c in all_candidates[:size]]

            for method in METHODS:
                before = model.total
                start = time.perf_counter()
                serve(method, cands, ctx)
                seconds = time.perf_counter() - start
                used: Usage = model.total - before
                results.append(
                    {"user": user, "n_candidates": size, "method": method, "seconds": seconds, "usage": used.to_dict()}
                )
                log(f"  N_I={size:2d} {method:<26} {seconds:7.2f} s, {used.calls} LLM calls")

    table = []
    for size in args.sizes:
        for method in METHODS:
            rows = [r for r in results if r["n_candidates"] == size and r["method"] == method]
            table.append(
                {
                    "n_candidates": size,
                    "method": method,
                    "seconds_mean": round(statistics.fmean(r["seconds"] for r in rows), 2),
                    "seconds_each": [round(r["seconds"], 2) for r in rows],
                    "llm_calls_mean": statistics.fmean(r["usage"]["calls"] for r in rows),
                    "tokens_mean": statistics.fmean(
                        r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in rows
                    ),
                }
            )
    offline_mean = statistics.fmean(o["seconds"] for o in offline)
    lines = [
        "| N_I | method | online s / request (mean) | per user | LLM calls | tokens | vs PersonaX |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for row in table:
        px = next(r for r in table if r["n_candidates"] == row["n_candidates"] and r["method"].startswith("PersonaX"))
        ratio = row["seconds_mean"] / px["seconds_mean"]
        lines.append(
            f"| {row['n_candidates']} | {row['method']} | {row['seconds_mean']:.1f} | "
            f"{', '.join(f'{s:.1f}' for s in row['seconds_each'])} | {row['llm_calls_mean']:.0f} | "
            f"{row['tokens_mean']:.0f} | {ratio:.2f}x |"
        )
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "model": model.model_id,
        "model_load_seconds": round(load_seconds, 2),
        "args": vars(args),
        "users": users,
        "offline_personax": offline,
        "offline_personax_seconds_mean": round(offline_mean, 2),
        "table": table,
        "requests": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    print(
        f"\nPersonaX offline build (not on the request path): {offline_mean:.1f} s per user on average "
        f"({', '.join(str(o['clusters']) for o in offline)} personas). Model load {load_seconds:.1f} s. JSON: {out}"
    )
    model.close()


if __name__ == "__main__":
    main()
