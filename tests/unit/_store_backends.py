"""Persona-store backends for the contract tests: a SQLite file, or a schema on a throwaway PostgreSQL server that
:class:`PostgresServer` starts itself (initdb into a temporary directory, ``pg_ctl start`` on a free loopback port).

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the unprivileged ``postgres``
user (Debian's package creates it; ``nobody`` otherwise) through ``runuser``, in a directory owned by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from personalens.store import PersonaStore

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb, pg_ctl and postgres, else ``None``."""

    def major(path: str) -> float:
        found = re.search(r"/postgresql/([0-9.]+)/bin$", path)
        return float(found.group(1)) if found else 0.0

    for bindir in sorted(glob.glob(PG_BIN_GLOB), key=major, reverse=True):
        if all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(bindir)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A private PostgreSQL cluster for one test session: trust auth, loopback only, fsync off."""

    USER = "personalens"  # the cluster's superuser role (not an OS user)

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.os_user = self._unprivileged_user() if self.as_root else None
        self.dir = Path(tempfile.mkdtemp(prefix="personalens-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self.started = False
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    @staticmethod
    def _unprivileged_user() -> str:
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise RuntimeError("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self.os_user is not None:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        result = subprocess.run(
            cmd, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}".rstrip()
            )
        return result

    def start(self) -> None:
        self._run(
            self.bindir / "initdb", "-D", str(self.data), "-U", self.USER, "-A", "trust", "-E", "UTF8",
            "--locale=C", "-N",
        )  # fmt: skip
        last: Exception | None = None
        for _ in range(5):  # the free port may be taken between picking and binding it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(self.bindir / "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "-o", options, "start")  # fmt: skip
                self.started = True
                return
            except RuntimeError as exc:
                last = exc
                if (self.data / "postmaster.pid").exists():
                    self.stop()
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(self.bindir / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        self.started = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_connect(dsn: str, schema: str | None = None) -> Any:
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    if schema is not None:
        conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
    return conn


def open_from_spec(spec: tuple[str, str, str | None], **kwargs: Any) -> Any:
    """Open a store from a picklable ``(kind, location, schema)`` (for worker processes)."""
    kind, location, schema = spec
    if kind == "sqlite":
        return PersonaStore(location, **kwargs)
    from personalens.store.postgres import PostgresPersonaStore

    return PostgresPersonaStore(location, schema=schema, **kwargs)


class SQLiteBackend:
    """A fresh SQLite file per test."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec = ("sqlite", str(path), None)

    def open(self, **kwargs: Any) -> PersonaStore:
        return PersonaStore(self.path, **kwargs)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(sql, params)
        finally:
            db.close()

    def inject_failure(self, cluster: int) -> None:
        """Make inserting the persona of ``cluster`` fail inside the database."""
        self.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON personas WHEN NEW.cluster = {int(cluster)} "
            "BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )

    def remove_failure(self) -> None:
        self.execute("DROP TRIGGER boom")

    @staticmethod
    def in_transaction(store: Any) -> bool:
        return bool(store._conn().in_transaction)

    def cleanup(self) -> None:
        pass


class PostgresBackend:
    """A fresh schema per test on the session's throwaway server (created by the first store opened on it)."""

    name = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.dsn = server.dsn
        self.schema = f"t_{uuid.uuid4().hex[:16]}"
        self.spec = ("postgres", self.dsn, self.schema)

    @property
    def url(self) -> str:
        return f"{self.dsn}?schema={self.schema}"

    def open(self, **kwargs: Any) -> Any:
        from personalens.store.postgres import PostgresPersonaStore

        return PostgresPersonaStore(self.dsn, schema=self.schema, **kwargs)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with _pg_connect(self.dsn, self.schema) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with _pg_connect(self.dsn, self.schema) as conn:
            conn.execute(sql.replace("?", "%s"), params)

    def inject_failure(self, cluster: int) -> None:
        self.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$"
        )
        self.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON personas FOR EACH ROW WHEN (NEW.cluster = {int(cluster)}) "
            "EXECUTE FUNCTION boom()"
        )

    def remove_failure(self) -> None:
        self.execute("DROP TRIGGER boom ON personas")
        self.execute("DROP FUNCTION boom()")

    @staticmethod
    def in_transaction(store: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return store._conn().info.transaction_status != TransactionStatus.IDLE

    def cleanup(self) -> None:
        import psycopg

        with _pg_connect(self.dsn) as conn:
            drop = psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(self.schema))
            conn.execute(drop)
