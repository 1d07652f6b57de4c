"""The HTTP service through FastAPI's TestClient: auth and tenants, limits, ingestion, jobs, retrieval, versions,
chat, delete, persistence across restarts and readiness."""

from __future__ import annotations

import json

import pytest
from _service_helpers import auth, behaviours, build_user, make_app, make_keys, wait_for_job
from fastapi.testclient import TestClient

from personalens.service import KeyRing, add_key
from personalens.service.tenantdb import TenantDB


@pytest.fixture
def env(tmp_path):
    keys = make_keys(tmp_path)
    with TestClient(make_app(tmp_path)) as client:
        yield client, keys, tmp_path


@pytest.fixture
def built(env):
    client, keys, path = env
    job = build_user(client, keys["acme"], "alice")
    assert job["status"] == "done", job
    return client, keys, path


# ---------------------------------------------------------------- keys and auth


def test_keys_file_holds_only_hashes(tmp_path):
    key = add_key(tmp_path / "keys.json", "acme")
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and len(json.loads(text)["tenants"]["acme"][0]["sha256"]) == 64
    ring = KeyRing(tmp_path / "keys.json")
    assert ring.authenticate(key) == "acme"
    assert ring.authenticate(key + "x") is None and ring.authenticate(None) is None
    with pytest.raises(Exception, match="tenant name"):
        add_key(tmp_path / "keys.json", "../evil")


