"""One tenant's service data next to its persona store: the behaviour log and the job records (SQLite, WAL).

Behaviours are appended in one transaction per request; a behaviour with a client-supplied ``event_id`` is stored at
most once per user (``UNIQUE (user_id, event_id)``), so a retried request adds nothing twice. Jobs keep their status,
progress, usage and (in ``job_users``) each user's outcome; opening the file marks jobs left ``queued`` or
``running`` by a previous process as ``interrupted``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalens.errors import StoreError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x504C5356  # "PLSV"

_SCHEMA = """
CREATE TABLE behaviours (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    event_id TEXT,
    item_id TEXT NOT NULL,
    title TEXT NOT NULL,
    fields TEXT NOT NULL,
    text TEXT,
    rating REAL,
    label INTEGER,
    timestamp REAL,
    received_at REAL NOT NULL,
    UNIQUE (user_id, event_id)
);
CREATE INDEX behaviours_by_user ON behaviours (user_id, seq);
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT NOT NULL,
    usage TEXT,
    seconds REAL,
    error TEXT,
    summary TEXT
);
CREATE TABLE job_users (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (job_id, user_id)
);
CREATE INDEX job_users_by_user ON job_users (user_id);
"""

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class BehaviourRow:
    user_id: str
    event_id: str | None
    item_id: str
    title: str
    fields: dict[str, str]
    text: str | None
    rating: float | None
    label: bool | None
    timestamp: float | None


class TenantDB:
    """The behaviour log and job records of one tenant. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            db = self._db
            db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            with self._write() as w:
                version = int(w.execute("PRAGMA user_version").fetchone()[0])
                if version == 0:
                    if w.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
                        raise StoreError(f"{self.path}: not a service database (unversioned, with tables)")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            w.execute(statement)
                    w.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version > SCHEMA_VERSION:
                    raise StoreError(f"{self.path}: service database schema {version} is newer than this code")
                elif int(w.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID:
                    raise StoreError(f"{self.path}: not a service database")
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise StoreError(f"{self.path}: cannot open the service database: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- transactions

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the service database is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                if db.in_transaction:
                    db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: write failed and was rolled back: {exc}") from exc
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from exc

    # -- behaviours

    def append_behaviours(self, user_id: str, rows: Sequence[BehaviourRow]) -> tuple[int, int]:
        """Append ``rows`` for ``user_id`` atomically; returns ``(added, duplicates)`` (duplicates: rows whose
        ``event_id`` is already stored for the user, or repeated within the request)."""
        now = time.time()
        added = 0
        with self._write() as db:
            for r in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO behaviours (user_id, event_id, item_id, title, fields, text, rating, label, "
                    "timestamp, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        user_id,
                        r.event_id,
                        r.item_id,
                        r.title,
                        json.dumps(r.fields, sort_keys=True, ensure_ascii=False),
                        r.text,
                        r.rating,
                        None if r.label is None else int(r.label),
                        r.timestamp,
                        now,
                    ),
                )
                added += cur.rowcount
        return added, len(rows) - added

    def behaviours(self, user_id: str) -> list[BehaviourRow]:
        """The user's behaviours in ingestion order."""
        rows = self._read(
            "SELECT user_id, event_id, item_id, title, fields, text, rating, label, timestamp FROM behaviours "
            "WHERE user_id = ? ORDER BY seq",
            (user_id,),
        )
        return [
            BehaviourRow(u, e, i, t, json.loads(f), x, r, None if lab is None else bool(lab), ts)
            for u, e, i, t, f, x, r, lab, ts in rows
        ]

    def count_behaviours(self, user_id: str) -> int:
        return int(self._read("SELECT COUNT(*) FROM behaviours WHERE user_id = ?", (user_id,))[0][0])

    def user_behaviour_counts(self) -> list[tuple[str, int]]:
        """Every user with ingested behaviours and how many, sorted by user id."""
        rows = self._read("SELECT user_id, COUNT(*) FROM behaviours GROUP BY user_id ORDER BY user_id")
        return [(str(u), int(n)) for u, n in rows]

    # -- jobs

    def create_job(self, job_id: str, kind: str, options: dict[str, Any], user_ids: Sequence[str]) -> None:
        progress = {"users": len(user_ids), "finished": 0, "failed": 0}
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (job_id, kind, status, options, created_at, progress) "
                "VALUES (?, ?, 'queued', ?, ?, ?)",
                (job_id, kind, json.dumps(options, sort_keys=True), time.time(), json.dumps(progress)),
            )
            db.executemany(
                "INSERT INTO job_users (job_id, position, user_id, status) VALUES (?, ?, ?, 'queued')",
                [(job_id, i, u) for i, u in enumerate(user_ids)],
            )

    def update_job(self, job_id: str, **values: Any) -> None:
        allowed = {"status", "started_at", "finished_at", "progress", "usage", "seconds", "error", "summary"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        encoded = {
            k: json.dumps(v) if k in ("progress", "usage", "summary") and v is not None else v
            for k, v in values.items()
        }
        sets = ", ".join(f"{k} = ?" for k in encoded)
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*encoded.values(), job_id))

    def mark_job_user(self, job_id: str, user_id: str, status: str, error: str | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE job_users SET status = ?, error = ? WHERE job_id = ? AND user_id = ?",
                (status, error, job_id, user_id),
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read(
            "SELECT job_id, kind, status, options, created_at, started_at, finished_at, progress, usage, seconds, "
            "error, summary FROM jobs WHERE job_id = ?",
            (job_id,),
        )
        if not rows:
            return None
        jid, kind, status, options, created, started, finished, progress, usage, seconds, error, summary = rows[0]
        users = self._read("SELECT user_id, status, error FROM job_users WHERE job_id = ? ORDER BY position", (job_id,))
        return {
            "id": jid,
            "kind": kind,
            "status": status,
            "options": json.loads(options),
            "created_at": created,
            "started_at": started,
            "finished_at": finished,
            "progress": json.loads(progress),
            "usage": None if usage is None else json.loads(usage),
            "seconds": seconds,
            "error": error,
            "summary": None if summary is None else json.loads(summary),
            "users": [{"user": u, "status": s, "error": e} for u, s, e in users],
        }

    def jobs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        ids = self._read("SELECT job_id FROM jobs ORDER BY created_at DESC, job_id LIMIT ?", (int(limit),))
        out = []
        for (job_id,) in ids:
            job = self.job(job_id)
            if job is not None:
                out.append(job)
        return out

    def interrupt_active_jobs(self) -> int:
        """Jobs a previous process left queued or running can never finish: mark them ``interrupted``."""
        with self._write() as db:
            return int(
                db.execute(
                    "UPDATE jobs SET status = 'interrupted', finished_at = ?, "
                    "error = COALESCE(error, 'the service stopped before the job finished') "
                    "WHERE status IN ('queued', 'running')",
                    (time.time(),),
                ).rowcount
            )

    # -- users

    def has_user(self, user_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM behaviours WHERE user_id = ? LIMIT 1", (user_id,))) or bool(
            self._read("SELECT 1 FROM job_users WHERE user_id = ? LIMIT 1", (user_id,))
        )

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Remove the user's behaviours and per-user job records, in one transaction."""
        with self._write() as db:
            behaviours = db.execute("DELETE FROM behaviours WHERE user_id = ?", (user_id,)).rowcount
            job_records = db.execute("DELETE FROM job_users WHERE user_id = ?", (user_id,)).rowcount
        return {"behaviours": int(behaviours), "job_records": int(job_records)}

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_db", None) is not None:
                assert self._db is not None
                self._db.close()
                self._db = None
