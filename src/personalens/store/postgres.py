"""The PostgreSQL persona store: the same contract and semantics as the SQLite :class:`~personalens.store.PersonaStore`
(persona versions, build bookkeeping, episodic memories), for a store shared by several machines or processes.

    from personalens.store.postgres import PostgresPersonaStore

    with PostgresPersonaStore("postgresql://app@db.internal/personas") as store:
        store.current("u1")

All tables live in one schema (``personalens`` unless ``schema=`` or a ``?schema=`` URL parameter says otherwise), so
the store can share a database with other applications. Vectors are stored as little-endian float32 ``bytea``, the
configuration as the same canonical JSON text the SQLite store keeps (so config hashes and diffs agree byte for byte),
and user ids sort bytewise (``COLLATE "C"``), as in SQLite.

Concurrency: every write is one READ COMMITTED transaction that first takes a transaction-scoped advisory lock on the
user it writes, so writers of the same user (threads, processes, machines) queue up and each numbers its version from
what the previous one committed (or sees the memories it added); ``UNIQUE (user_id, version)`` and
``UNIQUE (user_id, memory_id)`` back this up. Reads run in a REPEATABLE READ, READ ONLY
transaction, so a multi-statement read sees one snapshot. One store object holds one connection and serialises its
callers with a lock; a connection lost between calls is re-opened on the next call.

The schema is versioned in the ``schema_migrations`` table and upgraded on open by :data:`MIGRATIONS`, in order, in one
transaction, under an advisory lock so that concurrent openers do not race; a schema written by newer code is refused,
never touched. psycopg 3 is imported only when a store is constructed (``pip install 'personalens[postgres]'``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from personalens.errors import BackendUnavailable, StoreError
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
)

# The row layout and codecs are shared with the SQLite store, so both backends read back identical objects.
from personalens.store.sqlite import (
    _N_SET_COLUMNS,
    MEMORY_COLUMNS,
    MEMORY_INSERT_COLUMNS,
    MEMORY_ORDER,
    MemoryRow,
    _set_from_rows,
    check_memory_ids,
    check_memory_query,
    memory_from_row,
    plan_memory_insert,
    prepare_memories,
    prepare_save,
    stored_memory_row,
)

if TYPE_CHECKING:
    import psycopg

    Cursor = psycopg.Cursor[Any]

INSTALL_HINT = "pip install 'personalens[postgres]'"
DEFAULT_SCHEMA = "personalens"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# ---------------------------------------------------------------- migrations


def _migrate_v1(cur: Cursor) -> None:
    """Users with a current pointer, immutable persona-set versions, their personas, and the build bookkeeping."""
    cur.execute(
        """
        CREATE TABLE users (
            user_id TEXT COLLATE "C" PRIMARY KEY,
            current_version INTEGER NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )
        """
    )
    cur.execute(
        """
        CREATE TABLE persona_sets (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
            version INTEGER NOT NULL CHECK (version >= 1),
            parent_version INTEGER,
            creator TEXT NOT NULL,
            method TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            config TEXT NOT NULL,
            embedder_id TEXT NOT NULL,
            dim INTEGER NOT NULL CHECK (dim > 0),
            created_at DOUBLE PRECISION NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            UNIQUE (user_id, version)
        )
        """
    )
    cur.execute(
        """
        ALTER TABLE users ADD CONSTRAINT users_current_version_fkey FOREIGN KEY (user_id, current_version)
            REFERENCES persona_sets (user_id, version) DEFERRABLE INITIALLY DEFERRED
        """
    )
    cur.execute("CREATE INDEX persona_sets_by_config ON persona_sets (user_id, config_hash, version)")
    cur.execute(
        """
        CREATE TABLE personas (
            set_id BIGINT NOT NULL REFERENCES persona_sets (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            cluster BIGINT NOT NULL,
            text TEXT NOT NULL,
            centroid BYTEA NOT NULL,
            embedding BYTEA,
            selected_item_ids TEXT NOT NULL,
            cluster_size BIGINT NOT NULL,
            budget BIGINT NOT NULL,
            meta TEXT NOT NULL,
            PRIMARY KEY (set_id, position),
            UNIQUE (set_id, cluster)
        )
        """
    )
    cur.execute(
        """
        CREATE TABLE build_runs (
            run_id TEXT COLLATE "C" PRIMARY KEY,
            config_hash TEXT NOT NULL,
            config TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL
        )
        """
    )
    cur.execute(
        """
        CREATE TABLE build_status (
            run_id TEXT COLLATE "C" NOT NULL REFERENCES build_runs (run_id) ON DELETE CASCADE,
            user_id TEXT COLLATE "C" NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
            error TEXT,
            usage TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (run_id, user_id)
        )
        """
    )
    cur.execute("CREATE INDEX build_status_by_user ON build_status (user_id)")


def _migrate_v2(cur: Cursor) -> None:
    """Episodic memory: per-user (query, response, metadata) records with an optional embedding.

    Not tied to ``users``: a user may have memories before (or without) any persona set. ``id`` is the insertion
    order (writers of one user are serialised by the user's advisory lock); ``dim`` is NULL exactly when there is no
    embedding.
    """
    cur.execute(
        """
        CREATE TABLE memories (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id TEXT COLLATE "C" NOT NULL,
            memory_id TEXT COLLATE "C" NOT NULL,
            query TEXT NOT NULL,
            response TEXT NOT NULL,
            ts DOUBLE PRECISION,
            session TEXT,
            metadata TEXT NOT NULL,
            embedding BYTEA,
            dim INTEGER CHECK (dim > 0),
            embedder_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (user_id, memory_id),
            CHECK ((embedding IS NULL) = (dim IS NULL))
        )
        """
    )
    cur.execute("CREATE INDEX memories_by_time ON memories (user_id, ts, id)")


#: Ordered: ``MIGRATIONS[i]`` upgrades a schema from version ``i`` to ``i + 1``. Only ever append to this list.
MIGRATIONS: list[Callable[[Cursor], None]] = [_migrate_v1, _migrate_v2]


def schema_version() -> int:
    """The schema version this code writes."""
    return len(MIGRATIONS)


# ---------------------------------------------------------------- DSNs


def is_postgres_url(location: object) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL (what selects this store in the settings)."""
    return isinstance(location, str) and location.lower().startswith(("postgresql://", "postgres://"))


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (URL or ``key=value`` form), safe to print or log."""
    if is_postgres_url(dsn):
        parts = urlsplit(dsn)
        if parts.password is not None:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostinfo}")
        params = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "password" for k, _ in params):
            parts = parts._replace(query=urlencode([(k, "***" if k == "password" else v) for k, v in params], safe="*"))
        return urlunsplit(parts)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def _split_schema(dsn: str) -> tuple[str, str | None]:
    """Take a ``schema`` query parameter (ours, not libpq's) out of a URL DSN."""
    if not is_postgres_url(dsn):
        return dsn, None
    parts = urlsplit(dsn)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = [v for k, v in params if k == "schema"]
    if not schema:
        return dsn, None
    rest = urlencode([(k, v) for k, v in params if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema[-1]


def _lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key from a name (collisions only make unrelated writers take turns)."""
    digest = hashlib.sha256("\x1f".join(("personalens", *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _import_psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError as exc:
        raise BackendUnavailable(f"the PostgreSQL persona store needs psycopg 3: {INSTALL_HINT}") from exc
    return psycopg


def _check_no_nul(value: str | None, what: str) -> None:
    if value is not None and "\x00" in value:
        raise StoreError(f"{what} contains a NUL character, which PostgreSQL cannot store")


# ---------------------------------------------------------------- the store

_SET_COLUMNS = (
    "s.id, s.user_id, s.version, s.parent_version, s.creator, s.method, s.config_hash, s.config, "
    "s.embedder_id, s.dim, s.created_at, s.note"
)
_PERSONA_COLUMNS = (
    "p.set_id, p.cluster, p.text, p.centroid, p.embedding, p.selected_item_ids, p.cluster_size, p.budget, p.meta"
)
assert len(_SET_COLUMNS.split(",")) == _N_SET_COLUMNS


class PostgresPersonaStore:
    """PostgreSQL implementation of :class:`~personalens.store.PersonaStoreProtocol`.

    ``dsn`` is a libpq connection string (``postgresql://user@host:5432/db`` or ``host=... dbname=...``); a
    ``?schema=NAME`` URL parameter or ``schema=`` picks the schema (default ``personalens``; created if missing).
    ``timeout`` is how long a write waits for another writer of the same user (or a migration) before failing with
    :class:`StoreError`; ``connect_timeout`` bounds connecting (unless the DSN sets its own).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise StoreError(f"a PostgreSQL DSN must be a non-empty string, got {dsn!r}")
        self._pg = _import_psycopg()
        conninfo, url_schema = _split_schema(dsn)
        self.schema = schema or url_schema or DEFAULT_SCHEMA
        if not _SCHEMA_NAME.match(self.schema):
            raise StoreError(f"schema name must be a plain SQL identifier (letters, digits, _), got {self.schema!r}")
        self.dsn = redact_dsn(dsn)  # never keep the password where it may be printed
        self._conninfo = conninfo
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self._lock = threading.RLock()
        self._closed = False
        self._db: psycopg.Connection[Any] | None = None
        self._db = self._connect()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    @property
    def _where(self) -> str:
        return f"{self.dsn} (schema {self.schema})"

    # -- connection set-up

    def _connect(self) -> psycopg.Connection[Any]:
        pg = self._pg
        try:
            given = pg.conninfo.conninfo_to_dict(self._conninfo)
        except pg.Error as exc:
            raise StoreError(f"{self.dsn}: not a valid PostgreSQL DSN: {exc}") from exc
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(1, round(self.connect_timeout))
        if "application_name" not in given:
            extra["application_name"] = "personalens"
        try:
            conn = pg.connect(self._conninfo, autocommit=True, **extra)
        except pg.Error as exc:
            raise StoreError(f"{self.dsn}: cannot connect to the persona store: {exc}") from exc
        try:
            with conn.cursor() as cur:
                cur.execute(
                    pg.sql.SQL("SET search_path TO {}").format(pg.sql.Identifier(self.schema))  # pg_catalog stays first
                )
                cur.execute(pg.sql.SQL("SET lock_timeout = {}").format(pg.sql.Literal(f"{int(self.timeout * 1000)}ms")))
                cur.execute("SET TIME ZONE 'UTC'")
        except pg.Error as exc:
            conn.close()
            raise StoreError(f"{self._where}: cannot configure the connection: {exc}") from exc
        return conn

    def _conn(self) -> psycopg.Connection[Any]:
        if self._closed or self._db is None:
            raise StoreError("the persona store is closed")
        if self._db.broken:  # the server went away between calls: nothing was in flight, so re-open
            self._db.close()
            self._db = self._connect()
        return self._db

    # -- migrations

    def _found_version(self, cur: Cursor) -> int | None:
        """The schema's version, or ``None`` when it has no ``schema_migrations`` table."""
        cur.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'schema_migrations'",
            (self.schema,),
        )
        if cur.fetchone() is None:
            return None
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def _refuse_newer(self, found: int, known: int) -> None:
        raise StoreError(
            f"{self._where}: persona store schema version {found} is newer than this code supports ({known}); "
            "upgrade personalens to open it"
        )

    def _migrate(self) -> None:
        known = schema_version()
        with self._read() as cur:
            found = self._found_version(cur)
        if found is not None and found > known:
            self._refuse_newer(found, known)
        if found == known:
            return
        with self._write() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("migrate", self.schema),))
            found = self._found_version(cur)  # another process may have migrated while we waited for the lock
            if found is not None and found > known:
                self._refuse_newer(found, known)
            if found is None:
                cur.execute(
                    "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s ORDER BY tablename",
                    (self.schema,),
                )
                tables = [r[0] for r in cur.fetchall()]
                if tables:
                    raise StoreError(
                        f"{self._where}: not a persona store (the schema holds tables {tables} but no "
                        "schema_migrations table)"
                    )
                sql = self._pg.sql
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                cur.execute(
                    """
                    CREATE TABLE schema_migrations (
                        version INTEGER PRIMARY KEY CHECK (version >= 1),
                        name TEXT NOT NULL,
                        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                    )
                    """
                )
                found = 0
            for step in range(found, known):
                migration = MIGRATIONS[step]
                migration(cur)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (step + 1, migration.__name__.lstrip("_")),
                )

    @property
    def schema_version(self) -> int:
        with self._read() as cur:
            return self._found_version(cur) or 0

    # -- transactions

    def _begin(self, statement: str) -> tuple[psycopg.Connection[Any], Cursor]:
        conn = self._conn()
        try:
            cur = conn.cursor()
            cur.execute(statement)
            return conn, cur
        except self._pg.OperationalError:
            if not conn.broken:
                raise
        # The connection died before this transaction did anything (server restart, idle timeout): retry once.
        conn = self._conn()
        cur = conn.cursor()
        cur.execute(statement)
        return conn, cur

    def _end(self, conn: psycopg.Connection[Any], statement: str) -> None:
        if conn.broken or conn.closed:
            return
        if conn.info.transaction_status != self._pg.pq.TransactionStatus.IDLE:
            conn.execute(statement)

    @contextmanager
    def _write(self, *user_ids: str) -> Iterator[Cursor]:
        """One READ COMMITTED transaction holding the advisory lock of each user it writes (taken up front, in a
        fixed order), so no other writer of those users interleaves. psycopg errors roll back and become
        :class:`StoreError`; other exceptions roll back and propagate."""
        pg = self._pg
        with self._lock:
            try:
                conn, cur = self._begin("BEGIN ISOLATION LEVEL READ COMMITTED")
            except pg.Error as exc:
                raise StoreError(f"{self._where}: could not start a write: {exc}") from exc
            try:
                for user_id in sorted(set(user_ids)):
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("user", self.schema, user_id),))
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._end(conn, "ROLLBACK")
                except pg.Error:
                    pass  # the connection is gone; the server rolls back on its own
                if isinstance(exc, pg.errors.LockNotAvailable):
                    raise StoreError(
                        f"{self._where}: could not get the write lock within {self.timeout}s: {exc}"
                    ) from exc
                if isinstance(exc, pg.Error):
                    raise StoreError(f"{self._where}: write failed and was rolled back: {exc}") from exc
                raise
            finally:
                cur.close()

    @contextmanager
    def _read(self) -> Iterator[Cursor]:
        """A read-only snapshot (REPEATABLE READ), so multi-statement reads see one state of the store."""
        pg = self._pg
        with self._lock:
            try:
                conn, cur = self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except pg.Error as exc:
                raise StoreError(f"{self._where}: read failed: {exc}") from exc
            try:
                yield cur
            except pg.Error as exc:
                raise StoreError(f"{self._where}: read failed: {exc}") from exc
            finally:
                try:
                    self._end(conn, "COMMIT")
                except pg.Error:
                    pass
                cur.close()

    # -- loading helpers (caller holds a transaction)

    @staticmethod
    def _load(cur: Cursor, user_id: str, version: int) -> PersonaSet | None:
        cur.execute(
            f"SELECT {_SET_COLUMNS} FROM persona_sets s WHERE s.user_id = %s AND s.version = %s", (user_id, version)
        )
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(f"SELECT {_PERSONA_COLUMNS} FROM personas p WHERE p.set_id = %s ORDER BY p.position", (row[0],))
        return _set_from_rows(row, cur.fetchall())

    @staticmethod
    def _current_version(cur: Cursor, user_id: str) -> int | None:
        cur.execute("SELECT current_version FROM users WHERE user_id = %s", (user_id,))
        row = cur.fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _latest_version(cur: Cursor, user_id: str) -> int | None:
        cur.execute("SELECT MAX(version) FROM persona_sets WHERE user_id = %s", (user_id,))
        row = cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    @staticmethod
    def _version_arg(version: Any) -> int | None:
        """Versions are INTEGER columns: a number outside that range cannot exist (``None``), rather than an error."""
        v = int(version)
        return v if -(2**31) <= v < 2**31 else None

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
        for value, what in ((user_id, "user_id"), (creator, "creator"), (method, "method")):
            _check_no_nul(value, what)
        for value, what in ((config_hash, "config_hash"), (embedder_id, "embedder_id"), (note, "note")):
            _check_no_nul(value, what)
        for row in rows:
            _check_no_nul(row[2], f"persona for cluster {row[1]}: text")
        now = time.time()
        with self._write(user_id) as cur:
            current = self._current_version(cur, user_id)
            latest = self._latest_version(cur, user_id)
            version = (latest or 0) + 1
            if parent_version == "current":
                parent = current
            elif parent_version is not None:
                parent = int(parent_version)
                if parent >= version:
                    raise StoreError(f"user {user_id!r} has no version {parent} to be a parent (latest: {latest})")
            else:
                parent = None
            if current is None:
                cur.execute(
                    "INSERT INTO users (user_id, current_version, updated_at) VALUES (%s, %s, %s)",
                    (user_id, version, now),
                )
            cur.execute(
                "INSERT INTO persona_sets (user_id, version, parent_version, creator, method, config_hash, config, "
                "embedder_id, dim, created_at, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (user_id, version, parent, creator, method, config_hash, config_json, embedder_id, dim, now, note),
            )
            inserted = cur.fetchone()
            assert inserted is not None
            set_id = inserted[0]
            cur.executemany(
                "INSERT INTO personas (set_id, position, cluster, text, centroid, embedding, selected_item_ids, "
                "cluster_size, budget, meta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(set_id, *row) for row in rows],
            )
            if current is not None and make_current:
                self._set_current(cur, user_id, version, now)
            saved = self._load(cur, user_id, version)
        assert saved is not None
        return saved

    @staticmethod
    def _set_current(cur: Cursor, user_id: str, version: int, now: float) -> None:
        cur.execute(
            "UPDATE users SET current_version = %s, updated_at = %s WHERE user_id = %s", (version, now, user_id)
        )

    def set_current(self, user_id: str, version: int) -> None:
        """Point ``current`` at an existing version (no new version is written; see :meth:`rollback` for that)."""
        v = self._version_arg(version)
        with self._write(user_id) as cur:
            found = None
            if v is not None:
                cur.execute("SELECT 1 FROM persona_sets WHERE user_id = %s AND version = %s", (user_id, v))
                found = cur.fetchone()
            if found is None:
                raise StoreError(f"user {user_id!r} has no version {version}")
            self._set_current(cur, user_id, int(version), time.time())

    def current(self, user_id: str) -> PersonaSet | None:
        with self._read() as cur:
            version = self._current_version(cur, user_id)
            return None if version is None else self._load(cur, user_id, version)

    def get(self, user_id: str, version: int) -> PersonaSet | None:
        v = self._version_arg(version)
        if v is None:
            return None
        with self._read() as cur:
            return self._load(cur, user_id, v)

    def versions(self, user_id: str) -> list[VersionInfo]:
        """The user's whole history, oldest first ([] for an unknown user)."""
        with self._read() as cur:
            cur.execute(
                "SELECT s.version, s.parent_version, s.creator, s.method, s.config_hash, s.created_at, "
                "(SELECT COUNT(*) FROM personas p WHERE p.set_id = s.id), s.version = u.current_version, s.note "
                "FROM persona_sets s JOIN users u ON u.user_id = s.user_id WHERE s.user_id = %s ORDER BY s.version",
                (user_id,),
            )
            rows = cur.fetchall()
        return [
            VersionInfo(
                version=int(v),
                parent_version=None if parent is None else int(parent),
                creator=creator,
                method=method,
                config_hash=chash,
                created_at=float(created),
                n_personas=int(n),
                is_current=bool(cur_flag),
                note=note,
            )
            for v, parent, creator, method, chash, created, n, cur_flag, note in rows
        ]

    def users(self, *, limit: int | None = None, offset: int = 0) -> list[str]:
        """User ids with at least one version, sorted (bytewise, as in SQLite)."""
        with self._read() as cur:
            cur.execute(
                "SELECT user_id FROM users ORDER BY user_id LIMIT %s OFFSET %s",
                (None if limit is None or int(limit) < 0 else int(limit), max(0, int(offset))),
            )
            return [r[0] for r in cur.fetchall()]

    def count_users(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM users")
            row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def find(self, user_id: str, config_hash: str) -> PersonaSet | None:
        """The newest version of ``user_id`` built with exactly ``config_hash``, or ``None``."""
        with self._read() as cur:
            cur.execute(
                "SELECT MAX(version) FROM persona_sets WHERE user_id = %s AND config_hash = %s", (user_id, config_hash)
            )
            row = cur.fetchone()
            return None if row is None or row[0] is None else self._load(cur, user_id, int(row[0]))

    def iter_current(self, *, batch_size: int = 512) -> Iterator[PersonaSet]:
        """Every user's current set, in user-id order, fetched ``batch_size`` users per query.

        Each page is its own short read, so the store stays usable (even from the consuming thread) while iterating;
        a user re-saved meanwhile is seen in either its old or its new version, never half of each.
        """
        after = ""  # user ids are non-empty, so every one sorts after ""
        while True:
            with self._read() as cur:
                cur.execute(
                    "WITH page AS (SELECT user_id, current_version FROM users "
                    "WHERE user_id > %s ORDER BY user_id LIMIT %s) "
                    f"SELECT {_SET_COLUMNS}, {_PERSONA_COLUMNS} FROM page "
                    "JOIN persona_sets s ON s.user_id = page.user_id AND s.version = page.current_version "
                    "JOIN personas p ON p.set_id = s.id ORDER BY s.user_id, p.position",
                    (after, int(batch_size)),
                )
                rows = cur.fetchall()
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
        old, new = self.get(user_id, v1), self.get(user_id, v2)  # versions are immutable: two reads are consistent
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
        _check_no_nul(creator, "creator")
        note = f"rollback to v{version}" if note is None else note
        _check_no_nul(note, "note")
        v = self._version_arg(version)
        now = time.time()
        with self._write(user_id) as cur:
            src = None
            if v is not None:
                cur.execute("SELECT id FROM persona_sets WHERE user_id = %s AND version = %s", (user_id, v))
                src = cur.fetchone()
            if src is None:
                raise StoreError(f"user {user_id!r} has no version {version} to roll back to")
            latest = self._latest_version(cur, user_id)
            assert latest is not None
            new_version = latest + 1
            cur.execute(
                "INSERT INTO persona_sets (user_id, version, parent_version, creator, method, config_hash, config, "
                "embedder_id, dim, created_at, note) SELECT user_id, %s, version, %s, method, config_hash, config, "
                "embedder_id, dim, %s, %s FROM persona_sets WHERE id = %s RETURNING id",
                (new_version, creator, now, note, src[0]),
            )
            inserted = cur.fetchone()
            assert inserted is not None
            cur.execute(
                "INSERT INTO personas (set_id, position, cluster, text, centroid, embedding, selected_item_ids, "
                "cluster_size, budget, meta) SELECT %s, position, cluster, text, centroid, embedding, "
                "selected_item_ids, cluster_size, budget, meta FROM personas WHERE set_id = %s",
                (inserted[0], src[0]),
            )
            self._set_current(cur, user_id, new_version, now)
            saved = self._load(cur, user_id, new_version)
        assert saved is not None
        return saved

    def delete_user(self, user_id: str) -> int:
        """Remove the user, every version, every persona, every build-status row and every episodic memory, in one
        transaction (a user with memories but no personas is deleted too).

        Returns the number of rows removed: personas + persona sets + build-status rows + the user row + memories
        (0 for an unknown user).
        """
        with self._write(user_id) as cur:
            cur.execute(
                "SELECT (SELECT COUNT(*) FROM personas WHERE set_id IN "
                "(SELECT id FROM persona_sets WHERE user_id = %s)), "
                "(SELECT COUNT(*) FROM persona_sets WHERE user_id = %s)",
                (user_id, user_id),
            )
            counts = cur.fetchone()
            assert counts is not None
            cur.execute("DELETE FROM build_status WHERE user_id = %s", (user_id,))
            n_status = cur.rowcount
            cur.execute("DELETE FROM memories WHERE user_id = %s", (user_id,))
            n_memories = cur.rowcount
            cur.execute("DELETE FROM users WHERE user_id = %s", (user_id,))  # cascades to the rest
            n_users = cur.rowcount
            cur.execute("SELECT COUNT(*) FROM persona_sets WHERE user_id = %s", (user_id,))
            left = cur.fetchone()
            if left is not None and left[0]:
                raise StoreError(f"delete of user {user_id!r} left {left[0]} persona sets behind")
        return int(counts[0] + counts[1] + n_status + n_users + n_memories)

    # -- episodic memory

    def add_memories(self, user_id: str, records: Sequence[MemoryRecord]) -> int:
        """Add episodic memories for ``user_id`` (who needs no persona set), atomically: all or nothing.

        Every record is validated before the transaction starts. A record whose ``memory_id`` the user already has
        with identical content is skipped (so re-adding a batch is a no-op, also when several writers add it at
        once: they queue on the user's advisory lock); the same id with different content, in the store or earlier
        in the call, is refused, as is an embedding whose dimension differs from the user's other memory
        embeddings. Returns how many records were newly inserted.
        """
        rows = prepare_memories(user_id, records)
        if not rows:
            return 0
        now = time.time()
        with self._write(user_id) as cur:
            cur.execute(
                f"SELECT {MEMORY_INSERT_COLUMNS} FROM memories WHERE user_id = %s AND memory_id = ANY(%s)",
                (user_id, [r.memory_id for r in rows]),
            )
            stored: dict[str, MemoryRow] = {found[0]: stored_memory_row(found) for found in cur.fetchall()}
            cur.execute("SELECT dim FROM memories WHERE user_id = %s AND dim IS NOT NULL LIMIT 1", (user_id,))
            dim = cur.fetchone()
            new = plan_memory_insert(user_id, rows, stored, None if dim is None else int(dim[0]))
            if new:
                cur.executemany(
                    f"INSERT INTO memories (user_id, {MEMORY_INSERT_COLUMNS}, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
        where = "user_id = %s"
        params: list[Any] = [user_id]
        if cutoff is not None:
            where += " AND ts < %s"
            params.append(cutoff)
        with self._read() as cur:
            cur.execute(
                f"SELECT {MEMORY_COLUMNS} FROM memories WHERE {where} "
                f"ORDER BY {MEMORY_ORDER[bool(newest_first)]} LIMIT %s",
                (*params, n),
            )
            rows = cur.fetchall()
        return [memory_from_row(r, user_id) for r in rows]

    def count_memories(self, user_id: str) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM memories WHERE user_id = %s", (user_id,))
            row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def memory_users(self) -> list[str]:
        """User ids with at least one memory, sorted bytewise (whether or not they have personas)."""
        with self._read() as cur:
            cur.execute("SELECT DISTINCT user_id FROM memories ORDER BY user_id")
            return [r[0] for r in cur.fetchall()]

    def delete_memories(self, user_id: str, memory_ids: Sequence[str] | None = None) -> int:
        """Delete the user's memories with these ids (ids the user does not have are ignored), or all of them when
        ``memory_ids`` is None. Returns how many were deleted."""
        ids = None if memory_ids is None else check_memory_ids(memory_ids)
        if ids is not None:
            ids = [mid for mid in ids if "\x00" not in mid]  # could never have been stored (nor can be sent)
            if not ids:
                return 0
        with self._write(user_id) as cur:
            if ids is None:
                cur.execute("DELETE FROM memories WHERE user_id = %s", (user_id,))
            else:
                cur.execute("DELETE FROM memories WHERE user_id = %s AND memory_id = ANY(%s)", (user_id, ids))
            return int(cur.rowcount)

    # -- build bookkeeping

    def start_run(self, run_id: str, config_hash: str, config: dict[str, Any]) -> RunInfo:
        """Register a build run, or resume it: starting an existing run with the same config hash is a no-op,
        with a different one an error (a resumed build must not mix configurations)."""
        check_text(run_id, "run_id")
        check_text(config_hash, "config_hash")
        if not isinstance(config, dict):
            raise StoreError(f"config must be a dict, got {type(config).__name__}")
        config_json = canonical_json(config, what="config")
        _check_no_nul(run_id, "run_id")
        _check_no_nul(config_hash, "config_hash")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO build_runs (run_id, config_hash, config, started_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (run_id) DO NOTHING",
                (run_id, config_hash, config_json, time.time()),
            )
            cur.execute("SELECT config_hash FROM build_runs WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
            assert row is not None
            if row[0] != config_hash:
                raise StoreError(
                    f"build run {run_id!r} was started with config {row[0]}, cannot resume it with {config_hash}"
                )
        info = self.run_info(run_id)
        assert info is not None
        return info

    def run_info(self, run_id: str) -> RunInfo | None:
        with self._read() as cur:
            cur.execute("SELECT config_hash, config, started_at FROM build_runs WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
            if row is None:
                return None
            counts = dict.fromkeys(BUILD_STATUSES, 0)
            cur.execute("SELECT status, COUNT(*) FROM build_status WHERE run_id = %s GROUP BY status", (run_id,))
            for status, n in cur.fetchall():
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
        _check_no_nul(user_id, "user_id")
        error = None if error is None else error.replace("\x00", "\\x00")  # an error message is only ever read
        with self._write(user_id) as cur:  # the user's lock: a concurrent delete_user cannot leave this row behind
            cur.execute("SELECT 1 FROM build_runs WHERE run_id = %s", (run_id,))
            if cur.fetchone() is None:
                raise StoreError(f"unknown build run {run_id!r} (call start_run first)")
            cur.execute(
                "INSERT INTO build_status (run_id, user_id, status, error, usage, attempts, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, user_id) DO UPDATE SET "
                "status = excluded.status, error = excluded.error, usage = excluded.usage, "
                "attempts = build_status.attempts + excluded.attempts, updated_at = excluded.updated_at",
                (run_id, user_id, status, error, usage_json, int(status != "pending"), time.time()),
            )

    def build_status(self, run_id: str) -> dict[str, str]:
        """``{user_id: status}`` for every user marked in the run."""
        with self._read() as cur:
            cur.execute("SELECT 1 FROM build_runs WHERE run_id = %s", (run_id,))
            if cur.fetchone() is None:
                raise StoreError(f"unknown build run {run_id!r}")
            cur.execute("SELECT user_id, status FROM build_status WHERE run_id = %s ORDER BY user_id", (run_id,))
            return {user: status for user, status in cur.fetchall()}

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> PostgresPersonaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresPersonaStore({self.dsn!r}, schema={self.schema!r})"
