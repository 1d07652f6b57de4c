"""PersonaX selection benchmark: time of cluster + allocate + select for one user, the memory-bounded path at
n = 20,000, and how many clusters real users get under the default threshold rule and under the paper's τ.

    .venv/bin/python benchmarks/bench_selection.py [--data ../shared/data/movielens-latest-small] [--reps 25]

Real users come from MovieLens latest-small, items embedded with MiniLM (item text = title + genres); the embeddings
are cached in bench-results/ so reruns skip the ~90 s embedding step. Each user's history is taken in time order and
cut to its first n behaviours (n = 50, 200, 480, 2000; synthetic clustered data where no user is that long). Timings
are medians over ≥ 20 repetitions per user after one warm-up; the table gives the median over users [min–max].
Embedding is not timed. The stage columns split the default configuration's time: the Gram product (float32
``syrk``), scipy's linkage, the whole clustering step, and the rest (budget allocation + Algorithm 2 + bookkeeping,
total − clustering). Results are printed and written to bench-results/selection.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.linalg import blas
from scipy.spatial.distance import squareform

from personalens.selection import PersonaXSelector, auto_n_clusters
from personalens.selection._distances import single_blas_thread, sq_distance_matrix
from personalens.selection.clustering import cluster_with_distances

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "movielens-latest-small"
OUT = ROOT / "bench-results"
SIZES = (50, 200, 480, 2000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- data --------------------------------------------------------------------------------------------------------


def load_users(data: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """{user: item row indices in time order}, the item embeddings, and {item_id: row}."""
    from personalens.data import load_movielens
    from personalens.embed.minilm import MiniLMEmbedder

    dataset = load_movielens(data)
    item_ids = sorted(dataset.items)
    texts = [dataset.items[i].text() for i in item_ids]  # "Title (year); genres: A, B"
    embedder = MiniLMEmbedder()
    key = hashlib.sha256(("\n".join(texts) + embedder.model_id).encode()).hexdigest()[:16]
    cache = OUT / f"selection-minilm-{key}.npy"
    if cache.exists():
        emb = np.load(cache)
        log(f"embeddings: cached {cache.name} {emb.shape}")
    else:
        log(f"embedding {len(texts)} movies with MiniLM (cached afterwards) ...")
        start = time.perf_counter()
        emb = embedder.embed(texts)
        log(f"  {time.perf_counter() - start:.0f} s")
        OUT.mkdir(exist_ok=True)
        np.save(cache, emb)
    row = {item: i for i, item in enumerate(item_ids)}
    users = {h.user_id: np.array([row[x.item_id] for x in h]) for h in dataset.histories()}
    return users, emb, row


def synthetic(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: 15 topics with Dirichlet(2) weights, micro-clusters of 1 + Geometric(1/8) items around
    them, item = topic + 0.5·micro offset + 0.38·noise (noise ~ N(0, I/d)), shuffled; float32."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((15, d))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(15, 2.0))
    out = np.empty((n, d), dtype=np.float32)
    i = 0
    while i < n:
        t = rng.choice(15, p=weights)
        size = min(1 + int(rng.geometric(1 / 8)), n - i)
        micro = topics[t] + 0.5 * rng.standard_normal(d) / math.sqrt(d)
        out[i : i + size] = micro + 0.38 * rng.standard_normal((size, d)) / math.sqrt(d)
        i += size
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[rng.permutation(n)]


# --- timing ------------------------------------------------------------------------------------------------------


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "count": len(values),
    }


def time_user(x: np.ndarray, selector: PersonaXSelector, reps: int, stages: bool) -> dict[str, float]:
    out = {"total_ms": median_ms(lambda: selector.select(x), reps)}
    if stages:
        skip = ("alpha", "ratio", "leftover", "diversity")
        params = {k: v for k, v in selector.get_params().items() if k not in skip}

        def cluster() -> None:
            cluster_with_distances(x, **params)

        out["cluster_ms"] = median_ms(cluster, reps)
        with single_blas_thread():  # as inside select()
            out["gram_ms"] = median_ms(lambda: sq_distance_matrix(x, full=False), reps)
        y2 = np.asarray(squareform(sq_distance_matrix(x, full=False), checks=False), dtype=np.float64)
        y = y2 if selector.linkage == "complete" else np.sqrt(y2)
        out["linkage_ms"] = median_ms(lambda: scipy_linkage(y, method=selector.linkage), reps)
        out["allocate_select_ms"] = max(0.0, out["total_ms"] - out["cluster_ms"])
    return out


CONFIGS = {
    "default (complete, n_clusters=auto, α=1.06, ratio=0.5)": {},
    "reference code (ward, τ=0.5, code diversity)": {
        "linkage": "ward",
        "threshold_rule": "distance",
        "threshold": 0.5,
        "diversity": "reference",
        "leftover": "reference",
    },
    "paper τ=0.5 (complete)": {"threshold_rule": "distance", "threshold": 0.5},
}


def pick_histories(users: dict[str, np.ndarray], emb: np.ndarray, max_users: int) -> dict[int, tuple[str, list]]:
    """Per size n: (source description, [(user, (n, d) float32 embeddings of the first n behaviours)])."""
    rng = np.random.default_rng(0)
    out = {}
    for n in SIZES:
        long_enough = sorted(u for u, rows in users.items() if len(rows) >= n)
        if long_enough:
            chosen = sorted(rng.choice(long_enough, size=min(max_users, len(long_enough)), replace=False).tolist())
            source = f"MovieLens ({len(long_enough)} users with >= {n} ratings, {len(chosen)} timed)"
            out[n] = (source, [(u, emb[users[u][:n]]) for u in chosen])
        else:
            out[n] = ("synthetic", [(f"synthetic-{s}", synthetic(n, seed=s)) for s in range(3)])
    return out


def bench_sizes(histories: dict[int, tuple[str, list]], reps: int) -> dict:
    results = {}
    first = next(iter(CONFIGS))
    for n, (source, users) in histories.items():
        per_config = {}
        for name, kwargs in CONFIGS.items():
            used = users if name == first or n <= 480 else users[:5]
            selector = PersonaXSelector(**kwargs)
            rows = [time_user(x, selector, reps, stages=name == first) for _, x in used]
            selections = [selector.select(x) for _, x in used]
            per_config[name] = {
                "users": len(rows),
                **{key: summary([r[key] for r in rows]) for key in rows[0]},
                "clusters": summary([float(s.n_clusters) for s in selections]),
                "selected_fraction": summary([s.budget / n for s in selections]),
            }
            total = per_config[name]["total_ms"]
            log(
                f"  n={n:5d} {name:55s} {total['median']:8.2f} ms [{total['min']:.2f}–{total['max']:.2f}] "
                f"clusters {per_config[name]['clusters']['median']:.0f}"
            )
        results[str(n)] = {"source": source, "configs": per_config}
    return results


def blas_threading(emb: np.ndarray, reps: int) -> dict:
    """Why selection pins BLAS to one thread: one float32 ``syrk`` (the Gram product of the exact path) with
    OpenBLAS' own threading vs inside ``single_blas_thread``. On a busy 2-core machine the threaded call waits for
    its helper thread to be scheduled."""
    out = {}
    for n in (50, 480, 2000):
        x = np.ascontiguousarray(emb[:n])
        threaded = median_ms(lambda x=x: blas.ssyrk(1.0, x.T, trans=1, lower=1), reps)
        with single_blas_thread():
            single = median_ms(lambda x=x: blas.ssyrk(1.0, x.T, trans=1, lower=1), reps)
        out[str(n)] = {"openblas_threads_ms": round(threaded, 3), "one_thread_ms": round(single, 3)}
        log(f"  ssyrk {n:5d} x {x.shape[1]}: OpenBLAS threading {threaded:7.3f} ms, one thread {single:7.3f} ms")
    return out


# --- cluster counts ----------------------------------------------------------------------------------------------


def cluster_counts(users: dict[str, np.ndarray], emb: np.ndarray, min_ratings: int = 200) -> dict:
    long_users = [rows for rows in users.values() if len(rows) >= min_ratings]
    settings = {
        "default: complete, n_clusters=auto": {},
        "complete, τ=0.5 (paper)": {"threshold_rule": "distance", "threshold": 0.5},
        "complete, τ=0.7 (paper)": {"threshold_rule": "distance", "threshold": 0.7},
        "ward, τ=0.5 (reference code)": {"linkage": "ward", "threshold_rule": "distance", "threshold": 0.5},
        "ward, τ=0.7 (reference code)": {"linkage": "ward", "threshold_rule": "distance", "threshold": 0.7},
        "complete, quantile 0.3": {"threshold_rule": "quantile", "threshold": 0.3},
    }
    out: dict = {"users": len(long_users), "lengths": summary([float(len(r)) for r in long_users])}
    for name, kwargs in settings.items():
        selector = PersonaXSelector(**kwargs)
        counts, fractions, largest, taus = [], [], [], []
        for rows in long_users:
            sel = selector.select(emb[rows])
            counts.append(float(sel.n_clusters))
            fractions.append(sel.budget / sel.n)
            largest.append(float(sel.sizes.max()) / sel.n)
            taus.append(sel.threshold)
        out[name] = {
            "clusters": summary(counts),
            "selected_fraction": summary(fractions),
            "largest_cluster_fraction": summary(largest),
            "threshold_used": summary(taus),
        }
        c = out[name]["clusters"]
        log(
            f"{name:40s} clusters min/median/max {c['min']:.0f}/{c['median']:.0f}/{c['max']:.0f}  "
            f"selected {out[name]['selected_fraction']['median']:.2f} of n (ratio 0.5)"
        )
    return out


# --- n = 20,000 (memory-bounded path), in a fresh process for a clean peak RSS -----------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return -1


def _big_child(n: int, kwargs: dict, reps: int, queue) -> None:
    x = synthetic(n)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status("VmRSS")
    selector = PersonaXSelector(**kwargs)
    times, sel = [], None
    for _ in range(reps):
        start = time.perf_counter()
        sel = selector.select(x)
        times.append(time.perf_counter() - start)
    assert sel is not None
    queue.put(
        {
            "n": n,
            "config": kwargs,
            "reps": reps,
            "seconds": [round(t, 2) for t in times],
            "median_s": round(statistics.median(times), 2),
            "rss_before_mb": round(before / 1024, 1),
            "peak_rss_mb": round(_status("VmHWM") / 1024, 1),
            "peak_delta_mb": round((_status("VmHWM") - before) / 1024, 1) if reset else None,
            "hwm_reset": reset,
            "clusters": sel.n_clusters,
            "largest_cluster": int(sel.sizes.max()),
            "threshold": round(sel.threshold, 4),
            "selected": sel.budget,
            "memory_bounded": sel.memory_bounded,
        }
    )


def bench_big(n: int, reps: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    runs = []
    for kwargs in (
        {},
        {"linkage": "ward"},
        {"threshold_rule": "distance", "threshold": 0.5},
    ):
        queue = ctx.Queue()
        proc = ctx.Process(target=_big_child, args=(n, kwargs, reps, queue))
        proc.start()
        result = queue.get()
        proc.join()
        full_matrix_mb = n * (n - 1) / 2 * 8 / 2**20
        result["condensed_float64_matrix_mb"] = round(full_matrix_mb, 1)
        log(
            f"n={n} {kwargs or 'default'}: {result['median_s']} s (runs {result['seconds']}), peak RSS "
            f"{result['peak_rss_mb']} MB (+{result['peak_delta_mb']} MB), {result['clusters']} clusters"
        )
        runs.append(result)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--reps", type=int, default=25, help="repetitions per user (median); at least 20")
    parser.add_argument("--users", type=int, default=40, help="users timed per size (all if fewer)")
    parser.add_argument("--big", type=int, default=20_000, help="n of the memory-bounded run (0 to skip)")
    parser.add_argument("--big-reps", type=int, default=3)
    args = parser.parse_args()
    reps = max(20, args.reps)

    load_start = os.getloadavg()
    users, emb, _ = load_users(args.data)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset: OpenBLAS default)"),
            "loadavg_at_start": [round(v, 2) for v in load_start],
        },
        "reps_per_user": reps,
        "auto_n_clusters": {str(n): auto_n_clusters(n) for n in (*SIZES, args.big or 20_000)},
    }
    log("\n== cluster counts, MovieLens users with >= 200 ratings ==")
    report["cluster_counts"] = cluster_counts(users, emb)
    log("\n== time per user (cluster + allocate + select) ==")
    report["per_user"] = bench_sizes(pick_histories(users, emb, args.users), reps)
    log("\n== BLAS threading (why selection runs BLAS on one thread) ==")
    report["blas_threading"] = blas_threading(emb, reps)
    if args.big:
        log(f"\n== memory-bounded path, synthetic n = {args.big} ==")
        report["memory_bounded"] = bench_big(args.big, args.big_reps)
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    OUT.mkdir(exist_ok=True)
    (OUT / "selection.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    log(f"\nwritten to {OUT / 'selection.json'}")


if __name__ == "__main__":
    main()
