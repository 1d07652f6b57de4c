"""Property-based fuzzing of the service's request bodies, path and query parameters through FastAPI's TestClient
(scripted LLM, hashed embedder): no input gives a 500, every error is the JSON error body, and a rejected request
writes nothing (the tenant's behaviour log, job records and persona store are unchanged)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from _service_helpers import auth, behaviours, build_user, make_app, make_keys, wait_for_job
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ODD_TEXT = [
    "",
    " ",
    "\x00",
    "\x7f",
    "a\nb",
    "é",
    "\u202e",
    "x" * 300,
    "x" * 9000,
    "../..",
    "%2F",
    "NaN",
    "Infinity",
    "1e999",
    "-1",
    "true",
    "null",
    "[]",
    "{}",
]
ODD_NUMBERS = [
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    10**400,
    1.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(ODD_NUMBERS),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(ODD_TEXT),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
users = st.one_of(
    st.just("alice"),  # the built user, so requests get past the 404 checks
    st.sampled_from(["alice", "bob", "nobody"]),
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
)
BIG_INTS = [2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**400]


def _odd(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with mostly the expected keys holding odd values, and sometimes unknown keys."""
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), json_values, max_size=len(keys) + 1)


BEHAVIOUR_KEYS = ["event_id", "item_id", "title", "fields", "text", "rating", "label", "timestamp"]
behaviour = st.one_of(
    _odd(BEHAVIOUR_KEYS),
    st.fixed_dictionaries(
        {"item_id": st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(ODD_TEXT))},
        optional={
            "event_id": st.one_of(st.text(max_size=8), st.sampled_from(ODD_TEXT)),
            "rating": st.one_of(st.sampled_from(ODD_NUMBERS), st.floats(), st.text(max_size=4)),
            "timestamp": st.one_of(st.sampled_from(ODD_NUMBERS), st.floats()),
            "label": scalars,
            "fields": st.one_of(st.dictionaries(st.text(max_size=70), st.text(max_size=8), max_size=3), json_values),
            "title": st.one_of(st.text(max_size=8), st.sampled_from(ODD_TEXT)),
        },
    ),
)