def test_key_added_while_running_works_at_once(env):
    client, _, path = env
    key = add_key(path / "keys.json", "gamma")
    r = client.post("/v1/users/u/behaviours", json={"behaviours": behaviours()[:1]}, headers=auth(key))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, {"Authorization": "Basic x"}]
)
def test_401_without_a_valid_key(env, headers):
    client, _, _ = env
    r = client.get("/v1/users/alice/versions", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized" and "WWW-Authenticate" in r.headers


def test_x_api_key_header_works(built):
    client, keys, _ = built
    assert client.get("/v1/users/alice/versions", headers={"X-API-Key": keys["acme"]}).status_code == 200


ROUTES = [
    ("GET", "/v1/users/alice/persona?item=space+opera", None),
    ("GET", "/v1/users/alice/versions", None),
    ("GET", "/v1/users/alice/versions/1", None),
    ("GET", "/v1/users/alice/diff?a=1&b=1", None),
    ("POST", "/v1/users/alice/rollback", {"version": 1}),
    ("POST", "/v1/users/alice/chat", {"message": "hello"}),
    ("GET", "/v1/users/alice/memories", None),
    ("POST", "/v1/jobs", {"kind": "build", "users": ["alice"]}),
    ("POST", "/v1/jobs", {"kind": "refine", "users": ["alice"]}),
    ("GET", "/v1/jobs/{job}", None),
    # the persona explorer's endpoints (personalens.service.explorer)
    ("GET", "/v1/users/alice/map", None),
    ("GET", "/v1/users/alice/map?version=1&item=space+opera", None),
    ("GET", "/v1/users/alice/timeline", None),
    ("GET", "/v1/users/alice/diff/words?a=1&b=1", None),
    ("DELETE", "/v1/users/alice", None),
]


@pytest.mark.parametrize(("method", "url", "body"), ROUTES, ids=[f"{m} {u}" for m, u, _ in ROUTES])
def test_every_endpoint_refuses_cross_tenant_access(built, method, url, body):
    client, keys, _ = built
    acme_job = client.get("/v1/jobs", headers=auth(keys["acme"])).json()["jobs"][0]["id"]
    url = url.replace("{job}", acme_job)
    before = client.get("/v1/users/alice/versions", headers=auth(keys["acme"])).json()
    r = client.request(method, url, json=body, headers=auth(keys["beta"]))
    assert r.status_code == 404, r.text
    # indistinguishable from a user that exists nowhere
    other_body = None if body is None else json.loads(json.dumps(body).replace("alice", "nobody"))
    other_url = url.replace("alice", "nobody").replace(acme_job, "job_0")
    missing = client.request(method, other_url, json=other_body, headers=auth(keys["acme"]))
    assert missing.status_code == 404
    assert (missing.json()["error"]["code"], missing.json()["error"]["message"]) == (
        r.json()["error"]["code"],
        r.json()["error"]["message"],
    )
    assert client.get("/v1/users/alice/versions", headers=auth(keys["acme"])).json() == before
    # and the same request with the owner's key succeeds
    assert client.request(method, url, json=body, headers=auth(keys["acme"])).status_code in (200, 202)


def test_ingestion_is_per_tenant(built):
    client, keys, _ = built
    r = client.post("/v1/users/alice/behaviours", json={"behaviours": behaviours("b")[:2]}, headers=auth(keys["beta"]))
    assert r.json() == {"user": "alice", "added": 2, "duplicates": 0, "total": 2}
    r = client.post("/v1/users/alice/behaviours", json={"behaviours": behaviours("z")[:1]}, headers=auth(keys["acme"]))
    assert r.json()["total"] == 16  # acme's alice: her own 15 + 1, nothing from beta


def test_user_list_is_per_tenant(built):
    client, keys, _ = built
    assert [u["user"] for u in client.get("/v1/users", headers=auth(keys["acme"])).json()["users"]] == ["alice"]
    assert client.get("/v1/users", headers=auth(keys["beta"])).json() == {"total": 0, "users": []}


def test_job_list_is_per_tenant(built):
    client, keys, _ = built
    assert len(client.get("/v1/jobs", headers=auth(keys["acme"])).json()["jobs"]) == 1
    assert client.get("/v1/jobs", headers=auth(keys["beta"])).json()["jobs"] == []


# ---------------------------------------------------------------- limits and validation


def test_oversize_body_is_413_before_parsing(tmp_path):
    keys = make_keys(tmp_path)
    with TestClient(make_app(tmp_path, max_body_bytes=2000)) as client:
        body = {"behaviours": behaviours() * 3}
        r = client.post("/v1/users/u/behaviours", json=body, headers=auth(keys["acme"]))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large" and r.json()["error"]["details"]["limit"] == 2000

        def chunks():  # no Content-Length: the streamed body is cut off at the limit
            data = json.dumps(body).encode()
            for i in range(0, len(data), 500):
                yield data[i : i + 500]

        r = client.post("/v1/users/u/behaviours", content=chunks(), headers=auth(keys["acme"]))
        assert r.status_code == 413
        assert (
            client.post(
                "/v1/users/u/behaviours", json={"behaviours": behaviours()[:2]}, headers=auth(keys["acme"])
            ).status_code
            == 200
        )


def test_too_many_behaviours_is_422(tmp_path):
    keys = make_keys(tmp_path)
    with TestClient(make_app(tmp_path, max_behaviours=3)) as client:
        r = client.post("/v1/users/u/behaviours", json={"behaviours": behaviours()[:4]}, headers=auth(keys["acme"]))
        assert r.status_code == 422 and r.json()["error"]["details"][0]["path"] == "body.behaviours"


def test_validation_errors_name_the_field_path(env):
    client, keys, _ = env
    bad = behaviours()[:2]
    bad[1] = {**bad[1], "rating": "five", "colour": "red"}
    del bad[0]["item_id"]
    r = client.post("/v1/users/u/behaviours", json={"behaviours": bad}, headers=auth(keys["acme"]))
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    paths = {d["path"] for d in error["details"]}
    assert {"body.behaviours.0.item_id", "body.behaviours.1.rating", "body.behaviours.1.colour"} <= paths
    r = client.post(
        "/v1/jobs", json={"kind": "build", "users": ["u"], "options": {"alpha": 0.5}}, headers=auth(keys["acme"])
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["path"] == "body.build.options.alpha"
    r = client.post("/v1/jobs", json={"kind": "train", "users": ["u"]}, headers=auth(keys["acme"]))
    assert r.status_code == 422
    r = client.post(
        "/v1/users/u/behaviours",
        content=b"{not json",
        headers=auth(keys["acme"]) | {"content-type": "application/json"},
    )
    assert r.status_code == 422 and "error" in r.json()
    assert (
        client.get("/v1/users/u/diff?a=x&b=1", headers=auth(keys["acme"])).json()["error"]["details"][0]["path"]
        == "query.a"
    )


def test_unknown_route_and_method_are_json(env):
    client, _, _ = env
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    r = client.put("/healthz")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_errors_are_500_without_traceback(env, monkeypatch):
    client, keys, _ = env
    from personalens.service.tenantdb import TenantDB

    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(TenantDB, "count_behaviours", boom)
    with TestClient(client.app, raise_server_exceptions=False) as c:
        r = c.post("/v1/users/u/behaviours", json={"behaviours": behaviours()[:1]}, headers=auth(keys["acme"]))
    assert r.status_code == 500 and r.json() == {
        "error": {"code": "internal_error", "message": "internal server error", "details": None}
    }


# ---------------------------------------------------------------- ingestion


def test_ingestion_is_idempotent_on_event_id(env):
    client, keys, path = env
    body = {"behaviours": behaviours()[:5]}
    first = client.post("/v1/users/u/behaviours", json=body, headers=auth(keys["acme"])).json()
    again = client.post("/v1/users/u/behaviours", json=body, headers=auth(keys["acme"])).json()
    assert (first["added"], first["duplicates"], first["total"]) == (5, 0, 5)
    assert (again["added"], again["duplicates"], again["total"]) == (0, 5, 5)
    no_ids = [{k: v for k, v in b.items() if k != "event_id"} for b in behaviours()[:2]]
    for _ in range(2):
        client.post("/v1/users/u/behaviours", json={"behaviours": no_ids}, headers=auth(keys["acme"]))
    assert client.post("/v1/users/u/behaviours", json=body, headers=auth(keys["acme"])).json()["total"] == 9


# ---------------------------------------------------------------- jobs, retrieval, versions


def test_build_job_end_to_end_then_retrieval(built):
    client, keys, _ = built
    job = client.get("/v1/jobs", headers=auth(keys["acme"])).json()["jobs"][0]
    assert job["kind"] == "build" and job["progress"] == {"users": 1, "finished": 1, "failed": 0}
    assert job["users"] == [{"user": "alice", "status": "built", "error": None}]
    assert job["usage"]["calls"] == 3 and job["usage"]["total_tokens"] > 0 and job["summary"]["personas"] == 3
    r = client.get("/v1/users/alice/persona", params={"item": "Galaxy War; genres: space"}, headers=auth(keys["acme"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == 1 and len(out["similarities"]) == 3
    assert "space" in out["persona"]["text"]
    assert out["persona"]["score"] == max(x["score"] for x in out["similarities"])
    crime = client.get(
        "/v1/users/alice/persona", params={"item": "Bank Robbery; genres: crime"}, headers=auth(keys["acme"])
    ).json()
    assert "crime" in crime["persona"]["text"] and crime["persona"]["cluster"] != out["persona"]["cluster"]


def test_rebuild_is_served_from_the_store(built):
    client, keys, _ = built
    r = client.post(
        "/v1/jobs",
        json={"kind": "build", "users": ["alice"], "options": {"clusters": 3, "max_words": 40}},
        headers=auth(keys["acme"]),
    )
    job = wait_for_job(client, r.json()["id"], keys["acme"])
    assert job["users"][0]["status"] == "cached" and job["usage"]["calls"] == 0


def test_job_for_user_without_behaviours_is_404(env):
    client, keys, _ = env
    r = client.post("/v1/jobs", json={"kind": "build", "users": ["ghost"]}, headers=auth(keys["acme"]))
    assert r.status_code == 404 and r.json()["error"]["details"] == {"users": ["ghost"]}


def test_refine_job_records_per_user_failures(env):
    client, keys, _ = env
    client.post("/v1/users/u/behaviours", json={"behaviours": behaviours()[:5]}, headers=auth(keys["acme"]))
    r = client.post(
        "/v1/jobs", json={"kind": "refine", "users": ["u"], "options": {"window": 10}}, headers=auth(keys["acme"])
    )
    job = wait_for_job(client, r.json()["id"], keys["acme"])
    assert job["status"] == "done" and job["progress"]["failed"] == 1
    assert job["users"][0]["status"] == "failed" and "windows" in job["users"][0]["error"]


def test_versions_diff_and_rollback_change_the_store(built):
    client, keys, _ = built
    h = auth(keys["acme"])
    r = client.post(
        "/v1/jobs", json={"kind": "build", "users": ["alice"], "options": {"clusters": 2, "max_words": 40}}, headers=h
    )
    assert wait_for_job(client, r.json()["id"], keys["acme"])["status"] == "done"
    versions = client.get("/v1/users/alice/versions", headers=h).json()["versions"]
    assert [(v["version"], v["is_current"], v["n_personas"]) for v in versions] == [(1, False, 3), (2, True, 2)]
    assert len(client.get("/v1/users/alice/persona?item=space", headers=h).json()["similarities"]) == 2
    one = client.get("/v1/users/alice/versions/1", headers=h).json()
    assert one["version"] == 1 and not one["is_current"] and len(one["personas"]) == 3
    d = client.get("/v1/users/alice/diff?a=1&b=2", headers=h).json()
    assert d["from_version"] == 1 and d["to_version"] == 2 and d["removed"] == [2]
    assert any(c["key"] == "selector.threshold" for c in d["config"])
    r = client.post("/v1/users/alice/rollback", json={"version": 1}, headers=h)
    assert r.json() == {"user": "alice", "version": 3, "copied_from": 1}
    versions = client.get("/v1/users/alice/versions", headers=h).json()["versions"]
    assert versions[-1]["is_current"] and versions[-1]["parent_version"] == 1
    assert len(client.get("/v1/users/alice/persona?item=space", headers=h).json()["similarities"]) == 3
    assert client.post("/v1/users/alice/rollback", json={"version": 9}, headers=h).status_code == 404
    assert client.get("/v1/users/alice/versions/9", headers=h).status_code == 404


def test_chat_answers_with_the_persona_as_system_prompt(built):
    client, keys, _ = built
    r = client.post("/v1/users/alice/chat", json={"message": "Recommend a space opera"}, headers=auth(keys["acme"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"].startswith("As your agent") and out["version"] == 1
    assert out["usage"]["calls"] == 1 and out["model"] == "scripted"
    model = client.app.state.service.model.get().inner
    system_prompt = model.calls[-1].messages[0].content
    assert "space" in system_prompt and "personal assistant of one specific user" in system_prompt
    assert out["steps"][-1]["kind"] == "answer" and out["memories"] == []


def test_memories_feed_the_chat_agent_and_are_deleted_with_the_user(built):
    client, keys, _ = built
    h = auth(keys["acme"])
    memories = [
        {"id": "m1", "query": "Tag: a space opera with rebels", "response": "sci-fi", "timestamp": 100.0},
        {"id": "m2", "query": "Tag: a wedding in Paris", "response": "romance", "session": "s1"},
    ]
    r = client.post("/v1/users/alice/memories", json={"memories": memories}, headers=h)
    assert r.status_code == 200 and r.json() == {"user": "alice", "added": 2, "total": 2}
    assert client.post("/v1/users/alice/memories", json={"memories": memories}, headers=h).json()["added"] == 0
    changed = [{**memories[0], "response": "comedy"}]
    r = client.post("/v1/users/alice/memories", json={"memories": changed}, headers=h)
    assert r.status_code == 422 and "different content" in r.text
    assert client.post("/v1/users/alice/memories", json={"memories": []}, headers=h).status_code == 422
    listed = client.get("/v1/users/alice/memories?limit=1", headers=h).json()
    assert listed["total"] == 2 and len(listed["memories"]) == 1
    r = client.post("/v1/users/alice/chat", json={"message": "Recommend a space opera"}, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] == "As your agent, I suggest a space opera."
    assert [s["kind"] for s in out["steps"]] == ["action", "final"]
    assert out["steps"][0]["tool"] == "memory_search" and out["memories"][0] == "m1"
    # a user with memories but no persona can chat too, and is deleted with everything
    client.post("/v1/users/carol/memories", json={"memories": memories}, headers=h)
    assert client.post("/v1/users/carol/chat", json={"message": "hi"}, headers=h).status_code == 200
    deleted = client.delete("/v1/users/carol", headers=h)
    assert deleted.status_code == 200 and deleted.json()["deleted"]["persona_rows"] >= 2
    assert client.get("/v1/users/carol/memories", headers=h).status_code == 404
    assert client.post("/v1/users/carol/chat", json={"message": "hi"}, headers=h).status_code == 404


def test_delete_removes_everything(built):
    client, keys, path = built
    h = auth(keys["acme"])
    r = client.delete("/v1/users/alice", headers=h)
    assert r.status_code == 200
    deleted = r.json()["deleted"]
    assert deleted["behaviours"] == 15 and deleted["job_records"] == 1 and deleted["persona_rows"] > 0
    for url in ("/v1/users/alice/versions", "/v1/users/alice/persona?item=space", "/v1/users/alice/versions/1"):
        assert client.get(url, headers=h).status_code == 404
    assert client.delete("/v1/users/alice", headers=h).status_code == 404
    job = client.get("/v1/jobs", headers=h).json()["jobs"][0]
    assert job["users"] == []
    db = TenantDB(path / "acme" / "service.sqlite")
    try:
        assert db.behaviours("alice") == [] and not db.has_user("alice")
    finally:
        db.close()
    from personalens.store import PersonaStore

    with PersonaStore(path / "acme" / "personas.sqlite") as store:
        assert store.versions("alice") == [] and store.current("alice") is None


# ---------------------------------------------------------------- persistence, probes, docs


def test_jobs_survive_a_restart_and_running_ones_become_interrupted(tmp_path):
    keys = make_keys(tmp_path)
    with TestClient(make_app(tmp_path)) as client:
        job = build_user(client, keys["acme"], "alice")
    db = TenantDB(tmp_path / "acme" / "service.sqlite")  # a job a killed process left running
    db.create_job("job_killed", "build", {}, ["alice"])
    db.update_job("job_killed", status="running", started_at=1.0)
    db.close()
    with TestClient(make_app(tmp_path)) as client:
        again = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["acme"])).json()
        assert again["status"] == "done" and again["users"] == job["users"] and again["usage"] == job["usage"]
        killed = client.get("/v1/jobs/job_killed", headers=auth(keys["acme"])).json()
        assert killed["status"] == "interrupted" and killed["error"]
        assert client.get("/v1/users/alice/persona?item=space", headers=auth(keys["acme"])).status_code == 200


def test_health_and_readiness(env):
    client, _, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["tenants"] == 2


def test_readiness_fails_when_a_store_cannot_be_opened(tmp_path):
    keys = make_keys(tmp_path)
    (tmp_path / "beta").mkdir()
    (tmp_path / "beta" / "personas.sqlite").write_bytes(b"this is not a database" * 100)
    with TestClient(make_app(tmp_path)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "not_ready" and any("tenant beta" in x for x in error["details"]["reasons"])
        r = client.get("/v1/users/u/versions", headers=auth(keys["beta"]))
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        assert "not a database" not in r.text  # no internals to the client
        assert client.get("/v1/users/u/versions", headers=auth(keys["acme"])).status_code == 404


def test_openapi_and_local_docs(env):
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    assert "/v1/users/{user}/behaviours" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "http" not in page.text.replace("http-", "")
