"""The SQLite persona store: every version of every user's personas, a ``current`` pointer, and build bookkeeping.

One file, WAL mode, foreign keys on, a busy timeout. Every write is one ``BEGIN IMMEDIATE`` transaction, so several
threads (each call holds the store's lock) and several processes (each with its own :class:`PersonaStore` on the same
file) can append versions for the same user without ever producing the same version number twice.

The schema is versioned with ``PRAGMA user_version`` and upgraded on open by :data:`MIGRATIONS`, in order, inside one
transaction; a file written by newer code (a higher version than this code knows) is refused, never touched.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personalens.errors import StoreError
from personalens.store.models import (
    BUILD_STATUSES,
    Persona,
    PersonaSet,
    PersonaSetDiff,
    RunInfo,
    VersionInfo,
    canonical_json,
    check_text,
    diff_sets,
    validate_personas,
)

#: ``PRAGMA application_id`` of a persona store ("PLPS"), so an unrelated SQLite file is refused instead of altered.
APPLICATION_ID = 0x504C5053

_VECTOR_DTYPE = np.dtype("<f4")  # stored little-endian whatever the machine


# ---------------------------------------------------------------- migrations


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Users with a current pointer, immutable persona-set versions, and their personas."""
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(
        """
        CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            current_version INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            FOREIGN KEY (user_id, current_version) REFERENCES persona_sets (user_id, version)
                DEFERRABLE INITIALLY DEFERRED
        )
        """
    )
    db.execute(
        """
        CREATE TABLE persona_sets (
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
            UNIQUE (user_id, version)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE personas (
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
            UNIQUE (set_id, cluster)
        )
        """
    )


def _migrate_v2(db: sqlite3.Connection) -> None:
    """A free-text note per version, a config-hash index for ``find``, and the resumable-build bookkeeping."""
    db.execute("ALTER TABLE persona_sets ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX persona_sets_by_config ON persona_sets (user_id, config_hash, version)")
    db.execute(
        """
        CREATE TABLE build_runs (
            run_id TEXT PRIMARY KEY,
            config_hash TEXT NOT NULL,
            config TEXT NOT NULL,
            started_at REAL NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE build_status (
            run_id TEXT NOT NULL REFERENCES build_runs (run_id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
            error TEXT,
            usage TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run_id, user_id)
        )
        """
    )
    db.execute("CREATE INDEX build_status_by_user ON build_status (user_id)")


#: Ordered: ``MIGRATIONS[i]`` upgrades a file from schema version ``i`` to ``i + 1``. Only ever append to this list.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_v1, _migrate_v2]


def schema_version() -> int:
    """The schema version this code writes."""
    return len(MIGRATIONS)


# ---------------------------------------------------------------- encoding


def _encode(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=_VECTOR_DTYPE).tobytes()


def _decode(blob: bytes, dim: int, what: str) -> np.ndarray:
    if len(blob) != dim * 4:
        raise StoreError(f"corrupt store: {what} holds {len(blob)} bytes, expected {dim * 4} for dimension {dim}")
    vec = np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32, copy=False)
    vec.flags.writeable = False
    return vec


_SET_COLUMNS = (
    "s.id, s.user_id, s.version, s.parent_version, s.creator, s.method, s.config_hash, s.config, "
    "s.embedder_id, s.dim, s.created_at, s.note"
)
_N_SET_COLUMNS = len(_SET_COLUMNS.split(","))
_PERSONA_COLUMNS = (
    "p.set_id, p.cluster, p.text, p.centroid, p.embedding, p.selected_item_ids, p.cluster_size, p.budget, p.meta"
)


_json_decode = json.JSONDecoder().decode


