"""The persona-store contract, run against every backend (``store_factory``: SQLite and PostgreSQL): versions,
current pointer, find-by-config, diff, rollback, delete, validation, atomic writes, builds. SQLite-only checks (the
file's pragmas) are marked as such."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from personalens.errors import PersonaLensError, StoreError
from personalens.store import (
    Persona,
    PersonaSet,
    PersonaStore,
    PersonaStoreProtocol,
    canonical_json,
    config_hash,
)
from personalens.store import postgres as store_postgres
from personalens.store import sqlite as store_sqlite

DIM = 12
CONFIG = {"method": "summarize", "selection": {"tau": 0.6, "alpha": 1.06}, "llm": "qwen"}


def vec(rng: np.random.Generator, d: int = DIM) -> np.ndarray:
    return (rng.normal(size=d) * 0.3).astype(np.float32)


def make_personas(n: int = 3, *, seed: int = 0, d: int = DIM, embed: bool = False, prefix: str = "Likes") -> list:
    rng = np.random.default_rng(seed)
    return [
        Persona(
            cluster=c,
            text=f"{prefix} cluster {c}.\nEnjoys slow films.\n",
            centroid=vec(rng, d),
            selected_item_ids=(f"i{c}a", f"i{c}b"),
            cluster_size=5 + c,
            budget=2,
            embedding=vec(rng, d) if embed else None,
            meta={"usage": {"tokens": 10 * c}, "leaked_titles": []},
        )
        for c in range(n)
    ]


def save(store: PersonaStoreProtocol, user: str, personas=None, *, config=CONFIG, **kw) -> PersonaSet:
    kw.setdefault("creator", "personax-build")
    kw.setdefault("method", "summarize")
    kw.setdefault("embedder_id", "test-embedder")
    return store.save(
        user, make_personas() if personas is None else personas, config=config, config_hash=config_hash(config), **kw
    )


@pytest.fixture
def store(store_factory):
    with store_factory.open() as s:
        yield s


def test_store_satisfies_protocol(store, store_factory):
    assert isinstance(store, PersonaStoreProtocol)
    module = store_sqlite if store_factory.name == "sqlite" else store_postgres
    assert store.schema_version == module.schema_version() >= 1


def test_sqlite_pragmas(tmp_path):
    with PersonaStore(tmp_path / "personas.sqlite") as store:
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
        assert store._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_save_round_trips_everything(store):
    personas = make_personas(4, embed=True)
    saved = save(store, "u1", personas, note="first")
    assert (saved.version, saved.parent_version, saved.note) == (1, None, "first")
    got = store.current("u1")
    assert got == saved == store.get("u1", 1)
    assert got.personas == tuple(personas)
    assert got.config == CONFIG and got.embedder_id == "test-embedder" and got.dim == DIM
    p = got.personas[2]
    assert p.centroid.dtype == np.float32 and p.centroid.shape == (DIM,)
    assert not p.centroid.flags.writeable
    assert p.selected_item_ids == ("i2a", "i2b") and p.meta == {"usage": {"tokens": 20}, "leaked_titles": []}
    assert got.persona(3).cluster_size == 8
    assert store.get("u1", 2) is None and store.current("nobody") is None


def test_every_version_is_kept_and_current_is_latest(store):
    for i in range(3):
        save(store, "u1", make_personas(2 + i, seed=i), parent_version="current")
    assert store.current("u1").version == 3
    history = store.versions("u1")
    assert [v.version for v in history] == [1, 2, 3]
    assert [v.parent_version for v in history] == [None, 1, 2]
    assert [v.n_personas for v in history] == [2, 3, 4]
    assert [v.is_current for v in history] == [False, False, True]
    assert history[0].creator == "personax-build" and history[0].config_hash == config_hash(CONFIG)
    assert store.get("u1", 1).personas == tuple(make_personas(2, seed=0))
    assert store.versions("nobody") == []


def test_explicit_parent_and_make_current(store):
    save(store, "u1")
    save(store, "u1", creator="deeper-refine", parent_version=1, make_current=False)
    assert store.current("u1").version == 1
    assert [v.is_current for v in store.versions("u1")] == [True, False]
    store.set_current("u1", 2)
    assert store.current("u1").version == 2
    with pytest.raises(StoreError, match="no version 7"):
        store.set_current("u1", 7)
    with pytest.raises(StoreError, match="no version 5"):
        save(store, "u1", parent_version=5)
    with pytest.raises(StoreError, match="parent_version"):
        save(store, "u1", parent_version="latest")
    assert len(store.versions("u1")) == 2


def test_users_and_count(store):
    for user in ["c", "a", "b"]:
        save(store, user)
    assert store.users() == ["a", "b", "c"]
    assert store.users(limit=2) == ["a", "b"] and store.users(limit=2, offset=2) == ["c"]
    assert store.count_users() == 3


def test_find_returns_newest_version_with_exactly_that_config(store):
    other = {**CONFIG, "selection": {"tau": 0.7, "alpha": 1.06}}
    save(store, "u1")
    save(store, "u1", config=other)
    save(store, "u1")
    assert store.find("u1", config_hash(CONFIG)).version == 3
    assert store.find("u1", config_hash(other)).version == 2
    changed = {**CONFIG, "llm": "qwen-1.5b"}
    assert store.find("u1", config_hash(changed)) is None  # any config change misses
    assert store.find("u2", config_hash(CONFIG)) is None


def test_config_is_canonical_json_and_hash_is_order_independent(store, store_factory):
    a = {"b": 1, "a": {"y": 2, "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": 2}, "b": 1}
    assert config_hash(a) == config_hash(b) and canonical_json(a) == canonical_json(b)
    save(store, "u1", config=a)
    raw = store_factory.query("SELECT config FROM persona_sets")[0][0]
    assert raw == '{"a":{"x":[1,2],"y":2},"b":1}'


def test_diff_reports_added_removed_changed_and_config(store):
    old = make_personas(3)
    new = list(make_personas(3))
    new[1] = Persona(
        cluster=1,
        text="Likes cluster 1.\nEnjoys fast films.\n",
        centroid=old[1].centroid,
        selected_item_ids=old[1].selected_item_ids,
        cluster_size=old[1].cluster_size,
        budget=old[1].budget,
        meta=old[1].meta,
    )
    new[2] = Persona(cluster=2, text=old[2].text, centroid=old[2].centroid * 2, meta=old[2].meta, budget=2)
    del new[0]
    new.append(Persona(cluster=7, text="New taste.", centroid=old[0].centroid))
    save(store, "u1", old)
    save(store, "u1", new, config={**CONFIG, "selection": {"tau": 0.5, "alpha": 1.06}, "extra": True})
    d = store.diff("u1", 1, 2)
    assert (d.from_version, d.to_version) == (1, 2)
    assert d.added == (7,) and d.removed == (0,) and d.unchanged == ()
    by_cluster = {c.cluster: c for c in d.changed}
    assert by_cluster[1].fields == ("text",)
    assert "-Enjoys slow films." in by_cluster[1].text_diff and "+Enjoys fast films." in by_cluster[1].text_diff
    assert by_cluster[1].text_diff.startswith("--- v1/cluster-1\n+++ v2/cluster-1\n")
    assert set(by_cluster[2].fields) == {"centroid", "selected_item_ids", "cluster_size"}
    assert by_cluster[2].text_diff == "" and by_cluster[2].centroid_cosine == pytest.approx(1.0, abs=1e-6)
    assert {(c.key, c.kind, c.old, c.new) for c in d.config} == {
        ("selection.tau", "changed", 0.6, 0.5),
        ("extra", "added", None, True),
    }
    assert d.metadata["config_hash"] == (config_hash(CONFIG), d.metadata["config_hash"][1])
    json.dumps(d.to_dict())  # serialisable for the CLI
    same = store.diff("u1", 1, 1)
    assert same.is_empty and same.unchanged == (0, 1, 2)
    with pytest.raises(StoreError, match="no version 9"):
        store.diff("u1", 1, 9)


def test_rollback_appends_a_copy_and_keeps_history(store):
    first = save(store, "u1", make_personas(3, seed=1))
    save(store, "u1", make_personas(5, seed=2), config={**CONFIG, "llm": "other"})
    rolled = store.rollback("u1", 1)
    assert (rolled.version, rolled.parent_version, rolled.creator) == (3, 1, "rollback")
    assert rolled.note == "rollback to v1"
    assert rolled.personas == first.personas
    assert (rolled.config, rolled.config_hash, rolled.method) == (first.config, first.config_hash, first.method)
    assert store.current("u1") == rolled
    assert [v.version for v in store.versions("u1")] == [1, 2, 3]
    assert store.get("u1", 2).config["llm"] == "other"  # history not rewritten
    assert store.find("u1", config_hash(CONFIG)).version == 3
    assert store.diff("u1", 1, 3).is_empty
    with pytest.raises(StoreError, match="no version 8"):
        store.rollback("u1", 8)
    with pytest.raises(StoreError):
        store.rollback("nobody", 1)


@pytest.mark.parametrize("version", [2**31, 2**63, 10**30, -(2**63) - 1])
def test_versions_beyond_the_integer_column_do_not_exist(store, version):
    # found by tests/unit/test_fuzz_service.py: SQLite raised OverflowError for 2**63 (a 500 in the service)
    save(store, "u1", make_personas(2, seed=1))
    assert store.get("u1", version) is None
    with pytest.raises(StoreError, match=f"no version {version}"):
        store.diff("u1", 1, version)
    with pytest.raises(StoreError, match=f"no version {version}"):
        store.rollback("u1", version)
    with pytest.raises(StoreError, match=f"no version {version}"):
        store.set_current("u1", version)
    assert [v.version for v in store.versions("u1")] == [1]


def _rows_mentioning(backend, user_id: str) -> int:
    n = backend.query("SELECT COUNT(*) FROM users WHERE user_id = ?", (user_id,))[0][0]
    n += backend.query("SELECT COUNT(*) FROM persona_sets WHERE user_id = ?", (user_id,))[0][0]
    n += backend.query("SELECT COUNT(*) FROM build_status WHERE user_id = ?", (user_id,))[0][0]
    orphans = backend.query("SELECT COUNT(*) FROM personas WHERE set_id NOT IN (SELECT id FROM persona_sets)")[0][0]
    return n + orphans


def test_delete_user_removes_everything_of_that_user_only(store, store_factory):
    save(store, "u1", make_personas(3))
    save(store, "u1", make_personas(2))
    store.rollback("u1", 1)
    save(store, "u2", make_personas(4))
    store.start_run("r1", "h", {})
    store.mark_build("r1", "u1", "done")
    store.mark_build("r1", "u2", "done")
    u2_before = store.current("u2")

    removed = store.delete_user("u1")
    assert removed == (3 + 2 + 3) + 3 + 1 + 1  # personas + sets + build_status + user
    assert store.current("u1") is None and store.versions("u1") == [] and store.find("u1", config_hash(CONFIG)) is None
    assert store.users() == ["u2"] and store.build_status("r1") == {"u2": "done"}
    assert _rows_mentioning(store_factory, "u1") == 0
    assert store.current("u2") == u2_before
    assert store.delete_user("u1") == 0
    assert save(store, "u1").version == 1  # a deleted user starts afresh


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "   "}, "user_id"),
        ({"user_id": None}, "user_id"),
        ({"creator": ""}, "creator"),
        ({"embedder_id": ""}, "embedder_id"),
        ({"config": {"tags": {"a", "b"}}}, "config is not JSON"),
        ({"config": {"tau": float("nan")}}, "config is not JSON"),
        ({"config": ["not", "a", "dict"]}, "config must be a dict"),
        ({"personas": []}, "at least one persona"),
        ({"personas": "centroid64"}, "dtype float32"),
        ({"personas": "centroid2d"}, r"shape \(d,\)"),
        ({"personas": "mixed_dims"}, "dimension"),
        ({"personas": "embedding_dim"}, "embedding has dimension"),
        ({"personas": "nan"}, "NaN"),
        ({"personas": "zeros"}, "all zeros"),
        ({"personas": "list_centroid"}, "numpy float32 array"),
        ({"personas": "duplicate_cluster"}, "appears twice"),
        ({"personas": "bad_meta"}, "meta is not JSON"),
        ({"personas": "not_persona"}, "not a Persona"),
        ({"personas": "negative_budget"}, "budget"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(store, store_factory, change, message):
    save(store, "existing")
    good = make_personas(3)
    bad_personas = {
        "centroid64": [*good[:2], Persona(cluster=9, text="x", centroid=np.ones(DIM))],
        "centroid2d": [Persona(cluster=0, text="x", centroid=np.ones((1, DIM), np.float32))],
        "mixed_dims": [good[0], Persona(cluster=9, text="x", centroid=np.ones(DIM + 1, np.float32))],
        "embedding_dim": [
            Persona(cluster=0, text="x", centroid=good[0].centroid, embedding=np.ones(DIM - 1, np.float32))
        ],
        "nan": [Persona(cluster=0, text="x", centroid=np.full(DIM, np.nan, np.float32))],
        "zeros": [Persona(cluster=0, text="x", centroid=np.zeros(DIM, np.float32))],
        "list_centroid": [Persona(cluster=0, text="x", centroid=[0.1] * DIM)],
        "duplicate_cluster": [good[0], good[1], good[0]],
        "bad_meta": [Persona(cluster=0, text="x", centroid=good[0].centroid, meta={"v": np.float32(1)})],
        "not_persona": [good[0], {"cluster": 1}],
        "negative_budget": [Persona(cluster=0, text="x", centroid=good[0].centroid, budget=-1)],
    }
    args = {
        "user_id": "u1",
        "personas": good,
        "creator": "personax-build",
        "method": "summarize",
        "config": CONFIG,
        "config_hash": "h",
        "embedder_id": "e",
    }
    args.update(change)
    if isinstance(args["personas"], str):
        args["personas"] = bad_personas[args["personas"]]
    for user in (args["user_id"], "existing"):
        with pytest.raises(StoreError, match=message) as info:
            store.save(user, **{k: v for k, v in args.items() if k != "user_id"})
        assert isinstance(info.value, PersonaLensError)
        if not (isinstance(user, str) and user.strip()):
            break
    assert store.users() == ["existing"]
    assert [v.version for v in store.versions("existing")] == [1]
    assert store_factory.query("SELECT COUNT(*) FROM persona_sets")[0][0] == 1
    assert store_factory.query("SELECT COUNT(*) FROM personas")[0][0] == 3


def _snapshot(backend) -> list:
    return [backend.query(f"SELECT * FROM {table} ORDER BY 1, 2") for table in ("users", "persona_sets", "personas")]


def test_failure_inside_the_transaction_leaves_the_store_unchanged(store, store_factory):
    save(store, "existing", make_personas(2))
    before = _snapshot(store_factory)
    # A database-level failure on the 4th persona row: the user and set rows and 3 personas were already inserted.
    store_factory.inject_failure(cluster=3)
    for user in ("new-user", "existing"):
        with pytest.raises(StoreError, match="injected"):
            save(store, user, make_personas(5))
        assert _snapshot(store_factory) == before
        assert not store_factory.in_transaction(store)
    store_factory.remove_failure()
    assert save(store, "existing").version == 2  # the store is still usable and numbering is intact
    assert save(store, "new-user").version == 1


def test_python_failure_at_the_last_step_rolls_back(store, store_factory, monkeypatch):
    save(store, "u1")
    before = _snapshot(store_factory)

    def fail(*args, **kwargs):
        raise RuntimeError("crash while moving the current pointer")

    monkeypatch.setattr(type(store), "_set_current", staticmethod(fail))
    with pytest.raises(RuntimeError, match="crash"):
        save(store, "u1")
    with pytest.raises(RuntimeError, match="crash"):
        store.rollback("u1", 1)
    assert _snapshot(store_factory) == before
    assert not store_factory.in_transaction(store)
    monkeypatch.undo()
    assert save(store, "u1").version == 2


def test_build_bookkeeping(store, store_factory):
    cfg = {"method": "summarize"}
    info = store.start_run("run-1", config_hash(cfg), cfg)
    assert info.config == cfg and info.counts == {"pending": 0, "done": 0, "failed": 0}
    for user in ["a", "b", "c"]:
        store.mark_build("run-1", user, "pending")
    store.mark_build("run-1", "a", "done", usage={"prompt_tokens": 120, "calls": 2})
    store.mark_build("run-1", "b", "failed", error="LLMOutputError: did not parse")
    assert store.build_status("run-1") == {"a": "done", "b": "failed", "c": "pending"}
    store.mark_build("run-1", "b", "done")
    assert store.run_info("run-1").counts == {"pending": 1, "done": 2, "failed": 0}
    row = store_factory.query("SELECT attempts, error, usage FROM build_status WHERE user_id = 'a'")[0]
    assert row == (1, None, '{"calls":2,"prompt_tokens":120}')
    assert store_factory.query("SELECT attempts FROM build_status WHERE user_id = 'b'")[0][0] == 2
    # resuming with the same config is fine, with another is not
    assert store.start_run("run-1", config_hash(cfg), cfg).counts["done"] == 2
    with pytest.raises(StoreError, match="cannot resume"):
        store.start_run("run-1", "other-hash", {"method": "reflect"})
    with pytest.raises(StoreError, match="unknown build run"):
        store.mark_build("run-2", "a", "done")
    with pytest.raises(StoreError, match="unknown build run"):
        store.build_status("run-2")
    with pytest.raises(StoreError, match="build status"):
        store.mark_build("run-1", "a", "finished")
    with pytest.raises(StoreError, match="usage is not JSON"):
        store.mark_build("run-1", "a", "done", usage={"t": object()})
    assert store.run_info("run-2") is None


def test_iter_current_pages_through_all_users(store):
    for i in range(7):
        save(store, f"u{i}", make_personas(1 + i % 3, seed=i))
    save(store, "u3", make_personas(4, seed=99))
    sets = list(store.iter_current(batch_size=3))
    assert [s.user_id for s in sets] == [f"u{i}" for i in range(7)]
    assert all(s == store.current(s.user_id) for s in sets)
    assert sets[3].version == 2


def test_user_ids_sort_by_code_point_on_every_backend(store):
    # PostgreSQL's default collation would sort these by locale rules; the store keeps SQLite's bytewise order.
    users = ["b", "B", "a", "_x", "Zeta", "ä", "é", "10", "9", "a b", "ab"]
    for user in users:
        save(store, user, make_personas(1))
    assert store.users() == sorted(users)
    assert [s.user_id for s in store.iter_current(batch_size=4)] == sorted(users)
    assert store.users(limit=3, offset=2) == sorted(users)[2:5]


def test_close_and_context_manager(store_factory):
    with store_factory.open() as s:
        save(s, "u1")
    with pytest.raises(StoreError, match="closed"):
        s.current("u1")
    s.close()  # idempotent
    with store_factory.open() as again:
        assert again.current("u1").version == 1
