"""Episodic memory in the persona store (PersonaAgent Eq. 1: per user, past queries with their true responses and
metadata, each with an optional embedding), run against every backend (``store_factory``: SQLite and PostgreSQL):
round trip, time order, idempotent and conflicting re-adds, validation, one embedding dimension per user, deletion
(also with the user), concurrent writers, and the schema migration that adds the memory table to existing stores."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import time
import traceback
from dataclasses import replace

import numpy as np
import pytest
from _store_backends import PostgresBackend, open_from_spec
from test_store_concurrency import run_threads
from test_store_migrations import V1_DDL

from personalens.errors import StoreError
from personalens.store import MemoryRecord, Persona, PersonaStore, schema_version
from personalens.store import postgres as store_postgres
from personalens.store import sqlite as store_sqlite

DIM = 6


def emb(seed: int, d: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=d).astype(np.float32)


def rec(i: int, *, ts: float | None = None, embed: bool = True, d: int = DIM, **kw) -> MemoryRecord:
    fields = {
        "memory_id": f"m{i}",
        "query": f"Write a title for abstract {i}.",
        "response": f"Title {i}",
        "timestamp": ts,
        "session": f"s{i % 2}",
        "metadata": {"source": "lamp-5", "rank": i, "tags": ["a", "ü"], "nested": {"x": None}},
        "embedding": emb(i, d) if embed else None,
        "embedder_id": "test-embedder" if embed else "",
    }
    fields.update(kw)
    return MemoryRecord(**fields)


def save_personas(store, user: str, n: int = 2):
    personas = [Persona(cluster=c, text=f"{user} {c}", centroid=np.full(4, c + 1, np.float32)) for c in range(n)]
    return store.save(user, personas, creator="t", method="m", config={}, config_hash="h", embedder_id="e")


def memory_rows(backend) -> list:
    """The raw memory table, to check that a refused write changed nothing."""
    return backend.query("SELECT * FROM memories ORDER BY id")


@pytest.fixture
def store(store_factory):
    with store_factory.open() as s:
        yield s


# ---------------------------------------------------------------- round trip


def test_round_trip_with_embeddings_metadata_and_missing_fields(store):
    records = [
        rec(0, ts=1_700_000_000.25),
        rec(1, ts=1_700_000_100.0, embed=False, session=None, metadata={}),
        rec(2, ts=None, metadata={"deep": {"list": [1, 2.5, "x", True, None]}, "emoji": "🙂"}),
        rec(3, ts=5, query="Ünïcödé query\nwith lines", response="r"),
    ]
    t0 = time.time()
    assert store.add_memories("u1", records) == 4
    t1 = time.time()
    got = store.memories("u1")
    assert [r.memory_id for r in got] == ["m2", "m3", "m0", "m1"]  # no timestamp first, then by time
    assert sorted(got, key=lambda r: r.memory_id) == records  # content equal (created_at is not compared)
    by_id = {r.memory_id: r for r in got}
    m0 = by_id["m0"]
    assert m0.embedding.dtype == np.float32 and m0.embedding.shape == (DIM,) and not m0.embedding.flags.writeable
    np.testing.assert_array_equal(m0.embedding, records[0].embedding)
    assert m0.embedder_id == "test-embedder" and m0.timestamp == 1_700_000_000.25 and m0.session == "s0"
    assert m0.metadata == records[0].metadata
    assert by_id["m1"].embedding is None and by_id["m1"].embedder_id == "" and by_id["m1"].session is None
    assert by_id["m2"].timestamp is None and by_id["m2"].metadata["emoji"] == "🙂"
    assert by_id["m3"].timestamp == 5.0 and isinstance(by_id["m3"].timestamp, float)
    assert all(t0 <= r.created_at <= t1 for r in got)
    assert store.count_memories("u1") == 4
    assert store.memories("nobody") == [] and store.count_memories("nobody") == 0


def test_memories_need_no_persona_and_are_separate_from_personas(store):
    store.add_memories("only-memories", [rec(0, ts=1.0)])
    save_personas(store, "only-personas")
    store.add_memories("both", [rec(1, ts=2.0), rec(2, ts=3.0)])
    save_personas(store, "both")
    assert store.users() == ["both", "only-personas"]  # users() lists persona users only
    assert store.memory_users() == ["both", "only-memories"]
    assert store.current("only-memories") is None and store.versions("only-memories") == []
    assert store.delete_memories("both") == 2
    assert store.current("both").version == 1 and store.memory_users() == ["only-memories"]


def test_memory_users_sort_bytewise_on_every_backend(store):
    users = ["b", "B", "a", "_x", "ä", "10", "9", "a b"]
    for user in users:
        store.add_memories(user, [rec(0)])
    assert store.memory_users() == sorted(users)


def test_equality_ignores_created_at_only():
    a = rec(0, ts=1.0)
    assert a == replace(a, created_at=123.0)
    assert a == replace(a, embedding=a.embedding.copy())
    for change in (
        {"query": "other"},
        {"response": "other"},
        {"timestamp": 2.0},
        {"session": None},
        {"metadata": {}},
        {"embedding": a.embedding + 1},
        {"embedding": None},
        {"embedder_id": "other"},
        {"memory_id": "m9"},
    ):
        assert a != replace(a, **change), change
    assert a != "m0"


# ---------------------------------------------------------------- order, before, limit


def test_time_order_before_limit_and_newest_first(store):
    # insertion order: c1 (no time), t30, t10, c2 (no time), t20a, t20b ; then a later call: c3 (no time), t10b
    store.add_memories(
        "u1",
        [
            rec(1, ts=None, memory_id="c1"),
            rec(2, ts=30.0, memory_id="t30"),
            rec(3, ts=10.0, memory_id="t10"),
            rec(4, ts=None, memory_id="c2"),
            rec(5, ts=20.0, memory_id="t20a"),
            rec(6, ts=20.0, memory_id="t20b"),
        ],
    )
    store.add_memories("u1", [rec(7, ts=None, memory_id="c3"), rec(8, ts=10.0, memory_id="t10b")])

    def ids(**kw) -> list[str]:
        return [r.memory_id for r in store.memories("u1", **kw)]

    order = ["c1", "c2", "c3", "t10", "t10b", "t20a", "t20b", "t30"]
    assert ids() == order
    assert ids(newest_first=True) == order[::-1]
    assert ids(limit=3) == ["c1", "c2", "c3"]
    assert ids(limit=3, newest_first=True) == ["t30", "t20b", "t20a"]  # the latest three, newest first
    assert ids(limit=0) == [] and ids(limit=100) == order
    assert ids(before=20.0) == ["t10", "t10b"]  # strictly before; records without a time are excluded
    assert ids(before=20.5) == ["t10", "t10b", "t20a", "t20b"]
    assert ids(before=20.5, newest_first=True, limit=2) == ["t20b", "t20a"]
    assert ids(before=10.0) == [] and ids(before=float("inf")) == order[3:]
    assert ids(before=np.float64(25.0), limit=np.int64(1)) == ["t10"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"limit": -1}, "limit must be None or a non-negative int"),
        ({"limit": 2.5}, "limit must be"),
        ({"limit": True}, "limit must be"),
        ({"before": "yesterday"}, "before must be a number"),
        ({"before": float("nan")}, "before must not be NaN"),
    ],
)
def test_bad_query_arguments_are_refused(store, kw, message):
    store.add_memories("u1", [rec(0, ts=1.0)])
    with pytest.raises(StoreError, match=message):
        store.memories("u1", **kw)


# ---------------------------------------------------------------- idempotence and conflicts


def test_re_adding_the_same_records_is_a_no_op(store, store_factory):
    batch = [rec(i, ts=float(i)) for i in range(5)] + [rec(5, embed=False)]
    assert store.add_memories("u1", batch) == 6
    before = memory_rows(store_factory)
    assert store.add_memories("u1", batch) == 0
    assert store.add_memories("u1", list(reversed(batch))) == 0
    assert memory_rows(store_factory) == before  # created_at and insertion order untouched
    # equal content written differently: an int timestamp, metadata keys in another order, a copied array
    same = replace(batch[2], timestamp=2, metadata=dict(reversed(list(batch[2].metadata.items()))))
    same = replace(same, embedding=batch[2].embedding.copy(), created_at=999.0)
    assert store.add_memories("u1", [same]) == 0
    # a batch overlapping the stored records inserts only the new ones, in its own order
    assert store.add_memories("u1", [rec(7, ts=7.0), batch[0], rec(6, ts=6.0), batch[3]]) == 2
    assert [r.memory_id for r in store.memories("u1")] == ["m5", "m0", "m1", "m2", "m3", "m4", "m6", "m7"]
    # the same record twice in one call is stored once
    assert store.add_memories("u1", [rec(8, ts=8.0), rec(8, ts=8.0)]) == 1
    assert store.count_memories("u1") == 9
    assert store.add_memories("u1", []) == 0
    # ids are per user: another user may use the same ids with other content
    assert store.add_memories("u2", [rec(0, ts=0.0, query="something else")]) == 1


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"query": "a different query"}, "query"),
        ({"response": "a different response"}, "response"),
        ({"timestamp": 99.0}, "timestamp"),
        ({"timestamp": None}, "timestamp"),
        ({"session": "other"}, "session"),
        ({"session": None}, "session"),
        ({"metadata": {"source": "lamp-5"}}, "metadata"),
        ({"embedding": emb(100)}, "embedding"),
        ({"embedding": None, "embedder_id": ""}, "embedder_id, embedding"),
        ({"embedder_id": "another-embedder"}, "embedder_id"),
        ({"query": "q2", "response": "r2"}, "query, response"),
    ],
)
def test_same_id_with_different_content_is_refused_and_nothing_is_written(store, store_factory, change, fields):
    store.add_memories("u1", [rec(0, ts=1.0), rec(1, ts=2.0)])
    before = memory_rows(store_factory)
    conflicting = replace(rec(1, ts=2.0), **change)
    with pytest.raises(StoreError) as info:
        store.add_memories("u1", [rec(2, ts=3.0), conflicting, rec(3, ts=4.0)])
    assert str(info.value) == (
        f"memory record 1 (id 'm1'): user 'u1' already has a memory with this id and different content ({fields}); "
        "nothing was written"
    )
    assert memory_rows(store_factory) == before
    assert [r.memory_id for r in store.memories("u1")] == ["m0", "m1"]


def test_same_id_twice_in_one_call_with_different_content_is_refused(store, store_factory):
    with pytest.raises(StoreError, match=r"^memory record 2 \(id 'm0'\): the same id is memory record 0 of this call, "
                       r"with different content \(response\)"):  # fmt: skip
        store.add_memories("u1", [rec(0), rec(1), rec(0, response="other")])
    assert store.count_memories("u1") == 0 and memory_rows(store_factory) == []


# ---------------------------------------------------------------- validation


BAD_RECORDS = {
    "nan embedding": (rec(2, embedding=np.array([np.nan] * DIM, np.float32)), r"embedding contains NaN"),
    "inf embedding": (rec(2, embedding=np.full(DIM, np.inf, np.float32)), r"embedding contains NaN or infinite"),
    "float64 embedding": (rec(2, embedding=np.ones(DIM)), r"embedding must have dtype float32"),
    "2-d embedding": (rec(2, embedding=np.ones((1, DIM), np.float32)), r"embedding must have shape \(d,\)"),
    "empty embedding": (rec(2, embedding=np.ones(0, np.float32)), r"embedding must have shape \(d,\)"),
    "list embedding": (rec(2, embedding=[0.1] * DIM), r"embedding must be a numpy float32 array"),
    "no embedder": (rec(2, embedder_id=""), r"embedder_id \(required with an embedding\) must be a non-empty"),
    "embedder without embedding": (rec(2, embed=False, embedder_id="e"), r"embedder_id must be empty"),
    "empty query": (rec(2, query=""), r"query must be a non-empty string"),
    "blank response": (rec(2, response="  \n"), r"response must be a non-empty string"),
    "non-str response": (rec(2, response=5), r"response must be a non-empty string"),
    "nan timestamp": (rec(2, ts=float("nan")), r"timestamp must be finite"),
    "huge timestamp": (rec(2, ts=10**400), r"timestamp must be finite"),
    "str timestamp": (rec(2, ts="2024-01-01"), r"timestamp must be a number of seconds"),
    "bool timestamp": (rec(2, ts=True), r"timestamp must be a number of seconds"),
    "int session": (rec(2, session=3), r"session must be a string or None"),
    "set metadata": (rec(2, metadata={"tags": {"a"}}), r"metadata is not JSON-serialisable"),
    "nan metadata": (rec(2, metadata={"x": float("nan")}), r"metadata is not JSON-serialisable"),
    "list metadata": (rec(2, metadata=[1, 2]), r"metadata must be a dict"),
    "nul query": (rec(2, query="a\x00b"), r"query contains a NUL character"),
    "nul session": (rec(2, session="a\x00b"), r"session contains a NUL character"),
    "mixed dimensions": (rec(2, d=DIM + 1), r"embedding has dimension 7, but memory record 0 in the same call has"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_are_refused_naming_index_id_and_field(store, store_factory, case):
    store.add_memories("other", [rec(9)])
    before = memory_rows(store_factory)
    bad, message = BAD_RECORDS[case]
    records = [rec(0), rec(1, embed=False), bad, rec(3)]
    for user in ("u1", "other"):
        with pytest.raises(StoreError, match=r"^memory record 2 \(id 'm2'\): " + message):
            store.add_memories(user, records)
    assert memory_rows(store_factory) == before
    assert store.memory_users() == ["other"]


@pytest.mark.parametrize(
    ("user", "records", "message"),
    [
        ("", [rec(0)], r"^user_id must be a non-empty string"),
        (None, [rec(0)], r"^user_id must be a non-empty string"),
        ("a\x00b", [rec(0)], r"^user_id contains a NUL character"),
        ("u1", rec(0), r"^records must be a sequence of MemoryRecord, got MemoryRecord"),
        ("u1", "m0", r"^records must be a sequence of MemoryRecord, got str"),
        ("u1", [rec(0), {"memory_id": "m1"}], r"^memory record 1 is a dict, not a MemoryRecord"),
        ("u1", [rec(0), rec(1, memory_id="")], r"^memory record 1: memory_id must be a non-empty string, got ''"),
        ("u1", [rec(0, memory_id=7)], r"^memory record 0: memory_id must be a non-empty string, got 7"),
        ("u1", [rec(0, memory_id="a\x00")], r"^memory record 0 \(id 'a\\x00'\): memory_id contains a NUL"),
    ],
)
def test_bad_arguments_are_refused_before_writing(store, store_factory, user, records, message):
    with pytest.raises(StoreError, match=message):
        store.add_memories(user, records)
    assert memory_rows(store_factory) == []


def test_one_embedding_dimension_per_user(store, store_factory):
    store.add_memories("u1", [rec(0), rec(1, embed=False)])
    before = memory_rows(store_factory)
    with pytest.raises(
        StoreError,
        match=r"^memory record 1 \(id 'm3'\): embedding has dimension 8, but the stored memory embeddings of user "
        r"'u1' have dimension 6; nothing was written$",
    ):
        store.add_memories("u1", [rec(2, embed=False), rec(3, d=8)])
    assert memory_rows(store_factory) == before
    assert store.add_memories("u1", [rec(4, embed=False)]) == 1  # records without an embedding always fit
    assert store.add_memories("u2", [rec(0, d=8)]) == 1  # the dimension is per user
    assert store.delete_memories("u1", ["m0"]) == 1  # once no embedding is left, another dimension may start
    assert store.add_memories("u1", [rec(3, d=8)]) == 1
    assert store.memories("u1")[-1].embedding.shape == (8,)


def test_all_zero_embeddings_are_kept(store):
    # unlike persona centroids: an embedder may give zeros for a degenerate text; the record is still a memory
    assert store.add_memories("u1", [rec(0, embedding=np.zeros(DIM, np.float32))]) == 1
    assert not store.memories("u1")[0].embedding.any()


# ---------------------------------------------------------------- deletion


def test_delete_memories_by_id_or_all(store):
    store.add_memories("u1", [rec(i, ts=float(i)) for i in range(6)])
    store.add_memories("u2", [rec(i, ts=float(i)) for i in range(3)])
    assert store.delete_memories("u1", ["m1", "m3", "m3", "missing"]) == 2
    assert [r.memory_id for r in store.memories("u1")] == ["m0", "m2", "m4", "m5"]
    assert store.delete_memories("u1", []) == 0 and store.delete_memories("u1", ("m1",)) == 0
    assert store.delete_memories("u1", iter(["m0"])) == 1
    assert store.count_memories("u2") == 3  # the same ids of another user are untouched
    assert store.delete_memories("u1") == 3
    assert store.memories("u1") == [] and store.memory_users() == ["u2"]
    assert store.delete_memories("u1") == 0 and store.delete_memories("nobody", ["m0"]) == 0
    assert store.delete_memories("u2", ["m\x00"]) == 0  # an id that cannot exist
    assert store.add_memories("u1", [rec(1, ts=1.0, response="new content")]) == 1  # a deleted id may be reused


@pytest.mark.parametrize(("ids", "message"), [("m1", "memory_ids must be a sequence"), ([1], r"memory_ids\[0\]")])
def test_delete_memories_refuses_bad_ids(store, ids, message):
    store.add_memories("u1", [rec(1)])
    with pytest.raises(StoreError, match=message):
        store.delete_memories("u1", ids)
    assert store.count_memories("u1") == 1


def test_delete_user_removes_memories_and_counts_them(store, store_factory):
    save_personas(store, "u1", 3)
    save_personas(store, "u1", 2)
    store.start_run("r", "h", {})
    store.mark_build("r", "u1", "done")
    store.add_memories("u1", [rec(i) for i in range(4)])
    store.add_memories("memories-only", [rec(i) for i in range(5)])
    store.add_memories("u2", [rec(0)])
    save_personas(store, "u2")
    u2_memories = store.memories("u2")

    assert store.delete_user("u1") == (3 + 2) + 2 + 1 + 1 + 4  # personas + sets + build_status + user + memories
    assert store.memories("u1") == [] and store.current("u1") is None
    assert store_factory.query("SELECT COUNT(*) FROM memories WHERE user_id = ?", ("u1",)) == [(0,)]
    assert store.delete_user("memories-only") == 5  # a user with memories but no personas
    assert store.memory_users() == ["u2"] and store.memories("u2") == u2_memories
    assert store.current("u2").version == 1
    assert store.delete_user("u1") == 0 and store.delete_user("memories-only") == 0


def test_large_batches(store):
    batch = [rec(i, ts=float(i % 17), embed=i % 3 == 0) for i in range(1200)]  # more ids than one IN (...) list
    assert store.add_memories("u1", batch) == 1200
    assert store.add_memories("u1", batch) == 0
    got = store.memories("u1")
    assert len(got) == 1200 and [r.timestamp for r in got] == sorted(r.timestamp for r in batch)
    assert store.delete_memories("u1", [f"m{i}" for i in range(0, 1200, 2)] * 2) == 600
    assert store.count_memories("u1") == 600


# ---------------------------------------------------------------- failures and concurrency


def _inject_memory_failure(backend, memory_id: str) -> None:
    if backend.name == "sqlite":
        backend.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON memories WHEN NEW.memory_id = '{memory_id}' "
            "BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )
    else:
        backend.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$"
        )
        backend.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON memories FOR EACH ROW WHEN (NEW.memory_id = '{memory_id}') "
            "EXECUTE FUNCTION boom()"
        )


def test_a_failure_inside_the_transaction_writes_nothing(store, store_factory):
    store.add_memories("u1", [rec(0)])
    before = memory_rows(store_factory)
    _inject_memory_failure(store_factory, "m3")  # the 4th row: three rows of the batch were already inserted
    with pytest.raises(StoreError, match="injected"):
        store.add_memories("u1", [rec(i) for i in range(1, 6)])
    assert memory_rows(store_factory) == before
    assert not store_factory.in_transaction(store)
    assert store.add_memories("u1", [rec(1), rec(2)]) == 2  # still usable


def test_threads_adding_the_same_batch_store_it_once(store_factory):
    batch = [rec(i, ts=float(i)) for i in range(30)]
    with store_factory.open() as shared:
        inserted = run_threads(lambda i: shared.add_memories("u", batch), 6)
        assert sum(inserted) == 30
        assert shared.memories("u") == batch

    def own(i: int) -> int:
        with store_factory.open() as s:  # each its own connection
            return s.add_memories("v", batch[i % 3 :: 2]) + s.add_memories("v", batch)

    inserted = run_threads(own, 6)
    assert sum(inserted) == 30
    with store_factory.open() as s:
        assert sorted(s.memories("v"), key=lambda r: r.timestamp) == batch and s.count_memories("v") == 30


def _add_worker(spec, name: str, all_open, out) -> None:
    try:
        batch = [rec(i, ts=float(i)) for i in range(40)]
        with open_from_spec(spec) as store:
            all_open.wait(60)
            inserted = 0
            for start in range(0, 40, 10):  # overlapping chunks, so the writers interleave record by record
                inserted += store.add_memories("shared", batch[start : start + 15])
            inserted += store.add_memories("shared", batch)
            store.add_memories(f"own-{name}", batch[:3])
        out.put((name, inserted, None))
    except BaseException:  # pragma: no cover - reported by the parent
        out.put((name, 0, traceback.format_exc()))


def test_several_processes_adding_the_same_batch_store_each_record_once(store_factory):
    n_procs = 4
    with store_factory.open():  # create the store up front (the migration race is covered elsewhere)
        pass
    ctx = mp.get_context("fork")
    all_open, out = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_add_worker, args=(store_factory.spec, f"w{i}", all_open, out)) for i in range(n_procs)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    failures = [tb for _, _, tb in reports if tb]
    assert not failures, "\n".join(failures)
    assert sum(n for _, n, _ in reports) == 40
    with store_factory.open() as store:
        assert store.memories("shared") == [rec(i, ts=float(i)) for i in range(40)]
        assert store_factory.query("SELECT COUNT(*) FROM memories WHERE user_id = 'shared'") == [(40,)]
        assert store.memory_users() == sorted(["shared", *(f"own-w{i}" for i in range(n_procs))])


# ---------------------------------------------------------------- migrations

# The version-2 schema exactly as it shipped (v1 plus the v2 step), written out on purpose: this test must keep
# describing version-2 files even after the code's migrations change.
V2_DDL = [
    *(stmt for stmt in V1_DDL if not stmt.startswith("PRAGMA user_version")),
    "ALTER TABLE persona_sets ADD COLUMN note TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX persona_sets_by_config ON persona_sets (user_id, config_hash, version)",
    """CREATE TABLE build_runs (
        run_id TEXT PRIMARY KEY,
        config_hash TEXT NOT NULL,
        config TEXT NOT NULL,
        started_at REAL NOT NULL)""",
    """CREATE TABLE build_status (
        run_id TEXT NOT NULL REFERENCES build_runs (run_id) ON DELETE CASCADE,
        user_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
        error TEXT,
        usage TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (run_id, user_id))""",
    "CREATE INDEX build_status_by_user ON build_status (user_id)",
    "PRAGMA user_version = 2",
]


def write_v2_file(path) -> dict[str, np.ndarray]:
    """Two users (alice with two versions), a build run, written with plain SQL in the v2 layout."""
    db = sqlite3.connect(path)
    for stmt in V2_DDL:
        db.execute(stmt)
    cents = {}
    for set_id, (user, version) in enumerate([("alice", 1), ("alice", 2), ("bob", 1)], start=1):
        if version == 1:
            db.execute("INSERT INTO users VALUES (?, ?, ?)", (user, version, 1.0))
        else:
            db.execute("UPDATE users SET current_version = ? WHERE user_id = ?", (version, user))
        db.execute(
            "INSERT INTO persona_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (set_id, user, version, version - 1 or None, "build", "summarize", f"h{version}",
             json.dumps({"v": version}), "old-embedder", 4, 100.0 + version, f"note {version}"),
        )  # fmt: skip
        cents[(user, version)] = c = emb(set_id, 4)
        db.execute(
            "INSERT INTO personas VALUES (?, 0, 0, ?, ?, NULL, '[]', 1, 1, '{}')",
            (set_id, f"{user} v{version}", c.astype("<f4").tobytes()),
        )
    db.execute("INSERT INTO build_runs VALUES ('run', 'h1', '{}', 5.0)")
    db.execute("INSERT INTO build_status VALUES ('run', 'alice', 'done', NULL, NULL, 1, 6.0)")
    db.commit()
    db.close()
    return cents


def test_a_v2_sqlite_file_gains_the_memory_table_and_keeps_its_data(tmp_path):
    path = tmp_path / "v2.sqlite"
    cents = write_v2_file(path)
    assert schema_version() == len(store_sqlite.MIGRATIONS) == 3
    with PersonaStore(path) as store:
        assert store.schema_version == 3
        assert store.users() == ["alice", "bob"] and store.current("alice").version == 2
        for (user, version), c in cents.items():
            got = store.get(user, version)
            assert got.note == f"note {version}" and got.config == {"v": version}
            np.testing.assert_array_equal(got.personas[0].centroid, c)
        assert store.build_status("run") == {"alice": "done"}
        assert store.memory_users() == [] and store.memories("alice") == []
        assert store.add_memories("alice", [rec(0, ts=1.0), rec(1)]) == 2
        assert store.add_memories("carol", [rec(0)]) == 1  # a new memory-only user
    with PersonaStore(path) as store:  # reopening changes nothing
        assert store.schema_version == 3 and store.count_memories("alice") == 2
        assert store.delete_user("alice") == (1 + 1) + 2 + 1 + 1 + 2
        assert store.users() == ["bob"] and store.memory_users() == ["carol"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


def test_a_v1_postgres_schema_gains_the_memory_table_and_keeps_its_data(postgres_server, monkeypatch):
    pg = PostgresBackend(postgres_server)
    try:
        monkeypatch.setattr(store_postgres, "MIGRATIONS", store_postgres.MIGRATIONS[:1])  # what the v1 code wrote
        with pg.open() as store:
            assert store.schema_version == 1
            first = save_personas(store, "u1", 3)
            store.start_run("r", "h", {})
            store.mark_build("r", "u1", "done")
        assert "memories" not in [r[0] for r in pg.query("SELECT tablename FROM pg_tables WHERE schemaname = ?",
                                                         (pg.schema,))]  # fmt: skip
        monkeypatch.undo()
        with pg.open() as store:
            assert store.schema_version == store_postgres.schema_version() == 2
            assert store.current("u1") == first and store.build_status("r") == {"u1": "done"}
            assert store.add_memories("u1", [rec(0, ts=1.0), rec(1)]) == 2
            assert [r.memory_id for r in store.memories("u1")] == ["m1", "m0"]
            assert store.delete_user("u1") == 3 + 1 + 1 + 1 + 2
        assert pg.query("SELECT version, name FROM schema_migrations ORDER BY version") == [
            (1, "migrate_v1"),
            (2, "migrate_v2"),
        ]
    finally:
        pg.cleanup()
