"""LLM faults during a build: timeouts, 429 with Retry-After, 500s, cut-off bodies, truncated and malformed JSON.

Each fault is served twice: by an httpx test-double transport (no socket) and by a misbehaving HTTP server on
loopback. Calls are retried within the configured bounds (the attempts are counted), then the user is recorded as
failed with the reason; nothing is half-written, nothing is dropped, and the run summary counts the failures."""

import json
import sqlite3
import threading
import time

import httpx
import pytest
from _jobs_data import jobs_dataset
from _stub_server import CUT_HEADER, StubServer, chat_body
from typer.testing import CliRunner

from personalens._retry import RetryPolicy
from personalens.embed import HashEmbedder
from personalens.jobs import BuildConfig, PersonaXBuilder
from personalens.llm import UsageMeter
from personalens.llm.openai_compat import OpenAICompatibleModel
from personalens.selection import PersonaXSelector
from personalens.store import PersonaStore

PERSONA = "Likes tense stories with a clear plot, careful pacing and strong characters; dislikes filler. " * 2
FAULTS = ["timeout", "429", "500", "cut", "truncated", "malformed"]
ATTEMPTS = 3
USERS = ["u0", "u1"]


def _fault_reply(kind):
    """(status, headers, body) of one faulty answer, for the loopback server."""
    good = json.dumps(chat_body(PERSONA))
    if kind == "timeout":
        time.sleep(0.6)  # longer than the client's timeout
        return 200, {}, good
    if kind == "429":
        return 429, {"Retry-After": "1"}, {"error": "slow down"}
    if kind == "500":
        return 500, {}, {"error": "boom"}
    if kind == "cut":
        return 200, {CUT_HEADER: "20"}, good
    if kind == "truncated":
        return 200, {}, good[: len(good) // 2]
    return 200, {}, "{'choices': [oops,]}"


def _fault_response(kind, request):
    """The same faults from an httpx test-double transport."""
    good = json.dumps(chat_body(PERSONA)).encode()
    if kind == "timeout":
        raise httpx.ReadTimeout("timed out", request=request)
    if kind == "429":
        return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow down"})
    if kind == "500":
        return httpx.Response(500, json={"error": "boom"})
    if kind == "cut":
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body", request=request)
    if kind == "truncated":
        return httpx.Response(200, content=good[: len(good) // 2])
    return httpx.Response(200, content=b"{'choices': [oops,]}")


class _Sleeps:
    def __init__(self):
        self.waits = []
        self.lock = threading.Lock()

    def __call__(self, seconds):
        with self.lock:
            self.waits.append(seconds)


def _run_build(tmp_path, model):
    store = PersonaStore(tmp_path / "p.sqlite")
    selector = PersonaXSelector(threshold_rule="n_clusters", threshold=2)
    builder = PersonaXBuilder(UsageMeter(model), HashEmbedder(16), selector, store, BuildConfig(max_words=40))
    return builder.run(jobs_dataset(2), USERS, run_id="faulty"), store


def _check_failed(tmp_path, report, store, kind):
    assert report.count("failed") == len(USERS) and report.count("built") == 0
    summary = report.to_json()
    assert summary["failed"] == len(USERS) and set(summary["failures"]) == set(USERS)
    for user_id in USERS:
        assert f"after {ATTEMPTS} attempts" in summary["failures"][user_id]
        assert store.current(user_id) is None and store.versions(user_id) == []  # nothing half-written
    assert store.build_status("faulty") == dict.fromkeys(USERS, "failed")
    db = sqlite3.connect(tmp_path / "p.sqlite")
    rows = db.execute("SELECT user_id, error, attempts FROM build_status WHERE run_id = 'faulty'").fetchall()
    assert len(rows) == len(USERS)
    for _user, error, attempts in rows:
        assert f"after {ATTEMPTS} attempts" in error and attempts == 1
    assert db.execute("SELECT COUNT(*) FROM personas").fetchone()[0] == 0


def _model(base_url, sleeps, **kw):
    policy = RetryPolicy(max_attempts=ATTEMPTS, base_delay=0.01, max_delay=5.0)
    return OpenAICompatibleModel(base_url, "stub", timeout=0.2, retry=policy, sleep=sleeps, **kw)


@pytest.mark.parametrize("kind", FAULTS)
def test_fault_from_a_test_double_transport(tmp_path, kind):
    seen = []

    def handler(request):
        seen.append(request)
        return _fault_response(kind, request)

    sleeps = _Sleeps()
    model = _model("http://fake.invalid/v1", sleeps, transport=httpx.MockTransport(handler))
    report, store = _run_build(tmp_path, model)
    assert len(seen) == ATTEMPTS * len(USERS)  # each user's first call: exactly the configured attempts
    assert len(sleeps.waits) == (ATTEMPTS - 1) * len(USERS)
    if kind == "429":
        assert sleeps.waits == [1.0] * len(sleeps.waits)  # Retry-After honoured
    _check_failed(tmp_path, report, store, kind)


@pytest.mark.parametrize("kind", FAULTS)
def test_fault_from_a_misbehaving_loopback_server(tmp_path, kind):
    sleeps = _Sleeps()
    with StubServer(handler=lambda path, body: _fault_reply(kind)) as server:
        report, store = _run_build(tmp_path, _model(server.base_url, sleeps))
        assert len(server.requests) == ATTEMPTS * len(USERS)
    if kind == "429":
        assert sleeps.waits == [1.0] * len(sleeps.waits)
    _check_failed(tmp_path, report, store, kind)


def test_faults_that_clear_within_the_bounds_build_every_user(tmp_path):
    faults = iter(["500", "429", "truncated", "cut", "malformed", "timeout"])
    state = {"n": 0}

    def handler(path, body):
        state["n"] += 1
        if state["n"] % 2:  # every other request faults: each call succeeds on its second attempt
            return _fault_reply(next(faults, "500"))
        return 200, {}, chat_body(PERSONA)

    with StubServer(handler=handler) as server:
        report, store = _run_build(tmp_path, _model(server.base_url, _Sleeps()))
        requests = len(server.requests)
    assert report.count("built") == len(USERS) and report.count("failed") == 0
    assert requests == 2 * report.usage.calls
    for user_id in USERS:
        assert [v.version for v in store.versions(user_id)] == [1]


def test_cli_summary_counts_failures(tmp_path, monkeypatch):
    from personalens.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PERSONALENS_LLM_MAX_RETRIES", "1")
    with StubServer(handler=lambda path, body: (500, {}, {"error": "down"})) as server:
        result = CliRunner().invoke(
            app, ["--json", "--base-url", server.base_url, "build", "--store", "p.sqlite", "--users", "1"]
        )
        requests = len(server.requests)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["failed"] == 1 and summary["built"] == 0
    assert "after 2 attempts" in next(iter(summary["failures"].values()))
    assert requests == 2
