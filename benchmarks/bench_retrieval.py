"""Retrieval benchmark: online persona selection from the in-memory index versus straight from SQLite.

    .venv/bin/python benchmarks/bench_retrieval.py [--users 10000] [--requests 10000] [--dim 384]
                                                   [--embedding-fraction 0.0] [--out bench-results/retrieval.json]

Builds a synthetic store (each user 3-8 personas with ``dim``-d centroids and a short text; a fraction of personas
also get a persona-text embedding), times building the index from it, then serves the same random requests (random
users, random unit targets) three ways, side by side: one ``PersonaIndex.retrieve`` call per request, batched
``PersonaIndex.retrieve_many`` calls, and ``retrieve_from_store`` (one SQLite read per request, no index). Every
request is timed; medians and p99 are over all requests. Nothing here calls an LLM or an embedder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from personalens.retrieval import PersonaIndex, retrieve_from_store
from personalens.store import Persona, PersonaStore, config_hash

WORDS = (
    "likes slow-burning dramas, quiet jazz records, long novels about families, road trips, documentaries on "
    "science, sharp comedies, melancholic indie rock, and anything with a strong female lead"
).split()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary_us(ns: list[int]) -> dict[str, float]:
    us = [v / 1000 for v in ns]
    return {
        "median_us": round(statistics.median(us), 2),
        "p99_us": round(percentile(us, 99), 2),
        "mean_us": round(statistics.fmean(us), 2),
        "max_us": round(max(us), 2),
    }


def build_store(path: Path, n_users: int, dim: int, emb_fraction: float, rng: np.random.Generator) -> dict:
    config = {"method": "summarize", "selection": {"tau": 0.6, "alpha": 1.06}, "bench": True}
    chash = config_hash(config)
    t0 = time.perf_counter()
    n_personas = 0
    with PersonaStore(path) as store:
        for u in range(n_users):
            n = int(rng.integers(3, 9))
            cents = rng.normal(size=(n, dim)).astype(np.float32)
            cents *= (rng.uniform(0.4, 0.9, size=(n, 1)) / np.linalg.norm(cents, axis=1, keepdims=True)).astype(
                np.float32
            )  # means of unit vectors: shorter than 1
            personas = []
            for c in range(n):
                words = rng.choice(WORDS, size=int(rng.integers(12, 25)))
                emb = None
                if rng.random() < emb_fraction:
                    emb = rng.normal(size=dim).astype(np.float32)
                    emb /= np.linalg.norm(emb)
                personas.append(
                    Persona(
                        cluster=c,
                        text="This user " + " ".join(words) + ".",
                        centroid=cents[c],
                        selected_item_ids=tuple(f"item{int(i)}" for i in rng.integers(0, 50_000, size=3)),
                        cluster_size=int(rng.integers(3, 40)),
                        budget=3,
                        embedding=emb,
                    )
                )
            store.save(
                f"user{u:06d}",
                personas,
                creator="personax-build",
                method="summarize",
                config=config,
                config_hash=chash,
                embedder_id=f"synthetic-{dim}d",
            )
            n_personas += n
            if (u + 1) % 2000 == 0:
                log(f"  saved {u + 1}/{n_users} users")
        store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    seconds = time.perf_counter() - t0
    return {
        "users": n_users,
        "personas": n_personas,
        "seconds": round(seconds, 2),
        "users_per_s": round(n_users / seconds, 1),
        "file_bytes": path.stat().st_size,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "bytes_per_persona": round(path.stat().st_size / n_personas),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--embedding-fraction", type=float, default=0.0, help="share of personas with a text embedding")
    parser.add_argument("--batch", type=int, default=256, help="batch size for the batched-call figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, default=None, help="store file (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/retrieval.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-retrieval-")
        path = Path(tmp.name) / "personas.sqlite"
    else:
        path = args.store
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    results: dict = {
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count()},
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    log(f"building a store of {args.users} users ({args.dim}-d) at {path}")
    results["store"] = build_store(path, args.users, args.dim, args.embedding_fraction, rng)
    log(f"  {results['store']}")

    store = PersonaStore(path)
    t0 = time.perf_counter()
    index = PersonaIndex.from_store(store)
    build_s = time.perf_counter() - t0
    results["index_build"] = {
        "seconds": round(build_s, 3),
        "users": len(index),
        "personas": index.n_personas,
        "vector_memory_mb": round(index.nbytes / 2**20, 1),
    }
    log(f"index built: {results['index_build']}")

    users = [f"user{int(i):06d}" for i in rng.integers(0, args.users, size=args.requests)]
    targets = rng.normal(size=(args.requests, args.dim)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)

    modes = ["centroid"] + (["both"] if args.embedding_fraction > 0 else [])
    index_out: dict = {}
    for use in modes:
        for k in (1, 3):
            for u, t in zip(users[:200], targets[:200], strict=True):  # warm-up
                index.retrieve(u, t, k=k, use=use)
            ns = []
            for u, t in zip(users, targets, strict=True):
                s = time.perf_counter_ns()
                index.retrieve(u, t, k=k, use=use)
                ns.append(time.perf_counter_ns() - s)
            index_out[f"single_{use}_k{k}"] = summary_us(ns)
            log(f"index single use={use} k={k}: {index_out[f'single_{use}_k{k}']}")

        batch_ns = []
        t0 = time.perf_counter()
        for lo in range(0, args.requests, args.batch):
            s = time.perf_counter_ns()
            index.retrieve_many(users[lo : lo + args.batch], targets[lo : lo + args.batch], use=use)
            batch_ns.append(time.perf_counter_ns() - s)
        batched_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        whole = index.retrieve_many(users, targets, use=use)
        whole_s = time.perf_counter() - t0
        index_out[f"batched_{use}"] = {
            "batch_size": args.batch,
            "requests_per_s": round(args.requests / batched_s),
            "per_request_us": round(batched_s / args.requests * 1e6, 2),
            "per_batch": summary_us(batch_ns),
            "one_call_all_requests_s": round(whole_s, 4),
            "one_call_requests_per_s": round(args.requests / whole_s),
        }
        log(f"index batched use={use}: {index_out[f'batched_{use}']}")
    results["index"] = index_out

    # The same requests, straight from SQLite (one read of the user's current set per request).
    for u, t in zip(users[:200], targets[:200], strict=True):
        retrieve_from_store(store, u, t)
    ns, agree = [], 0
    for i, (u, t) in enumerate(zip(users, targets, strict=True)):
        s = time.perf_counter_ns()
        got = retrieve_from_store(store, u, t)
        ns.append(time.perf_counter_ns() - s)
        agree += got[0].cluster == whole[i][0].cluster if modes[-1] == "centroid" else 0
    sqlite_single = summary_us(ns)
    results["sqlite"] = {"single_centroid_k1": sqlite_single}
    log(f"sqlite single: {sqlite_single}")
    if modes[-1] == "centroid":
        results["sqlite"]["same_choice_as_index"] = agree / args.requests
    idx = index_out["single_centroid_k1"]
    results["ratio_sqlite_over_index"] = {
        "median": round(sqlite_single["median_us"] / idx["median_us"], 1),
        "p99": round(sqlite_single["p99_us"] / idx["p99_us"], 1),
        "batched_throughput_over_sqlite": round(
            index_out["batched_centroid"]["requests_per_s"] / (1e6 / sqlite_single["mean_us"]), 1
        ),
    }
    store.close()
    if tmp is not None:
        tmp.cleanup()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
