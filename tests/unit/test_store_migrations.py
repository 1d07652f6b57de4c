"""Schema versioning: old files are upgraded on open without losing data; newer or foreign files are refused."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from personalens.errors import StoreError
from personalens.store import APPLICATION_ID, Persona, PersonaStore, schema_version
from personalens.store import sqlite as store_sqlite

# The version-1 schema exactly as it shipped, written out here on purpose (not imported): this test must keep
# describing the old files even after the code's migrations change.
V1_DDL = [
    f"PRAGMA application_id = {APPLICATION_ID}",
    """CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        current_version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        FOREIGN KEY (user_id, current_version) REFERENCES persona_sets (user_id, version)
            DEFERRABLE INITIALLY DEFERRED)""",
    """CREATE TABLE persona_sets (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        version INTEGER NOT NULL CHECK (version >= 1),
        parent_version INTEGER,
        creator TEXT NOT NULL,
        method TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        config TEXT NOT NULL,
        embedder_id TEXT NOT NULL,
        dim INTEGER NOT NULL CHECK (dim > 0),
        created_at REAL NOT NULL,
        UNIQUE (user_id, version))""",
    """CREATE TABLE personas (
        set_id INTEGER NOT NULL REFERENCES persona_sets (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        cluster INTEGER NOT NULL,
        text TEXT NOT NULL,
        centroid BLOB NOT NULL,
        embedding BLOB,
        selected_item_ids TEXT NOT NULL,
        cluster_size INTEGER NOT NULL,
        budget INTEGER NOT NULL,
        meta TEXT NOT NULL,
        PRIMARY KEY (set_id, position),
        UNIQUE (set_id, cluster))""",
    "PRAGMA user_version = 1",
]


def write_v1_file(path, rng) -> dict[tuple[str, int], list[np.ndarray]]:
    """Two users, three versions, written with plain SQL in the v1 layout. Returns the centroids written."""
    db = sqlite3.connect(path)
    for stmt in V1_DDL:
        db.execute(stmt)
    written = {}
    set_id = 0
    for user, version, n in [("alice", 1, 2), ("alice", 2, 3), ("bob", 1, 1)]:
        set_id += 1
        if version == 1:
            db.execute("INSERT INTO users VALUES (?, ?, ?)", (user, version, 1.0))
        else:
            db.execute("UPDATE users SET current_version = ? WHERE user_id = ?", (version, user))
        db.execute(
            "INSERT INTO persona_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (set_id, user, version, version - 1 or None, "personax-build", "summarize", f"h{version}",
             json.dumps({"v": version}), "old-embedder", 5, 100.0 + version),
        )  # fmt: skip
        cents = [(rng.normal(size=5) * 0.4).astype(np.float32) for _ in range(n)]
        written[(user, version)] = cents
        for pos, c in enumerate(cents):
            db.execute(
                "INSERT INTO personas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (set_id, pos, pos, f"{user} v{version} c{pos}", c.astype("<f4").tobytes(),
                 None if pos else c.astype("<f4").tobytes(), '["i1"]', 3, 1, '{"k": 1}'),
            )  # fmt: skip
    db.commit()
    db.close()
    return written


def test_fresh_file_is_created_at_the_latest_version(tmp_path):
    with PersonaStore(tmp_path / "new.sqlite") as store:
        assert store.schema_version == schema_version() == len(store_sqlite.MIGRATIONS)
    with PersonaStore(tmp_path / "new.sqlite") as store:  # reopening changes nothing
        assert store.schema_version == schema_version()


def test_v1_file_is_migrated_without_data_loss(tmp_path):
    path = tmp_path / "v1.sqlite"
    written = write_v1_file(path, np.random.default_rng(7))
    with PersonaStore(path) as store:
        assert store.schema_version == schema_version() >= 2
        assert store.users() == ["alice", "bob"]
        assert [v.version for v in store.versions("alice")] == [1, 2]
        assert store.current("alice").version == 2
        for (user, version), cents in written.items():
            got = store.get(user, version)
            assert got.note == "" and got.config == {"v": version} and got.embedder_id == "old-embedder"
            assert got.parent_version == (version - 1 or None)
            assert len(got.personas) == len(cents)
            for p, c in zip(got.personas, cents, strict=True):
                np.testing.assert_array_equal(p.centroid, c)
                assert p.text == f"{user} v{version} c{p.cluster}" and p.meta == {"k": 1}
            np.testing.assert_array_equal(got.personas[0].embedding, cents[0])
        # the new parts of the schema work on the migrated file
        assert store.find("alice", "h1").version == 1
        store.start_run("r", "h", {})
        store.mark_build("r", "alice", "done")
        new = store.save(
            "alice",
            [Persona(cluster=0, text="new", centroid=np.ones(5, np.float32))],
            creator="manual",
            method="summarize",
            config={},
            config_hash="h3",
            embedder_id="old-embedder",
            parent_version="current",
            note="after migration",
        )
        assert (new.version, new.parent_version, new.note) == (3, 2, "after migration")
        assert store.delete_user("bob") == 3


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "future.sqlite"
    with PersonaStore(path):
        pass
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"schema version 99 is newer than this code supports \(\d+\)"):
        PersonaStore(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_files_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE notes (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a persona store"):
        PersonaStore(other)
    db = sqlite3.connect(other)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="application_id"):
        PersonaStore(other)


def test_a_failing_migration_rolls_back_every_step(tmp_path, monkeypatch):
    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_sqlite, "MIGRATIONS", [*store_sqlite.MIGRATIONS, broken])
    path = tmp_path / "p.sqlite"
    with pytest.raises(RuntimeError, match="migration bug"):
        PersonaStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []
    db.close()
    monkeypatch.undo()
    with PersonaStore(path) as store:
        assert store.schema_version == schema_version()


def test_a_file_that_is_not_a_database_is_a_store_error_and_left_alone(tmp_path):
    from personalens.errors import StoreError
    from personalens.store import PersonaStore

    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"these are my notes, not a database" * 200)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a usable persona store"):
        PersonaStore(path)
    assert path.read_bytes() == before
