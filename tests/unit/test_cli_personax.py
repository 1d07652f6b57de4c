"""The PersonaX commands end to end through the CLI, with the LLM served by a scripted OpenAI-compatible server on
loopback and the real bundled MiniLM embedder."""

import json
import math

import pytest
from _stub_server import StubServer, chat_body
from typer.testing import CliRunner

from personalens.cli import app

PERSONA = "Enjoys tense science fiction with big ideas, dark futures and practical effects; likes a fast plot."


def _handler(path, body):
    if body.get("logprobs"):
        return 200, {}, chat_body("4", top={"4": math.log(0.6), "5": math.log(0.4)})
    return 200, {}, chat_body(PERSONA)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    with StubServer(handler=_handler) as server:
        runner = CliRunner()

        def run(*args):
            result = runner.invoke(app, ["--json", "--base-url", server.base_url, *args])
            assert result.exit_code == 0, result.output + repr(result.exception)
            return json.loads(result.output)

        run.server = server
        yield run


def test_build_retrieve_versions_diff_rollback_delete(cli, tmp_path):
    store = str(tmp_path / "p.sqlite")
    first = cli("build", "--store", store)
    assert first["built"] == 1 and first["personas"] == 2 and first["usage"]["calls"] == 2
    again = cli("build", "--store", store)
    assert again["cached"] == 1 and again["usage"]["calls"] == 0
    shown = cli("personas", "demo", "--store", store)
    assert shown["version"] == 1 and all(p["text"] == PERSONA for p in shown["personas"])
    found = cli("retrieve", "demo", "--text", "Alien; genres: Horror, Sci-Fi", "--k", "2", "--store", store)
    both = cli("retrieve", "demo", "--text", "Alien", "--use", "both", "--store", store)
    assert both["personas"][0]["matched"] in ("centroid", "persona")
    assert [p["rank"] for p in found["personas"]] == [0, 1]
    assert found["personas"][0]["score"] >= found["personas"][1]["score"]
    by_item = cli("retrieve", "demo", "--item", "1", "--store", store)
    assert by_item["target"].startswith("Alien (1979)")
    cli("build", "--store", store, "--alpha", "1.2")  # a config change makes version 2
    versions = cli("personas", "demo", "--versions", "--store", store)
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["is_current"]
    diff = cli("personas", "demo", "--diff", "1", "2", "--store", store)
    assert any(c["key"].endswith("alpha") for c in diff["config"])
    rolled = cli("personas", "demo", "--rollback", "1", "--store", store)
    assert rolled["version"] == 3
    assert cli("personas", "demo", "--store", store)["config_hash"] == shown["config_hash"]
    deleted = cli("personas", "demo", "--delete", "--store", store)
    assert deleted["deleted_rows"] > 0
    result = CliRunner().invoke(app, ["personas", "demo", "--store", store])
    assert result.exit_code != 0 and "no personas stored" in result.output


def test_demo_main_job_builds_retrieves_and_predicts(cli, tmp_path):
    out = cli("demo", "--store", str(tmp_path / "d.sqlite"))
    assert out["build"]["built"] == 1
    (row,) = out["retrievals"]
    assert row["target"] == "Bridget Jones's Diary (2001)" and row["actual_rating"] == 1.0
    assert row["predicted_rating"] == pytest.approx(4 * 0.6 + 5 * 0.4)
    # the held-out target never reached a persona prompt
    prompts = [b["messages"][0]["content"] for _, _, b in cli.server.requests if not b.get("logprobs")]
    assert prompts and not any("Bridget" in p for p in prompts)


def test_plot_writes_a_png(cli, tmp_path):
    store = str(tmp_path / "p.sqlite")
    cli("build", "--store", store)
    out = cli("plot", "demo", "--store", store, "--out", str(tmp_path / "u.png"))
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["png"].endswith("u.png")
