"""What only the PostgreSQL store has: schema migrations under an advisory lock, the lock timeout, DSNs and schemas,
reconnection, the lazy psycopg import, and opening it from the settings and the CLI by URL. The behaviour shared with
SQLite is tested once for both backends in test_store.py and test_store_concurrency.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from _store_backends import PostgresBackend, _free_port, _pg_connect
from typer.testing import CliRunner

from personalens.errors import BackendUnavailable, StoreError
from personalens.factory import build_store
from personalens.settings import load_settings
from personalens.store import Persona, PersonaStore
from personalens.store import postgres as store_postgres
from personalens.store.postgres import PostgresPersonaStore, is_postgres_url, redact_dsn


@pytest.fixture
def pg(postgres_server):
    backend = PostgresBackend(postgres_server)
    yield backend
    backend.cleanup()


def save(store, user: str, n: int = 2, **kw):
    kw.setdefault("config", {"n": n})
    personas = [Persona(cluster=c, text=f"{user} {c}", centroid=np.full(4, c + 1, np.float32)) for c in range(n)]
    return store.save(user, personas, creator="t", method="m", config_hash="h", embedder_id="e", **kw)


#: The migrations this code ships, as recorded in ``schema_migrations``.
SHIPPED = [(1, "migrate_v1"), (2, "migrate_v2")]


def migrations(pg) -> list[tuple[int, str]]:
    return pg.query("SELECT version, name FROM schema_migrations ORDER BY version")


def tables(pg) -> list[str]:
    rows = pg.query("SELECT tablename FROM pg_tables WHERE schemaname = ? ORDER BY 1", (pg.schema,))
    return [r[0] for r in rows]


# ---------------------------------------------------------------- migrations


def test_fresh_schema_is_created_at_the_latest_version(pg):
    with pg.open() as store:
        assert store.schema_version == store_postgres.schema_version() == len(store_postgres.MIGRATIONS)
        save(store, "u1")
    assert migrations(pg) == SHIPPED
    expected = {"users", "persona_sets", "personas", "build_runs", "build_status", "memories", "schema_migrations"}
    assert expected <= set(tables(pg))
    with pg.open() as store:  # reopening changes nothing
        assert store.schema_version == store_postgres.schema_version() and store.current("u1").version == 1
    assert migrations(pg) == SHIPPED


def test_newer_schema_is_refused_and_left_untouched(pg):
    with pg.open() as store:
        save(store, "u1")
    pg.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')")
    before = [pg.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables(pg)]
    with pytest.raises(StoreError, match=r"schema version 99 is newer than this code supports \(\d+\)"):
        pg.open()
    assert [pg.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables(pg)] == before


def test_a_failing_migration_rolls_back_every_step(pg, monkeypatch):
    def broken(cur):
        cur.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_postgres, "MIGRATIONS", [*store_postgres.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        pg.open()  # a fresh schema: the shipped migrations and the broken one in one transaction, all rolled back
    assert pg.query("SELECT 1 FROM pg_namespace WHERE nspname = ?", (pg.schema,)) == []
    monkeypatch.undo()
    with pg.open() as store:
        save(store, "u1")
    monkeypatch.setattr(store_postgres, "MIGRATIONS", [*store_postgres.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        pg.open()  # an existing schema stays at its version, with its data
    assert migrations(pg) == SHIPPED and "half_done" not in tables(pg)
    monkeypatch.undo()
    with pg.open() as store:
        assert store.current("u1").version == 1


def test_a_new_migration_is_applied_once_when_many_connections_open_at_once(pg, monkeypatch):
    with pg.open() as store:
        save(store, "u1")
    calls: list[int] = []
    new_version = len(SHIPPED) + 1

    def _migrate_next(cur):
        calls.append(1)
        cur.execute("SELECT pg_sleep(0.2)")  # widen the window in which the other openers arrive
        cur.execute("ALTER TABLE persona_sets ADD COLUMN extra TEXT")

    _migrate_next.__name__ = f"_migrate_v{new_version}"
    monkeypatch.setattr(store_postgres, "MIGRATIONS", [*store_postgres.MIGRATIONS, _migrate_next])
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        try:
            start.wait()
            with pg.open() as store:  # each its own connection, i.e. its own server process
                assert store.schema_version == new_version and store.current("u1").version == 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(calls) == 1
    assert migrations(pg) == [*SHIPPED, (new_version, f"migrate_v{new_version}")]
    with pg.open() as store:
        assert save(store, "u1").version == 2


def test_a_schema_with_other_tables_is_refused(pg):
    import psycopg

    with _pg_connect(pg.dsn) as conn:
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(pg.schema)))
    pg.execute("CREATE TABLE notes (x INTEGER)")
    with pytest.raises(StoreError, match=r"not a persona store .*\['notes'\]"):
        pg.open()
    assert tables(pg) == ["notes"]


# ---------------------------------------------------------------- connections, locks, inputs


def test_a_writer_waiting_longer_than_the_timeout_fails_cleanly(pg):
    with pg.open(timeout=0.3) as store:
        save(store, "u1")
        import psycopg

        with psycopg.connect(pg.dsn) as other:  # another writer holds u1's lock in an open transaction
            other.execute("SELECT pg_advisory_xact_lock(%s)", (store_postgres._lock_key("user", pg.schema, "u1"),))
            with pytest.raises(StoreError, match="could not get the write lock"):
                save(store, "u1")
            assert save(store, "u2").version == 1  # other users are not blocked
        assert save(store, "u1").version == 2  # and u1 is writable again once the lock is released


def test_a_lost_connection_is_reopened_on_the_next_call(pg):
    with pg.open() as store:
        save(store, "u1")
        pid = store._conn().info.backend_pid
        with _pg_connect(pg.dsn) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert store.current("u1").version == 1
        assert store._conn().info.backend_pid != pid
        assert save(store, "u1").version == 2


def test_nul_characters_are_refused_before_writing(pg):
    with pg.open() as store:
        with pytest.raises(StoreError, match="user_id contains a NUL"):
            save(store, "a\x00b")
        personas = [Persona(cluster=0, text="x\x00y", centroid=np.ones(4, np.float32))]
        with pytest.raises(StoreError, match="cluster 0: text contains a NUL"):
            store.save("u1", personas, creator="t", method="m", config={}, config_hash="h", embedder_id="e")
        assert store.users() == []


def test_schema_from_the_url_and_bad_schema_names(pg):
    with PostgresPersonaStore(pg.url) as store:
        assert store.schema == pg.schema
        save(store, "u1")
    assert pg.query("SELECT user_id FROM users") == [("u1",)]
    for bad in ("1abc", "a-b", 'x"; DROP TABLE users; --', "a" * 64):
        with pytest.raises(StoreError, match="schema name"):
            PostgresPersonaStore(pg.dsn, schema=bad)


def test_dsn_helpers_and_unreachable_server():
    assert is_postgres_url("postgresql://u@h/db") and is_postgres_url("POSTGRES://h")
    assert not is_postgres_url("personas.sqlite") and not is_postgres_url("/tmp/postgresql://x")
    assert (
        redact_dsn("postgresql://app:s3cret@db:5432/p?sslmode=require")
        == "postgresql://app:***@db:5432/p?sslmode=require"
    )
    assert redact_dsn("postgresql://app@db/p") == "postgresql://app@db/p"
    assert "s3cret" not in redact_dsn("postgresql://db/p?password=s3cret&user=a")
    assert redact_dsn("host=db password='s 3' user=a") == "host=db password=*** user=a"
    port = _free_port()  # nothing listens there
    with pytest.raises(StoreError, match="cannot connect") as info:
        PostgresPersonaStore(f"postgresql://app:s3cret@127.0.0.1:{port}/p", connect_timeout=2)
    assert "s3cret" not in str(info.value)
    with pytest.raises(StoreError, match="DSN"):
        PostgresPersonaStore("")


def test_importing_personalens_does_not_need_psycopg():
    code = (
        "import sys\n"
        "import personalens, personalens.store, personalens.factory, personalens.cli\n"
        "from personalens.store import PostgresPersonaStore\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported eagerly'\n"
        "sys.modules['psycopg'] = None  # as if it were not installed\n"
        "from personalens.errors import BackendUnavailable\n"
        "try:\n"
        "    PostgresPersonaStore('postgresql://u@127.0.0.1/db')\n"
        "except BackendUnavailable as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install 'personalens[postgres]'" in result.stdout


def test_missing_psycopg_gives_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(BackendUnavailable, match=r"personalens\[postgres\]"):
        build_store(load_settings(env={}, overrides={"store": "postgresql://u@127.0.0.1/db"}))


# ---------------------------------------------------------------- settings, factory, CLI


def test_the_store_setting_picks_the_backend(pg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with build_store(load_settings(env={})) as store:  # default: personas.sqlite in the working directory
        assert isinstance(store, PersonaStore) and (tmp_path / "personas.sqlite").exists()
    with build_store(load_settings(env={}), tmp_path / "other.sqlite") as store:
        assert isinstance(store, PersonaStore)
    settings = load_settings(env={"PERSONALENS_STORE": pg.url})
    with build_store(settings) as store:
        assert isinstance(store, PostgresPersonaStore) and store.schema == pg.schema
        save(store, "u1")
    assert pg.query("SELECT COUNT(*) FROM persona_sets") == [(1,)]
    secret = load_settings(env={"PERSONALENS_STORE": "postgresql://app:s3cret@db/p"})
    assert secret.public()["store"] == "postgresql://app:***@db/p" and "s3cret" not in repr(secret)


def test_cli_reads_and_writes_a_postgres_store_by_url(pg, monkeypatch, tmp_path):
    from personalens.cli import app

    monkeypatch.chdir(tmp_path)
    with pg.open() as store:
        save(store, "u1", 2)
        save(store, "u1", 3)

    def cli(*args: str, env: dict[str, str] | None = None):
        result = CliRunner().invoke(app, ["--json", *args], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    listed = cli("personas", "u1", "--versions", "--store", pg.url)
    assert [v["version"] for v in listed] == [1, 2] and listed[1]["is_current"]
    assert cli("personas", "u1", "--diff", "1", "2", "--store", pg.url)["added"] == [2]
    assert cli("personas", "u1", "--rollback", "1", env={"PERSONALENS_STORE": pg.url})["version"] == 3
    assert cli("personas", "u1", env={"PERSONALENS_STORE": pg.url})["version"] == 3
    assert cli("personas", "u1", "--delete", "--store", pg.url)["deleted_rows"] == (2 + 3 + 2) + 3 + 1
    assert not (tmp_path / "personas.sqlite").exists()  # nothing went to the SQLite default
    shown = cli("config", env={"PERSONALENS_STORE": "postgresql://app:s3cret@db.internal/p"})
    assert shown["store"] == "postgresql://app:***@db.internal/p"