def body_strategy(structured: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A request body: mostly near-valid structures, sometimes any JSON, sometimes raw bytes."""
    return st.one_of(
        structured,
        structured,
        json_values,
        st.binary(max_size=40).map(lambda raw: RawBody(raw)),
    )


class RawBody:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"RawBody({self.raw!r})"


# ---------------------------------------------------------------- the service under test


class Env:
    def __init__(self, client: TestClient, key: str, data_dir: Path) -> None:
        self.client = client
        self.key = key
        self.data_dir = data_dir

    def send(self, method: str, url: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = auth(self.key)
        if isinstance(body, RawBody):
            headers["Content-Type"] = "application/json"
            return self.client.request(method, url, content=body.raw, headers=headers, params=params)
        if body is None:
            return self.client.request(method, url, headers=headers, params=params)
        content = json.dumps(body, allow_nan=True)  # NaN / Infinity are what a sloppy client would send
        headers["Content-Type"] = "application/json"
        return self.client.request(method, url, content=content, headers=headers, params=params)

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a request could write for the tenant: behaviours, jobs and persona store rows."""
        tenant_dir = self.data_dir / "acme"
        with sqlite3.connect(tenant_dir / "service.sqlite") as db:
            behaviours = db.execute("SELECT user_id, COUNT(*), MAX(seq) FROM behaviours GROUP BY user_id").fetchall()
            jobs = db.execute("SELECT job_id, status FROM jobs ORDER BY job_id").fetchall()
            job_users = db.execute("SELECT COUNT(*) FROM job_users").fetchone()
        with sqlite3.connect(tenant_dir / "personas.sqlite") as db:
            sets = db.execute("SELECT user_id, version FROM persona_sets ORDER BY user_id, version").fetchall()
            current = db.execute("SELECT user_id, current_version FROM users ORDER BY user_id").fetchall()
            personas = db.execute("SELECT COUNT(*) FROM personas").fetchone()
        return sorted(behaviours), jobs, job_users, sets, current, personas


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    data_dir = Path(tempfile.mkdtemp(prefix="pl-fuzz-service-"))
    try:
        keys = make_keys(data_dir)
        with TestClient(make_app(data_dir), raise_server_exceptions=False) as client:
            for clusters in (3, 2):  # two versions of alice, so rollback and diff have something to work on
                job = build_user(client, keys["acme"], "alice", clusters=clusters)
                assert job["status"] == "done", job
            yield Env(client, keys["acme"], data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def check_response(env: Env, response: Any, before: tuple[Any, ...]) -> None:
    """No 5xx; an error is the JSON error body; a rejected request leaves the tenant's data unchanged."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
        assert env.snapshot() == before, f"a rejected request ({response.status_code}) wrote: {response.text}"


def path_user(user: str) -> str:
    return quote(user, safe="")


# ---------------------------------------------------------------- the endpoints


@FUZZ
@given(user=users, body=body_strategy(st.fixed_dictionaries({"behaviours": st.lists(behaviour, max_size=4)})))
def test_fuzz_ingest_behaviours(env: Env, user: str, body: Any) -> None:
    before = env.snapshot()
    response = env.send("POST", f"/v1/users/{path_user(user)}/behaviours", body)
    check_response(env, response, before)
    if response.status_code == 200:
        out = response.json()
        assert out["added"] + out["duplicates"] == len(body["behaviours"])


JOB_OPTION_KEYS = [
    "method", "clusters", "alpha", "ratio", "linkage", "max_words", "domain", "item_fields", "like_above",
    "dislike_below", "rating_scale", "window", "strategy", "verified", "candidates", "temperature", "rounds",
    "initial", "min_words", "predictor",
]  # fmt: skip
job_body = st.fixed_dictionaries(
    {
        "kind": st.one_of(st.sampled_from(["build", "refine"]), scalars),
        "users": st.one_of(st.lists(users, max_size=3), scalars),
    },
    optional={"options": st.one_of(_odd(JOB_OPTION_KEYS), scalars)},
)


@settings(FUZZ, max_examples=40)
@given(body=body_strategy(job_body))
def test_fuzz_jobs(env: Env, body: Any) -> None:
    before = env.snapshot()
    response = env.send("POST", "/v1/jobs", body)
    check_response(env, response, before)
    if response.status_code == 202:  # accepted: let it finish so the next example starts from a quiet tenant
        job = wait_for_job(env.client, response.json()["id"], env.key)
        assert job["status"] in ("done", "failed"), job


versions = st.one_of(st.integers(1, 3), st.integers(), st.sampled_from(BIG_INTS), st.sampled_from(ODD_NUMBERS), scalars)


@FUZZ
@given(user=users, body=body_strategy(st.one_of(st.fixed_dictionaries({"version": versions}), _odd(["version"]))))
def test_fuzz_rollback(env: Env, user: str, body: Any) -> None:
    before = env.snapshot()
    response = env.send("POST", f"/v1/users/{path_user(user)}/rollback", body)
    check_response(env, response, before)


@FUZZ
@given(user=users, body=body_strategy(_odd(["message", "max_tokens", "temperature"])))
def test_fuzz_chat(env: Env, user: str, body: Any) -> None:
    before = env.snapshot()
    response = env.send("POST", f"/v1/users/{path_user(user)}/chat", body)
    check_response(env, response, before)
    assert env.snapshot() == before  # chat never writes


query_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(ODD_TEXT),
    st.sampled_from([str(n) for n in ODD_NUMBERS]),
    st.integers().map(str),
    st.integers(1, 3).map(str),
    st.sampled_from(BIG_INTS).map(str),
)


@settings(FUZZ, max_examples=120)
@given(
    user=users,
    route=st.sampled_from(["persona", "versions", "version", "diff", "jobs", "job"]),
    params=st.dictionaries(st.sampled_from(["item", "use", "a", "b", "limit", "k"]), query_values, max_size=4),
    segment=query_values,
)
def test_fuzz_query_params(env: Env, user: str, route: str, params: dict[str, str], segment: str) -> None:
    before = env.snapshot()
    url = {
        "persona": f"/v1/users/{path_user(user)}/persona",
        "versions": f"/v1/users/{path_user(user)}/versions",
        "version": f"/v1/users/{path_user(user)}/versions/{quote(segment, safe='')}",
        "diff": f"/v1/users/{path_user(user)}/diff",
        "jobs": "/v1/jobs",
        "job": f"/v1/jobs/{quote(segment, safe='')}",
    }[route]
    response = env.send("GET", url, params=params)
    check_response(env, response, before)
    assert env.snapshot() == before  # reads never write


# ---------------------------------------------------------------- regressions found by the fuzzers


@pytest.mark.parametrize("version", [2**63, 10**30])
def test_regression_version_beyond_64_bits_is_404_not_500(env: Env, version: int) -> None:
    # SQLite raised OverflowError ("Python int too large to convert to SQLite INTEGER") from store.get: a 500
    before = env.snapshot()
    for response in (
        env.send("POST", "/v1/users/alice/rollback", {"version": version}),
        env.send("GET", f"/v1/users/alice/versions/{version}"),
        env.send("GET", "/v1/users/alice/diff", params={"a": 1, "b": version}),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert env.snapshot() == before


def test_fuzz_env_sanity(env: Env) -> None:
    """The fixture's user is really there, so the fuzzers reach the code behind the 404 checks."""
    r = env.send("GET", "/v1/users/alice/versions")
    assert r.status_code == 200 and len(r.json()["versions"]) >= 2
    r = env.send("POST", "/v1/users/carol/behaviours", {"behaviours": behaviours("carol")[:2]})
    assert r.status_code == 200
