"""The SQLite persona store: every version of every user's personas, a ``current`` pointer, build bookkeeping, and
each user's episodic memory (PersonaAgent's buffer of past queries and true responses).

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
from typing import Any, Literal, NamedTuple

import numpy as np

from personalens.errors import StoreError
from personalens.store.models import (
    BUILD_STATUSES,
    MemoryRecord,
    Persona,
    PersonaSet,
    PersonaSetDiff,
    RunInfo,
    VersionInfo,
    canonical_json,
    check_text,
    diff_sets,
    validate_memories,
    validate_personas,
)

#: ``PRAGMA application_id`` of a persona store ("PLPS"), so an unrelated SQLite file is refused instead of altered.
APPLICATION_ID = 0x504C5053

_VECTOR_DTYPE = np.dtype("<f4")  # stored little-endian whatever the machine
_CHUNK = 500  # ids per ``IN (...)`` list, well under SQLite's limit on bound parameters


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


def _migrate_v3(db: sqlite3.Connection) -> None:
    """Episodic memory: per-user (query, response, metadata) records with an optional embedding.

    Not tied to ``users``: a user may have memories before (or without) any persona set. ``id`` is the insertion
    order; ``dim`` is NULL exactly when there is no embedding.
    """
    db.execute(
        """
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL,
            memory_id TEXT NOT NULL,
            query TEXT NOT NULL,
            response TEXT NOT NULL,
            ts REAL,
            session TEXT,
            metadata TEXT NOT NULL,
            embedding BLOB,
            dim INTEGER CHECK (dim > 0),
            embedder_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (user_id, memory_id),
            CHECK ((embedding IS NULL) = (dim IS NULL))
        )
        """
    )
    db.execute("CREATE INDEX memories_by_time ON memories (user_id, ts, id)")


#: Ordered: ``MIGRATIONS[i]`` upgrades a file from schema version ``i`` to ``i + 1``. Only ever append to this list.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_v1, _migrate_v2, _migrate_v3]


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


# ---------------------------------------------------------------- episodic memory (shared by both backends)


class MemoryRow(NamedTuple):
    """A memory record as stored: validated and encoded. ``position`` is its index in the ``add_memories`` call
    (``-1`` for a row read back from the store)."""

    position: int
    memory_id: str
    query: str
    response: str
    ts: float | None
    session: str | None
    metadata: str
    embedding: bytes | None
    dim: int | None
    embedder_id: str

    @property
    def where(self) -> str:
        return f"memory record {self.position} (id {self.memory_id!r})"

    def values(self) -> tuple[Any, ...]:
        """The column values after ``user_id``, in :data:`MEMORY_INSERT_COLUMNS` order (``created_at`` excluded)."""
        return tuple(self)[1:]


#: The columns ``add_memories`` inserts, after ``user_id`` and before ``created_at``.
MEMORY_INSERT_COLUMNS = "memory_id, query, response, ts, session, metadata, embedding, dim, embedder_id"
#: What ``memories`` reads back, one :class:`MemoryRecord` per row (see :func:`memory_from_row`).
MEMORY_COLUMNS = f"{MEMORY_INSERT_COLUMNS}, created_at"
#: Time order (records without a timestamp first, then by timestamp), ties in insertion order; and its reverse.
MEMORY_ORDER = {False: "ts IS NOT NULL, ts, id", True: "ts IS NOT NULL DESC, ts DESC, id DESC"}


def stored_memory_row(row: Sequence[Any]) -> MemoryRow:
    """A :class:`MemoryRow` from the :data:`MEMORY_INSERT_COLUMNS` of a stored row."""
    mid, query, response, ts, session, metadata, embedding, dim, embedder_id = row
    return MemoryRow(
        -1,
        mid,
        query,
        response,
        None if ts is None else float(ts),
        session,
        metadata,
        None if embedding is None else bytes(embedding),
        None if dim is None else int(dim),
        embedder_id,
    )


def memory_from_row(row: Sequence[Any], user_id: str) -> MemoryRecord:
    """A :class:`MemoryRecord` from the :data:`MEMORY_COLUMNS` of a stored row."""
    mid, query, response, ts, session, metadata, embedding, dim, embedder_id, created_at = row
    return MemoryRecord(
        memory_id=mid,
        query=query,
        response=response,
        timestamp=None if ts is None else float(ts),
        session=session,
        metadata=_loads(metadata),
        embedding=None if embedding is None else _decode(embedding, int(dim), f"user {user_id!r} memory {mid!r}"),
        embedder_id=embedder_id,
        created_at=float(created_at),
    )


def memory_differences(a: MemoryRow, b: MemoryRow) -> list[str]:
    """The content fields in which two rows with the same ``memory_id`` differ ([] when they are the same record)."""
    fields = [
        name
        for name in ("query", "response", "ts", "session", "metadata", "embedder_id")
        if getattr(a, name) != getattr(b, name)
    ]
    if (a.embedding is None) != (b.embedding is None) or (
        a.embedding is not None
        and b.embedding is not None
        and not (
            a.dim == b.dim
            and np.array_equal(np.frombuffer(a.embedding, _VECTOR_DTYPE), np.frombuffer(b.embedding, _VECTOR_DTYPE))
        )
    ):
        fields.append("embedding")
    return ["timestamp" if f == "ts" else f for f in fields]


def prepare_memories(user_id: Any, records: Any) -> list[MemoryRow]:
    """Validate the arguments of ``add_memories`` (every backend refuses the same inputs with the same messages) and
    encode the records, dropping repeats of a record within the call (the same id twice with different content is
    refused)."""
    check_text(user_id, "user_id")
    if "\x00" in user_id:
        raise StoreError("user_id contains a NUL character, which the store cannot keep")
    first: dict[str, MemoryRow] = {}
    rows: list[MemoryRow] = []
    for i, r in enumerate(validate_memories(records)):
        row = MemoryRow(
            i,
            r.memory_id,
            r.query,
            r.response,
            None if r.timestamp is None else float(r.timestamp),
            r.session,
            canonical_json(r.metadata),
            None if r.embedding is None else _encode(r.embedding),
            None if r.embedding is None else int(r.embedding.shape[0]),
            r.embedder_id,
        )
        seen = first.get(row.memory_id)
        if seen is None:
            first[row.memory_id] = row
            rows.append(row)
            continue
        differ = memory_differences(seen, row)
        if differ:
            raise StoreError(
                f"{row.where}: the same id is memory record {seen.position} of this call, with different content "
                f"({', '.join(differ)}); nothing was written"
            )
    return rows


def plan_memory_insert(
    user_id: str, rows: Sequence[MemoryRow], stored: dict[str, MemoryRow], stored_dim: int | None
) -> list[MemoryRow]:
    """The rows to insert, given what the store already holds for these ids and the dimension of the user's stored
    embeddings (called inside the write transaction). Raises :class:`StoreError` on a conflict."""
    new: list[MemoryRow] = []
    for row in rows:
        old = stored.get(row.memory_id)
        if old is not None:
            differ = memory_differences(old, row)
            if differ:
                raise StoreError(
                    f"{row.where}: user {user_id!r} already has a memory with this id and different content "
                    f"({', '.join(differ)}); nothing was written"
                )
            continue
        if row.dim is not None and stored_dim is not None and row.dim != stored_dim:
            raise StoreError(
                f"{row.where}: embedding has dimension {row.dim}, but the stored memory embeddings of user "
                f"{user_id!r} have dimension {stored_dim}; nothing was written"
            )
        new.append(row)
    return new


def check_memory_ids(memory_ids: Any) -> list[str]:
    """The distinct ids of a ``delete_memories`` call, validated."""
    if isinstance(memory_ids, str | bytes) or not hasattr(memory_ids, "__iter__"):
        raise StoreError(f"memory_ids must be a sequence of strings or None, got {type(memory_ids).__name__}")
    ids = list(memory_ids)
    for i, mid in enumerate(ids):
        if not isinstance(mid, str):
            raise StoreError(f"memory_ids[{i}] must be a string, got {type(mid).__name__}")
    return list(dict.fromkeys(ids))


def check_memory_query(before: Any, limit: Any) -> tuple[float | None, int | None]:
    """Validate the ``before`` and ``limit`` arguments of ``memories``."""
    if before is not None:
        if not isinstance(before, int | float | np.integer | np.floating) or isinstance(before, bool):
            raise StoreError(f"before must be a number of seconds since the epoch or None, got {before!r}")
        try:
            before = float(before)
        except OverflowError:
            before = float("inf") if before > 0 else float("-inf")
        if before != before:
            raise StoreError("before must not be NaN")
    if limit is not None and (not isinstance(limit, int | np.integer) or isinstance(limit, bool) or limit < 0):
        raise StoreError(f"limit must be None or a non-negative int, got {limit!r}")
    return before, None if limit is None else int(limit)


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
        """Remove the user, every version, every persona, every build-status row and every episodic memory, in one
        transaction (a user with memories but no personas is deleted too).

        Returns the number of rows removed: personas + persona sets + build-status rows + the user row + memories
        (0 for an unknown user).
        """
        with self._write() as db:
            n_personas = db.execute(
                "SELECT COUNT(*) FROM personas WHERE set_id IN (SELECT id FROM persona_sets WHERE user_id = ?)",
                (user_id,),
            ).fetchone()[0]
            n_sets = db.execute("SELECT COUNT(*) FROM persona_sets WHERE user_id = ?", (user_id,)).fetchone()[0]
            n_status = db.execute("DELETE FROM build_status WHERE user_id = ?", (user_id,)).rowcount
            n_memories = db.execute("DELETE FROM memories WHERE user_id = ?", (user_id,)).rowcount
            n_users = db.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount  # cascades to the rest
            left = db.execute("SELECT COUNT(*) FROM persona_sets WHERE user_id = ?", (user_id,)).fetchone()[0]
            if left:
                raise StoreError(f"delete of user {user_id!r} left {left} persona sets behind")
        return int(n_personas + n_sets + n_status + n_users + n_memories)

    # -- episodic memory

    def add_memories(self, user_id: str, records: Sequence[MemoryRecord]) -> int:
        """Add episodic memories for ``user_id`` (who needs no persona set), atomically: all or nothing.

        Every record is validated before the transaction starts. A record whose ``memory_id`` the user already has
        with identical content is skipped (so re-adding a batch is a no-op, also when several writers add it at
        once); the same id with different content, in the store or earlier in the call, is refused, as is an
        embedding whose dimension differs from the user's other memory embeddings. Returns how many records were
        newly inserted.
        """
        rows = prepare_memories(user_id, records)
        if not rows:
            return 0
        now = time.time()
        with self._write() as db:
            stored: dict[str, MemoryRow] = {}
            ids = [r.memory_id for r in rows]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for found in db.execute(
                    f"SELECT {MEMORY_INSERT_COLUMNS} FROM memories WHERE user_id = ? "
                    f"AND memory_id IN ({', '.join('?' * len(chunk))})",
                    (user_id, *chunk),
                ):
                    stored[found[0]] = stored_memory_row(found)
            dim = db.execute(
                "SELECT dim FROM memories WHERE user_id = ? AND dim IS NOT NULL LIMIT 1", (user_id,)
            ).fetchone()
            new = plan_memory_insert(user_id, rows, stored, None if dim is None else int(dim[0]))
            db.executemany(
                f"INSERT INTO memories (user_id, {MEMORY_INSERT_COLUMNS}, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(user_id, *row.values(), now) for row in new],
            )
        return len(new)

    def memories(
        self,
        user_id: str,
        *,
        before: float | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[MemoryRecord]:
        """The user's memories in time order: records without a timestamp first (in insertion order), then by
        timestamp, ties in insertion order; ``newest_first`` returns exactly the reverse order.

        ``before`` keeps only records with ``timestamp < before`` (so it drops those without a timestamp); ``limit``
        applies after ordering (with ``newest_first``, the latest ``limit`` records). [] for an unknown user.
        """
        cutoff, n = check_memory_query(before, limit)
        where = "user_id = ?"
        params: list[Any] = [user_id]
        if cutoff is not None:
            where += " AND ts < ?"
            params.append(cutoff)
        with self._read() as db:
            rows = db.execute(
                f"SELECT {MEMORY_COLUMNS} FROM memories WHERE {where} "
                f"ORDER BY {MEMORY_ORDER[bool(newest_first)]} LIMIT ?",
                (*params, -1 if n is None else n),
            ).fetchall()
        return [memory_from_row(r, user_id) for r in rows]

    def count_memories(self, user_id: str) -> int:
        with self._read() as db:
            return int(db.execute("SELECT COUNT(*) FROM memories WHERE user_id = ?", (user_id,)).fetchone()[0])

    def memory_users(self) -> list[str]:
        """User ids with at least one memory, sorted (whether or not they have personas)."""
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT user_id FROM memories ORDER BY user_id").fetchall()
        return [r[0] for r in rows]

    def delete_memories(self, user_id: str, memory_ids: Sequence[str] | None = None) -> int:
        """Delete the user's memories with these ids (ids the user does not have are ignored), or all of them when
        ``memory_ids`` is None. Returns how many were deleted."""
        ids = None if memory_ids is None else check_memory_ids(memory_ids)
        with self._write() as db:
            if ids is None:
                return int(db.execute("DELETE FROM memories WHERE user_id = ?", (user_id,)).rowcount)
            n = 0
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                n += db.execute(
                    f"DELETE FROM memories WHERE user_id = ? AND memory_id IN ({', '.join('?' * len(chunk))})",
                    (user_id, *chunk),
                ).rowcount
            return int(n)

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
