"""``personalens refine`` end to end: DeePer-format files the test writes, the LLM served by a scripted
OpenAI-compatible server on loopback, the bundled MiniLM embedder, a real SQLite store."""

import json
import math

import pytest
from _stub_server import StubServer, chat_body
from typer.testing import CliRunner

from personalens.cli import app

PERSONA = (
    "Watches for tense plots and careful pacing; forgives slow openings when the payoff is earned; "
    "dislikes broad comedy and long musical numbers; rates familiar genres generously."
)


def _handler(path, body):
    if body.get("logprobs"):
        last = body["messages"][-1]
        prefill = last["content"] if last["role"] == "assistant" else ""
        if prefill[-1:].isdigit():  # a half-point scale: does "4" go on to "4.5"?
            return 200, {}, chat_body("\n", top={"\n": math.log(0.8), ".": math.log(0.2)})
        if prefill.endswith("."):
            return 200, {}, chat_body("5", top={"5": math.log(0.6), "0": math.log(0.4)})
        return 200, {}, chat_body("4", top={"4": math.log(0.7), "3": math.log(0.3)})
    return 200, {}, chat_body(PERSONA)


def _write_deeper(directory, users=("a", "b"), rounds=2):
    directory.mkdir(parents=True)
    for k in range(1, rounds + 1):
        lines = []
        for u in users:
            obj = {"id": u, "iteration": k, "item_type": "movie", "split": "eval", "dataset_name": "movielens_20m"}
            for j in (k - 1, k, k + 1):
                obj[f"I{j}"] = [f"{u} film {j} one", f"{u} film {j} two"]
                obj[f"U{j}"] = [4.0, 2.5]
            lines.append(json.dumps(obj))
        (directory / f"test_iteration_{k}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    with StubServer(handler=_handler) as server:
        runner = CliRunner()

        def run(*args, code=0, root=()):
            result = runner.invoke(app, ["--json", "--base-url", server.base_url, *root, *args])
            assert result.exit_code == code, result.output + repr(result.exception)
            return json.loads(result.output) if code == 0 else result.output

        run.server = server
        yield run


def test_refine_stores_rounds_then_skips_and_lists_versions(cli, tmp_path):
    _write_deeper(tmp_path / "movies")
    args = ["refine", "--deeper", "movies", "--store", "s.sqlite", "--min-words", "10", "--max-words", "60"]
    first = cli(*args)
    assert first["failures"] == {}
    assert first["users"] == 2 and first["refined"] == 2 and first["rounds_run"] == 2 * 3  # W0..W3: rounds 1-3
    assert first["usage"]["calls"] > 0
    requests = len(cli.server.requests)
    again = cli(*args, root=["--no-cache"])  # skipped from the store, not the response cache
    assert again["cached"] == 2 and again["rounds_run"] == 0 and len(cli.server.requests) == requests
    versions = cli("personas", "a", "--store", "s.sqlite", "--versions")
    listed = versions["versions"] if isinstance(versions, dict) else versions
    assert len(listed) == 4  # S0 and three rounds
    notes = " ".join(v.get("note", "") for v in listed)
    assert "initial persona" in notes and "round 3" in notes


def test_refine_one_user_verified_and_bad_options(cli, tmp_path):
    _write_deeper(tmp_path / "movies")
    out = cli(
        "refine",
        "--deeper",
        "movies",
        "--user",
        "b",
        "--verified",
        "--candidates",
        "2",
        "--rounds",
        "1",
        "--store",
        "s.sqlite",
        "--min-words",
        "10",
        "--max-words",
        "60",
    )
    assert out["users"] == 1 and out["rounds_run"] == 1
    # identical candidates predict what the old persona predicted: no gain, so nothing is committed
    assert out["committed"] == 0
    assert "no windows for user" in cli("refine", "--deeper", "movies", "--user", "zz", code=2)
    assert "unknown strategy" in cli("refine", "--deeper", "movies", "--strategy", "magic", code=2)
    assert "repetition-penalty" in cli("refine", "--deeper", "movies", "--repetition-penalty", "0.5", code=2)


def test_personas_shows_what_a_refinement_round_changed(cli, tmp_path):
    _write_deeper(tmp_path / "movies", users=("a",), rounds=1)
    cli("refine", "--deeper", "movies", "--store", "s.sqlite", "--min-words", "10", "--max-words", "60")
    shown = CliRunner().invoke(app, ["personas", "a", "--store", "s.sqlite"])
    assert shown.exit_code == 0 and "round 2, refine; MAE previous" in shown.output
    listed = CliRunner().invoke(app, ["personas", "a", "--store", "s.sqlite", "--versions"])
    assert listed.exit_code == 0 and "note" in listed.output


def test_report_only_without_a_run_is_a_clear_error(tmp_path):
    (tmp_path / "dyn.toml").write_text('[data]\nroot = "d"\ndomains = ["x"]\n')
    result = CliRunner().invoke(
        app, ["eval", "dynamic", str(tmp_path / "dyn.toml"), "--out", str(tmp_path / "none"), "--report-only"]
    )
    assert result.exit_code != 0 and "run the experiment first" in str(result.exception)
    assert not (tmp_path / "none").exists()
