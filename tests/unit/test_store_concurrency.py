"""Concurrent writers, threads and processes, appending versions for the same user, on every backend: each save lands
exactly once, versions are 1..N with no gap and no duplicate, and the returned version is the one stored."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import traceback

import numpy as np
from _store_backends import open_from_spec

from personalens.store import Persona, PersonaStoreProtocol

DIM = 8


def personas(seed: int) -> list[Persona]:
    rng = np.random.default_rng(seed)
    return [Persona(cluster=c, text=f"p{seed}-{c}", centroid=rng.normal(size=DIM).astype(np.float32)) for c in range(3)]


def append(store: PersonaStoreProtocol, user: str, creator: str, seed: int) -> int:
    return store.save(
        user,
        personas(seed),
        creator=creator,
        method="summarize",
        config={"seed": seed, "writer": creator},
        config_hash=f"h{seed}",
        embedder_id="e",
        parent_version="current",
    ).version


def assert_history_consistent(store: PersonaStoreProtocol, user: str, expected: int) -> None:
    history = store.versions(user)
    assert [v.version for v in history] == list(range(1, expected + 1))
    assert sum(v.is_current for v in history) == 1 and history[-1].is_current
    assert all(v.n_personas == 3 for v in history)
    assert all(v.parent_version is None or v.parent_version < v.version for v in history)


def assert_each_save_landed_once(store: PersonaStoreProtocol, user: str, returned: dict[str, list[int]]) -> None:
    """Every (writer, seed) saved is stored exactly once, under the version its save returned."""
    stored: dict[tuple[str, int], list[int]] = {}
    for info in store.versions(user):
        s = store.get(user, info.version)
        stored.setdefault((s.config["writer"], s.config["seed"]), []).append(s.version)
        assert s.creator == s.config["writer"] and s.personas == tuple(personas(s.config["seed"]))
    assert all(len(vs) == 1 for vs in stored.values()), "a save was stored twice"
    by_writer = {w: sorted(v for (writer, _), (v,) in stored.items() if writer == w) for w in returned}
    assert by_writer == {w: sorted(vs) for w, vs in returned.items()}
    assert sum(len(vs) for vs in returned.values()) == len(stored)


def run_threads(target, n: int) -> list:
    results: list = []
    errors: list = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            results.append(target(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    assert not errors, errors
    return results


def test_threads_sharing_one_store(store_factory):
    with store_factory.open() as store:
        results = run_threads(lambda i: (f"t{i}", [append(store, "u", f"t{i}", 100 * i + j) for j in range(5)]), 8)
        versions = sorted(v for _, vs in results for v in vs)
        assert versions == list(range(1, 41))
        assert_history_consistent(store, "u", 40)
        assert_each_save_landed_once(store, "u", dict(results))


def test_threads_with_their_own_connections(store_factory):
    def work(i: int) -> tuple[str, list[int]]:
        with store_factory.open() as own:  # also races the creation and migration of the store
            return f"t{i}", [append(own, "u", f"t{i}", 100 * i + j) for j in range(6)]

    results = run_threads(work, 6)
    assert sorted(v for _, vs in results for v in vs) == list(range(1, 37))
    with store_factory.open() as store:
        assert_history_consistent(store, "u", 36)
        assert_each_save_landed_once(store, "u", dict(results))


def test_concurrent_saves_rollbacks_and_build_marks(store_factory):
    """Writers of different kinds on one user: rollbacks and saves share the numbering; no upsert is lost."""
    with store_factory.open() as store:
        append(store, "u", "seed", 0)
        store.start_run("run", "h", {})

    def work(i: int) -> list[int]:
        made = []
        with store_factory.open() as own:
            for j in range(4):
                if (i + j) % 2:
                    made.append(own.rollback("u", 1, creator=f"rb{i}"))
                else:
                    made.append(own.save("u", personas(j), creator=f"w{i}", method="m", config={"i": i, "j": j},
                                         config_hash="x", embedder_id="e", parent_version="current"))  # fmt: skip
                own.mark_build("run", "u", "done")
        return [s.version for s in made]

    results = run_threads(work, 4)
    assert sorted(v for vs in results for v in vs) == list(range(2, 18))
    with store_factory.open() as store:
        history = store.versions("u")
        assert [v.version for v in history] == list(range(1, 18)) and history[-1].is_current
        rollbacks = [v for v in history if v.creator.startswith("rb")]
        assert len(rollbacks) == 8 and all(v.parent_version == 1 for v in rollbacks)
        assert all(store.diff("u", 1, v.version).is_empty for v in rollbacks)
        assert store_factory.query("SELECT attempts FROM build_status WHERE run_id = 'run'") == [(16,)]


def _process_worker(spec, name: str, n: int, all_open, out) -> None:
    try:
        with open_from_spec(spec) as store:  # the processes race to create and migrate the store
            all_open.wait(60)  # then race to append
            versions = []
            for j in range(n):
                versions.append(append(store, "shared", name, j))
                time.sleep(0.002)  # let the other processes in between our writes
            append(store, f"own-{name}", name, 0)
        out.put((name, versions, None))
    except BaseException:  # pragma: no cover - reported by the parent
        out.put((name, [], traceback.format_exc()))


def test_several_processes_appending_to_the_same_user(store_factory):
    n_procs, n_saves = 4, 10
    ctx = mp.get_context("fork")
    all_open, out = ctx.Barrier(n_procs), ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(store_factory.spec, f"w{i}", n_saves, all_open, out))
        for i in range(n_procs)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    failures = [tb for _, _, tb in reports if tb]
    assert not failures, "\n".join(failures)
    results = {name: versions for name, versions, _ in reports}
    total = n_procs * n_saves
    assert sorted(v for vs in results.values() for v in vs) == list(range(1, total + 1))
    with store_factory.open() as store:
        assert_history_consistent(store, "shared", total)
        assert_each_save_landed_once(store, "shared", results)
        assert store.users() == sorted([*(f"own-w{i}" for i in range(n_procs)), "shared"])