def _loads(text: str) -> Any:
    """``json.loads`` with a shortcut for the empty containers that most rows hold (loading 10k users is ~55k rows)."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return _json_decode(text)


def _persona_from_row(row: tuple[Any, ...], dim: int, where: str) -> Persona:
    _, cluster, text, centroid, embedding, items, size, budget, meta = row
    return Persona(
        cluster=int(cluster),
        text=text,
        centroid=_decode(centroid, dim, f"{where} cluster {cluster} centroid"),
        selected_item_ids=tuple(_loads(items)),
        cluster_size=int(size),
        budget=int(budget),
        embedding=None if embedding is None else _decode(embedding, dim, f"{where} cluster {cluster} embedding"),
        meta=_loads(meta),
    )


def _set_from_rows(set_row: tuple[Any, ...], persona_rows: Sequence[tuple[Any, ...]]) -> PersonaSet:
    _, user_id, version, parent, creator, method, chash, config, embedder_id, dim, created_at, note = set_row
    where = f"user {user_id!r} v{version}"
    return PersonaSet(
        user_id=user_id,
        version=int(version),
        parent_version=None if parent is None else int(parent),
        creator=creator,
        method=method,
        config_hash=chash,
        config=json.loads(config),
        created_at=float(created_at),
        personas=tuple(_persona_from_row(r, int(dim), where) for r in persona_rows),
        embedder_id=embedder_id,
        note=note,
    )


def prepare_save(
    user_id: Any,
    personas: Any,
    creator: Any,
    method: Any,
    config: Any,
    config_hash: Any,
    embedder_id: Any,
    parent_version: Any,
    note: Any,
) -> tuple[str, int, list[tuple[Any, ...]]]:
    """Validate the arguments of ``save`` (every backend refuses the same inputs with the same messages) and encode
    the personas: returns ``(config_json, dim, rows)``, one row ``(position, cluster, text, centroid, embedding,
    selected_item_ids, cluster_size, budget, meta)`` per persona."""
    check_text(user_id, "user_id")
    check_text(creator, "creator")
    check_text(method, "method")
    check_text(config_hash, "config_hash")
    check_text(embedder_id, "embedder_id")
    if not isinstance(config, dict):
        raise StoreError(f"config must be a dict, got {type(config).__name__}")
    config_json = canonical_json(config, what="config")
    if not isinstance(note, str):
        raise StoreError(f"note must be a string, got {type(note).__name__}")
    if not (parent_version is None or parent_version == "current" or _is_version(parent_version)):
        raise StoreError(f"parent_version must be None, 'current' or a version >= 1, got {parent_version!r}")
    checked = validate_personas(personas)
    dim = int(checked[0].centroid.shape[0])
    rows = [
        (
            pos,
            int(p.cluster),
            p.text,
            _encode(p.centroid),
            None if p.embedding is None else _encode(p.embedding),
            canonical_json(list(p.selected_item_ids)),
            int(p.cluster_size),
            int(p.budget),
            canonical_json(p.meta),
        )
        for pos, p in enumerate(checked)
    ]
    return config_json, dim, rows


# ---------------------------------------------------------------- the store


class PersonaStore:
    """SQLite implementation of :class:`~personalens.store.PersonaStoreProtocol`.

    ``path`` may be ``":memory:"`` (one connection, for quick experiments). ``timeout`` is how long a write waits for
    another writer (thread or process) before failing with :class:`StoreError`.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the persona store: {exc}") from exc
        try:
            self._configure()
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._db = None
            raise StoreError(f"{self.path}: not a usable persona store ({exc}); nothing was changed") from exc
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # -- connection set-up

    def _configure(self) -> None:
        db = self._conn()
        db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        db.execute("PRAGMA foreign_keys = ON")
        deadline = time.monotonic() + self.timeout
        while True:  # switching to WAL needs a moment of exclusive access; another process may be opening too
            try:
                db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: cannot switch to WAL mode: {exc}") from exc
                time.sleep(0.01)
        db.execute("PRAGMA synchronous = NORMAL")

    def _migrate(self) -> None:
        db = self._conn()
        known = schema_version()
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > known:
            raise StoreError(
                f"{self.path}: persona store schema version {found} is newer than this code supports ({known}); "
                "upgrade personalens to open it"
            )
        if found == known:
            self._check_identity(found)
            return
        with self._write() as db:
            found = int(db.execute("PRAGMA user_version").fetchone()[0])  # another process may have migrated
            if found > known:
                raise StoreError(f"{self.path}: persona store schema version {found} is newer than this code ({known})")
            self._check_identity(found)
            for step in range(found, known):
                MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {step + 1}")

    def _check_identity(self, version: int) -> None:
        db = self._conn()
        if version == 0:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if tables:
                raise StoreError(f"{self.path}: not a persona store (an unversioned database with tables {tables})")
            return
        app = int(db.execute("PRAGMA application_id").fetchone()[0])
        if app != APPLICATION_ID:
            raise StoreError(
                f"{self.path}: not a persona store (application_id {app:#x}, expected {APPLICATION_ID:#x})"
            )

    # -- transactions

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the persona store is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so no other writer interleaves."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: could not start a write within {self.timeout}s: {exc}") from exc
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: write failed and was rolled back: {exc}") from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so multi-statement reads see one snapshot."""
        with self._lock:
            db = self._conn()
            nested = db.in_transaction
            if not nested:
                db.execute("BEGIN")
            try:
                yield db
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from exc
            finally:
                if not nested and db.in_transaction:
                    db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    # -- loading helpers (caller holds a transaction)

    @staticmethod
    def _load(db: sqlite3.Connection, user_id: str, version: int) -> PersonaSet | None:
        if not _fits_integer(version):  # no such version can be stored; SQLite would raise OverflowError
            return None
        row = db.execute(
            f"SELECT {_SET_COLUMNS} FROM persona_sets s WHERE s.user_id = ? AND s.version = ?", (user_id, version)
        ).fetchone()
        if row is None:
            return None
        personas = db.execute(
            f"SELECT {_PERSONA_COLUMNS} FROM personas p WHERE p.set_id = ? ORDER BY p.position", (row[0],)
        ).fetchall()
        return _set_from_rows(row, personas)

    @staticmethod
    def _current_version(db: sqlite3.Connection, user_id: str) -> int | None:
        row = db.execute("SELECT current_version FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else int(row[0])

    # -- persona sets

    def save(
        self,
        user_id: str,
        personas: Sequence[Persona],
        *,
        creator: str,
        method: str,
        config: dict[str, Any],
        config_hash: str,
        embedder_id: str,
        parent_version: int | Literal["current"] | None = None,
        note: str = "",
        make_current: bool = True,
    ) -> PersonaSet:
        """Append version n+1 for ``user_id`` atomically and (by default) make it current.

        Everything is validated before the transaction starts; a failure inside it leaves the store unchanged.
        ``parent_version="current"`` records the version that was current when this one was written. A user's first
        version is always current, whatever ``make_current`` says.
        """
        config_json, dim, rows = prepare_save(
            user_id, personas, creator, method, config, config_hash, embedder_id, parent_version, note
        )
        now = time.time()
        with self._write() as db:
            current = self._current_version(db, user_id)
            latest = db.execute("SELECT MAX(version) FROM persona_sets WHERE user_id = ?", (user_id,)).fetchone()[0]
            version = int(latest or 0) + 1
            if parent_version == "current":
                parent = current
            elif parent_version is not None:
                parent = int(parent_version)
                if parent >= version:
                    raise StoreError(f"user {user_id!r} has no version {parent} to be a parent (latest: {latest})")
            else:
                parent = None
            if current is None:
                db.execute(
                    "INSERT INTO users (user_id, current_version, updated_at) VALUES (?, ?, ?)", (user_id, version, now)
                )
            set_id = db.execute(
                "INSERT INTO persona_sets (user_id, version, parent_version, creator, method, config_hash, config, "
                "embedder_id, dim, created_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, version, parent, creator, method, config_hash, config_json, embedder_id, dim, now, note),
            ).lastrowid
            db.executemany(
                "INSERT INTO personas (set_id, position, cluster, text, centroid, embedding, selected_item_ids, "
                "cluster_size, budget, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(set_id, *row) for row in rows],
            )
            if current is not None and make_current:
                self._set_current(db, user_id, version, now)
            saved = self._load(db, user_id, version)
        assert saved is not None
        return saved

    @staticmethod
    def _set_current(db: sqlite3.Connection, user_id: str, version: int, now: float) -> None:
        db.execute("UPDATE users SET current_version = ?, updated_at = ? WHERE user_id = ?", (version, now, user_id))

    def set_current(self, user_id: str, version: int) -> None:
        """Point ``current`` at an existing version (no new version is written; see :meth:`rollback` for that)."""
        with self._write() as db:
            if (
                not _fits_integer(version)
                or db.execute(
                    "SELECT 1 FROM persona_sets WHERE user_id = ? AND version = ?", (user_id, version)
                ).fetchone()
                is None
            ):
                raise StoreError(f"user {user_id!r} has no version {version}")
            self._set_current(db, user_id, version, time.time())

    def current(self, user_id: str) -> PersonaSet | None:
        with self._read() as db:
            version = self._current_version(db, user_id)
            return None if version is None else self._load(db, user_id, version)

    def get(self, user_id: str, version: int) -> PersonaSet | None:
        with self._read() as db:
            return self._load(db, user_id, int(version))

    def versions(self, user_id: str) -> list[VersionInfo]:
        """The user's whole history, oldest first ([] for an unknown user)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT s.version, s.parent_version, s.creator, s.method, s.config_hash, s.created_at, "
                "(SELECT COUNT(*) FROM personas p WHERE p.set_id = s.id), s.version = u.current_version, s.note "
                "FROM persona_sets s JOIN users u ON u.user_id = s.user_id WHERE s.user_id = ? ORDER BY s.version",
                (user_id,),
            ).fetchall()
        return [
            VersionInfo(
                version=int(v),
                parent_version=None if parent is None else int(parent),
                creator=creator,
                method=method,
                config_hash=chash,
                created_at=float(created),
                n_personas=int(n),
                is_current=bool(cur),
                note=note,
            )
            for v, parent, creator, method, chash, created, n, cur, note in rows
        ]

    def users(self, *, limit: int | None = None, offset: int = 0) -> list[str]:
        """User ids with at least one version, sorted."""
        with self._read() as db:
            rows = db.execute(
                "SELECT user_id FROM users ORDER BY user_id LIMIT ? OFFSET ?",
                (-1 if limit is None else int(limit), int(offset)),
            ).fetchall()
        return [r[0] for r in rows]

    def count_users(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def find(self, user_id: str, config_hash: str) -> PersonaSet | None:
        """The newest version of ``user_id`` built with exactly ``config_hash``, or ``None``."""
        with self._read() as db:
            row = db.execute(
                "SELECT MAX(version) FROM persona_sets WHERE user_id = ? AND config_hash = ?", (user_id, config_hash)
            ).fetchone()
            return None if row[0] is None else self._load(db, user_id, int(row[0]))

    def iter_current(self, *, batch_size: int = 512) -> Iterator[PersonaSet]:
        """Every user's current set, in user-id order, fetched ``batch_size`` users per query.

        Each page is its own short read, so the store stays usable (even from the consuming thread) while iterating;
        a user re-saved meanwhile is seen in either its old or its new version, never half of each.
        """
        after = ""  # user ids are non-empty, so every one sorts after ""
        while True:
            with self._read() as db:
                rows = db.execute(
                    "WITH page AS (SELECT user_id, current_version FROM users "
                    "WHERE user_id > ? ORDER BY user_id LIMIT ?) "
                    f"SELECT {_SET_COLUMNS}, {_PERSONA_COLUMNS} FROM page "
                    "JOIN persona_sets s ON s.user_id = page.user_id AND s.version = page.current_version "
                    "JOIN personas p ON p.set_id = s.id ORDER BY s.user_id, p.position",
                    (after, int(batch_size)),
                ).fetchall()
            if not rows:
                return
            n_set = _N_SET_COLUMNS
            start = 0
            for i in range(1, len(rows) + 1):
                if i == len(rows) or rows[i][0] != rows[start][0]:
                    yield _set_from_rows(rows[start][:n_set], [r[n_set:] for r in rows[start:i]])
                    start = i
            after = rows[-1][1]

    def diff(self, user_id: str, v1: int, v2: int) -> PersonaSetDiff:
        with self._read() as db:
            old, new = self._load(db, user_id, int(v1)), self._load(db, user_id, int(v2))
        for version, found in ((v1, old), (v2, new)):
            if found is None:
                raise StoreError(f"user {user_id!r} has no version {version}")
        assert old is not None and new is not None
        return diff_sets(old, new)

    def rollback(self, user_id: str, version: int, *, creator: str = "rollback", note: str | None = None) -> PersonaSet:
        """Write a NEW version whose content copies ``version`` (its parent), and make it current.

        History is never rewritten: the versions after ``version`` stay, and the copy keeps the original's method,
        configuration, config hash and embedder, so ``find`` by that configuration returns the copy.
        """
        check_text(creator, "creator")
        note = f"rollback to v{version}" if note is None else note
        now = time.time()
        with self._write() as db:
            src = (
                db.execute(
                    "SELECT id FROM persona_sets WHERE user_id = ? AND version = ?", (user_id, int(version))
                ).fetchone()
                if _fits_integer(version)
                else None
            )
            if src is None:
                raise StoreError(f"user {user_id!r} has no version {version} to roll back to")
            latest = int(
                db.execute("SELECT MAX(version) FROM persona_sets WHERE user_id = ?", (user_id,)).fetchone()[0]
            )
            new_version = latest + 1
            set_id = db.execute(
                "INSERT INTO persona_sets (user_id, version, parent_version, creator, method, config_hash, config, "
                "embedder_id, dim, created_at, note) SELECT user_id, ?, version, ?, method, config_hash, config, "
                "embedder_id, dim, ?, ? FROM persona_sets WHERE id = ?",
                (new_version, creator, now, note, src[0]),
            ).lastrowid
            db.execute(
                "INSERT INTO personas (set_id, position, cluster, text, centroid, embedding, selected_item_ids, "
                "cluster_size, budget, meta) SELECT ?, position, cluster, text, centroid, embedding, "
                "selected_item_ids, cluster_size, budget, meta FROM personas WHERE set_id = ?",
                (set_id, src[0]),
            )
            self._set_current(db, user_id, new_version, now)
            saved = self._load(db, user_id, new_version)
        assert saved is not None
        return saved

    def delete_user(self, user_id: str) -> int:
        """Remove the user, every version, every persona and every build-status row, in one transaction.

        Returns the number of rows removed (0 for an unknown user).
        """
        with self._write() as db:
            n_personas = db.execute(
                "SELECT COUNT(*) FROM personas WHERE set_id IN (SELECT id FROM persona_sets WHERE user_id = ?)",
                (user_id,),
            ).fetchone()[0]
            n_sets = db.execute("SELECT COUNT(*) FROM persona_sets WHERE user_id = ?", (user_id,)).fetchone()[0]
            n_status = db.execute("DELETE FROM build_status WHERE user_id = ?", (user_id,)).rowcount
            n_users = db.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount  # cascades to the rest
            left = db.execute("SELECT COUNT(*) FROM persona_sets WHERE user_id = ?", (user_id,)).fetchone()[0]
            if left:
                raise StoreError(f"delete of user {user_id!r} left {left} persona sets behind")
        return int(n_personas + n_sets + n_status + n_users)

    # -- build bookkeeping

    def start_run(self, run_id: str, config_hash: str, config: dict[str, Any]) -> RunInfo:
        """Register a build run, or resume it: starting an existing run with the same config hash is a no-op,
        with a different one an error (a resumed build must not mix configurations)."""
        check_text(run_id, "run_id")
        check_text(config_hash, "config_hash")
        if not isinstance(config, dict):
            raise StoreError(f"config must be a dict, got {type(config).__name__}")
        config_json = canonical_json(config, what="config")
        with self._write() as db:
            row = db.execute("SELECT config_hash FROM build_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO build_runs (run_id, config_hash, config, started_at) VALUES (?, ?, ?, ?)",
                    (run_id, config_hash, config_json, time.time()),
                )
            elif row[0] != config_hash:
                raise StoreError(
                    f"build run {run_id!r} was started with config {row[0]}, cannot resume it with {config_hash}"
                )
        info = self.run_info(run_id)
        assert info is not None
        return info

    def run_info(self, run_id: str) -> RunInfo | None:
        with self._read() as db:
            row = db.execute(
                "SELECT config_hash, config, started_at FROM build_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return None
            counts = dict.fromkeys(BUILD_STATUSES, 0)
            for status, n in db.execute(
                "SELECT status, COUNT(*) FROM build_status WHERE run_id = ? GROUP BY status", (run_id,)
            ):
                counts[status] = int(n)
        return RunInfo(run_id, row[0], json.loads(row[1]), float(row[2]), counts)

    def mark_build(
        self,
        run_id: str,
        user_id: str,
        status: str,
        *,
        error: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Record a user's status in a run ("pending", "done" or "failed"); "done"/"failed" count an attempt."""
        check_text(user_id, "user_id")
        if status not in BUILD_STATUSES:
            raise StoreError(f"build status must be one of {BUILD_STATUSES}, got {status!r}")
        if error is not None and not isinstance(error, str):
            raise StoreError(f"error must be a string, got {type(error).__name__}")
        usage_json = None if usage is None else canonical_json(usage, what="usage")
        with self._write() as db:
            if db.execute("SELECT 1 FROM build_runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise StoreError(f"unknown build run {run_id!r} (call start_run first)")
            db.execute(
                "INSERT INTO build_status (run_id, user_id, status, error, usage, attempts, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, user_id) DO UPDATE SET "
                "status = excluded.status, error = excluded.error, usage = excluded.usage, "
                "attempts = attempts + excluded.attempts, updated_at = excluded.updated_at",
                (run_id, user_id, status, error, usage_json, int(status != "pending"), time.time()),
            )

    def build_status(self, run_id: str) -> dict[str, str]:
        """``{user_id: status}`` for every user marked in the run."""
        with self._read() as db:
            if db.execute("SELECT 1 FROM build_runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise StoreError(f"unknown build run {run_id!r}")
            rows = db.execute(
                "SELECT user_id, status FROM build_status WHERE run_id = ? ORDER BY user_id", (run_id,)
            ).fetchall()
        return dict(rows)

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> PersonaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PersonaStore({str(self.path)!r})"


def _fits_integer(value: Any) -> bool:
    """Whether ``value`` fits SQLite's 64-bit INTEGER (a larger version cannot exist and cannot even be queried)."""
    return -(2**63) <= int(value) < 2**63


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
