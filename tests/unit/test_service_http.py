"""The service over real HTTP: uvicorn on 127.0.0.1 (a socket bound to a free port) in a thread, httpx as client;
and the PostgreSQL store with one schema per tenant."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from _service_helpers import auth, behaviours, build_user, make_app, make_keys, responder
from fastapi.testclient import TestClient

from personalens.embed.testing import HashEmbedder
from personalens.llm.testing import ScriptedChatModel
from personalens.service import ServiceConfig, create_app
from personalens.service.tenants import postgres_schema


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    keys = make_keys(tmp_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(tmp_path, max_body_bytes=4096), log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    stop = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > stop or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", keys
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


def test_real_server_session(server):
    base, keys = server
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        assert http.get("/v1/jobs").status_code == 401
        r = http.post("/v1/users/alice/behaviours", json={"behaviours": behaviours()[:10]}, headers=auth(keys["acme"]))
        assert r.status_code == 200 and r.json()["added"] == 10
        big = {"behaviours": behaviours() * 4}
        r = http.post("/v1/users/alice/behaviours", json=big, headers=auth(keys["acme"]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = http.post(
            "/v1/jobs",
            json={"kind": "build", "users": ["alice"], "options": {"clusters": 2, "max_words": 40}},
            headers=auth(keys["acme"]),
        )
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        deadline = time.monotonic() + 120
        while (job := http.get(r.headers["location"], headers=auth(keys["acme"])).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["status"] == "done", job
        persona = http.get("/v1/users/alice/persona", params={"item": "space"}, headers={"X-API-Key": keys["acme"]})
        assert persona.status_code == 200 and len(persona.json()["similarities"]) == 2
        assert (
            http.get("/v1/users/alice/persona", params={"item": "space"}, headers=auth(keys["beta"])).status_code == 404
        )
        assert http.get("/openapi.json").json()["info"]["title"].startswith("PersonaLens")


def test_postgres_schema_names():
    assert postgres_schema("postgresql://h/db", "acme") == "personalens_t_acme"
    assert postgres_schema("postgresql://h/db?schema=app", "acme") == "app_t_acme"


def test_postgres_store_one_schema_per_tenant(tmp_path, postgres_server):
    from personalens.store.postgres import PostgresPersonaStore

    keys = make_keys(tmp_path)
    url = f"{postgres_server.dsn}?schema=svc_{uuid.uuid4().hex[:12]}"
    app = create_app(
        ServiceConfig(tmp_path, store_url=url), model=ScriptedChatModel(responder), embedder=HashEmbedder(32)
    )
    with TestClient(app) as client:
        assert build_user(client, keys["acme"], "alice")["status"] == "done"
        assert client.get("/v1/users/alice/versions", headers=auth(keys["acme"])).status_code == 200
        assert client.get("/v1/users/alice/versions", headers=auth(keys["beta"])).status_code == 404
    acme = PostgresPersonaStore(url, schema=postgres_schema(url, "acme"))
    beta = PostgresPersonaStore(url, schema=postgres_schema(url, "beta"))
    try:
        assert acme.current("alice") is not None and beta.current("alice") is None
    finally:
        acme.close()
        beta.close()
