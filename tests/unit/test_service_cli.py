"""`personalens service add-key` and `personalens serve` (uvicorn itself replaced by a recorder), and the models the
service builds from settings when none are injected."""

from __future__ import annotations

import json

import uvicorn
from _service_helpers import auth, behaviours, build_user, responder
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from personalens.cli import app
from personalens.embed.testing import HashEmbedder
from personalens.llm.testing import ScriptedChatModel
from personalens.service import KeyRing, ServiceConfig, add_key, create_app


def test_add_key_prints_the_key_once_and_stores_its_hash(tmp_path):
    result = CliRunner().invoke(app, ["--json", "service", "add-key", "acme", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    key = json.loads(result.stdout)["key"]
    assert key not in (tmp_path / "keys.json").read_text()
    assert KeyRing(tmp_path / "keys.json").authenticate(key) == "acme"
    bad = CliRunner().invoke(app, ["service", "add-key", "Not Valid", "--data-dir", str(tmp_path)])
    assert bad.exit_code != 0


def test_serve_builds_the_app_and_runs_uvicorn_on_loopback(tmp_path, monkeypatch):
    seen = {}

    def fake_run(application, **kwargs):
        seen["app"], seen["kwargs"] = application, kwargs

    monkeypatch.setattr(uvicorn, "run", fake_run)
    args = ["serve", "--data-dir", str(tmp_path), "--port", "8123", "--max-body-bytes", "1000", "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen["kwargs"]["host"] == "127.0.0.1" and seen["kwargs"]["port"] == 8123
    config = seen["app"].state.service.config
    assert config.max_body_bytes == 1000 and config.job_workers == 2 and config.data_dir == tmp_path


def test_models_built_from_settings_skip_the_shared_caches(tmp_path, monkeypatch):
    import personalens.factory as factory

    built = {}

    def fake_model(settings, **_):
        built["llm"] = settings.llm.response_cache
        return ScriptedChatModel(responder)

    def fake_embedder(settings):
        built["embed"] = settings.embed.cache
        return HashEmbedder(32)

    monkeypatch.setattr(factory, "build_chat_model", fake_model)
    monkeypatch.setattr(factory, "build_embedder", fake_embedder)
    key = add_key(tmp_path / "keys.json", "acme")
    with TestClient(create_app(ServiceConfig(tmp_path))) as client:
        assert build_user(client, key, "alice")["status"] == "done"
        r = client.post("/v1/users/alice/chat", json={"message": "hi"}, headers=auth(key))
        assert r.status_code == 200
        r = client.post("/v1/users/bob/behaviours", json={"behaviours": behaviours()[:1]}, headers=auth(key))
        assert r.status_code == 200
    assert built == {"llm": False, "embed": False}
