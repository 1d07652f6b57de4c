"""Fixtures for the persona-store contract tests: ``store_factory`` runs a test once per backend (SQLite, PostgreSQL).

The PostgreSQL backend needs the server binaries (Debian: ``apt-get install postgresql``, found under
``/usr/lib/postgresql/*/bin``) and psycopg (``pip install -e '.[postgres]'``). The session starts its own throwaway
server and removes it at the end; no system service is used. Without the binaries or psycopg the postgres tests are
skipped locally, but FAIL when ``CI=true``, so CI cannot pass without exercising PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from _store_backends import PG_BIN_GLOB, PostgresBackend, PostgresServer, SQLiteBackend, find_pg_bindir


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL store tests must run in CI)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on 127.0.0.1 for the whole session (initdb + pg_ctl in a temporary directory)."""
    bindir = find_pg_bindir()
    if bindir is None:
        _unavailable(f"PostgreSQL server binaries not found ({PG_BIN_GLOB}/initdb): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed: pip install -e '.[postgres]'")
    assert bindir is not None
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path) -> Iterator[Any]:
    """An empty persona store location for one test: ``.open()`` opens a store on it (as often as a test likes),
    ``.query()``/``.execute()`` run raw SQL on it (``?`` placeholders), ``.spec`` reopens it in another process."""
    backend: Any
    if request.param == "sqlite":
        backend = SQLiteBackend(tmp_path / "personas.sqlite")
    else:
        backend = PostgresBackend(request.getfixturevalue("postgres_server"))
    yield backend
    backend.cleanup()
