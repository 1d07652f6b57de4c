"""Load benchmark of the HTTP service's retrieval endpoint, ``GET /v1/users/{user}/persona?item=...``.

    .venv/bin/python benchmarks/bench_service_load.py [--users 100000] [--requests 20000] [--concurrency 16]
        [--backend sqlite|postgres|both] [--clusters 3] [--dim 384] [--seed 0]

For each backend: fill one tenant's persona store with ``--users`` synthetic users (``--clusters`` personas each, with
``--dim``-dimensional centroids around random cluster centres; one ``store.save`` transaction per user, the same path a
build job takes) and report how long the fill took; start the real service with uvicorn on 127.0.0.1 in a child
process; then drive the retrieval endpoint from this process with a bounded load generator (``--concurrency``
asyncio workers sharing one httpx connection pool, ``--requests`` requests in all, each for a random user and a
random item text) and print throughput, latency percentiles and errors.

The service gets the hashed bag-of-words test embedder (``personalens.embed.testing.HashEmbedder``, ``--dim``
dimensions) and a scripted chat model instead of MiniLM and the LLM: the point is store + service throughput, not
model speed. A user's personas are read from the store on their first request and then served from the tenant's
in-memory index, so with random users out of many most requests are first requests (a store read each).

PostgreSQL: a throwaway server is started the way the unit tests do it (``tests/unit/_store_backends.py``: initdb +
``pg_ctl`` in a temporary directory, loopback only, fsync off) and removed afterwards; it needs the server binaries
(``/usr/lib/postgresql/*/bin``) and the ``postgres`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TENANT = "bench"
WORDS = (
    "space opera alien planet starship crew galaxy war orbit station heist detective noir mafia family bank robbery "
    "police chase baking show chef kitchen street food pastry class wine tasting romance comedy drama thriller"
).split()


# ---------------------------------------------------------------- the server (child process)


def serve(data_dir: str, port: int, store_url: str | None, dim: int) -> None:
    import uvicorn

    from personalens.embed.testing import HashEmbedder
    from personalens.llm.testing import ScriptedChatModel
    from personalens.service import ServiceConfig, create_app

    config = ServiceConfig(Path(data_dir), store_url=store_url)
    app = create_app(config, model=ScriptedChatModel(lambda _request: "ok"), embedder=HashEmbedder(dim))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- filling the store


def open_tenant_store(data_dir: Path, store_url: str | None) -> Any:
    if store_url is None:
        from personalens.store import PersonaStore

        return PersonaStore(data_dir / TENANT / "personas.sqlite")
    from personalens.service.tenants import postgres_schema
    from personalens.store.postgres import PostgresPersonaStore

    return PostgresPersonaStore(store_url, schema=postgres_schema(store_url, TENANT))


def fill(store: Any, users: int, clusters: int, dim: int, seed: int, embedder_id: str) -> float:
    """Save ``users`` users with ``clusters`` personas each; returns the seconds taken."""
    from personalens.store import Persona, config_hash

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    config = {"bench": "service-load", "clusters": clusters}
    digest = config_hash(config)
    start = time.perf_counter()
    report_every = max(1, users // 10)
    for n in range(users):
        picks = rng.choice(len(centres), size=clusters, replace=False)
        noise = 0.3 * rng.standard_normal((clusters, dim)).astype(np.float32)
        personas = [
            Persona(
                cluster=c,
                text=f"User {n} likes {' '.join(WORDS[(int(picks[c]) + k) % len(WORDS)] for k in range(3))} stories.",
                centroid=centres[picks[c]] + noise[c],
                selected_item_ids=(f"i{n}-{c}",),
                cluster_size=5,
                budget=2,
            )
            for c in range(clusters)
        ]
        store.save(
            f"u{n}", personas, creator="bench", method="synthetic", config=config, config_hash=digest,
            embedder_id=embedder_id,
        )  # fmt: skip
        if (n + 1) % report_every == 0:
            elapsed = time.perf_counter() - start
            print(f"    filled {n + 1:,} users in {elapsed:.1f} s", flush=True)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the load generator


async def drive(base: str, key: str, users: int, requests: int, concurrency: int, seed: int) -> dict[str, Any]:
    import httpx

    rng = random.Random(seed)
    plan = [
        (f"u{rng.randrange(users)}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))))
        for _ in range(requests)
    ]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60
    ) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(plan):
                user, item = plan[next_index]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/v1/users/{user}/persona", params={"item": item})
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[outcome] = statuses.get(outcome, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": wall,
        "throughput": len(latencies) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "statuses": statuses,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not come up")


def run_backend(backend: str, args: argparse.Namespace, store_url: str | None) -> dict[str, Any]:
    from personalens.embed.testing import HashEmbedder
    from personalens.service import add_key

    data_dir = Path(tempfile.mkdtemp(prefix=f"pl-bench-{backend}-"))
    try:
        key = add_key(data_dir / "keys.json", TENANT)
        print(f"[{backend}] filling the store with {args.users:,} users x {args.clusters} personas ({args.dim}-d)")
        store = open_tenant_store(data_dir, store_url)
        try:
            fill_seconds = fill(store, args.users, args.clusters, args.dim, args.seed, HashEmbedder(args.dim).model_id)
            assert store.count_users() == args.users
        finally:
            store.close()
        print(f"[{backend}] fill: {fill_seconds:.1f} s ({args.users / fill_seconds:,.0f} users/s)")
        port = free_port()
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(data_dir), "--port", str(port)]
        command += ["--dim", str(args.dim)] + (["--store-url", store_url] if store_url else [])
        server = subprocess.Popen(command)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, server)
            asyncio.run(
                drive(base, key, args.users, min(200, args.requests), args.concurrency, args.seed + 1)
            )  # warm-up
            print(f"[{backend}] {args.requests:,} requests, concurrency {args.concurrency}")
            result = asyncio.run(drive(base, key, args.users, args.requests, args.concurrency, args.seed + 2))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        result["fill_seconds"] = fill_seconds
        return result
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.store_url, args.dim)
        return
    if min(args.users, args.requests, args.concurrency, args.clusters, args.dim) < 1:
        parser.error("--users, --requests, --concurrency, --clusters and --dim must be >= 1")

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"embedder: HashEmbedder({args.dim}) test double (not MiniLM); one uvicorn worker; load from this process")
    results: dict[str, dict[str, Any]] = {}
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        if backend == "sqlite":
            results[backend] = run_backend(backend, args, None)
            continue
        sys.path.insert(0, str(HERE.parent / "tests" / "unit"))
        from _store_backends import PostgresServer, find_pg_bindir

        bindir = find_pg_bindir()
        if bindir is None:
            sys.exit("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        server = PostgresServer(bindir)
        try:
            server.start()
            results[backend] = run_backend(backend, args, f"{server.dsn}?schema=bench")
        finally:
            server.remove()

    print()
    print(
        f"users {args.users:,} x {args.clusters} personas, {args.requests:,} requests, concurrency {args.concurrency}"
    )
    print("| backend | fill (s) | req/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, r in results.items():
        print(
            f"| {backend} | {r['fill_seconds']:.1f} | {r['throughput']:.0f} | {r['p50']:.1f} | {r['p90']:.1f} | "
            f"{r['p99']:.1f} | {r['max']:.1f} | {r['errors']} |"
        )
    for backend, r in results.items():
        print(f"{backend} statuses: {r['statuses']}")


if __name__ == "__main__":
    main()
