"""Concurrent writers, threads and processes, appending versions for the same user: no duplicate version numbers."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np

from personalens.store import Persona, PersonaStore

DIM = 8


def personas(seed: int) -> list[Persona]:
    rng = np.random.default_rng(seed)
    return [Persona(cluster=c, text=f"p{seed}-{c}", centroid=rng.normal(size=DIM).astype(np.float32)) for c in range(3)]


def append(store: PersonaStore, user: str, creator: str, seed: int) -> int:
    return store.save(
        user,
        personas(seed),
        creator=creator,
        method="summarize",
        config={"seed": seed},
        config_hash=f"h{seed}",
        embedder_id="e",
        parent_version="current",
    ).version


def assert_history_consistent(store: PersonaStore, user: str, expected: int) -> None:
    history = store.versions(user)
    assert [v.version for v in history] == list(range(1, expected + 1))
    assert sum(v.is_current for v in history) == 1 and history[-1].is_current
    assert all(v.n_personas == 3 for v in history)
    assert all(v.parent_version is None or v.parent_version < v.version for v in history)


def run_threads(target, n: int) -> list:
    results: list = []
    errors: list = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            results.extend(target(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_threads_sharing_one_store(tmp_path):
    with PersonaStore(tmp_path / "p.sqlite") as store:
        versions = run_threads(lambda i: [append(store, "u", f"t{i}", 100 * i + j) for j in range(5)], 8)
        assert sorted(versions) == list(range(1, 41))
        assert_history_consistent(store, "u", 40)


def test_threads_with_their_own_connections(tmp_path):
    path = tmp_path / "p.sqlite"

    def work(i: int) -> list[int]:
        with PersonaStore(path) as own:  # also races the creation and migration of the file
            return [append(own, "u", f"t{i}", 100 * i + j) for j in range(5)]

    versions = run_threads(work, 4)
    assert sorted(versions) == list(range(1, 21))
    with PersonaStore(path) as store:
        assert_history_consistent(store, "u", 20)


def _process_worker(path: str, name: str, n: int, both_open, out) -> None:
    with PersonaStore(path) as store:  # both processes race to create and migrate the file
        both_open.wait(30)  # then race to append
        versions = []
        for j in range(n):
            versions.append(append(store, "shared", name, j))
            time.sleep(0.002)  # let the other process in between our writes
        append(store, f"own-{name}", name, 0)
    out.put((name, versions))


def test_two_processes_appending_to_the_same_user(tmp_path):
    path = str(tmp_path / "p.sqlite")  # created and migrated by the workers themselves, concurrently
    ctx = mp.get_context("fork")
    both_open, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(path, f"w{i}", 12, both_open, out)) for i in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    all_versions = sorted(v for vs in results.values() for v in vs)
    assert all_versions == list(range(1, 25))
    with PersonaStore(path) as store:
        assert_history_consistent(store, "shared", 24)
        by_creator = {name: [v.version for v in store.versions("shared") if v.creator == name] for name in results}
        assert by_creator == {name: sorted(vs) for name, vs in results.items()}
        assert store.users() == ["own-w0", "own-w1", "shared"]
