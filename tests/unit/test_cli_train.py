"""``personalens train`` through the CLI against a scripted OpenAI-compatible server on loopback: the sampling
stages run and resume, and a run whose candidates cannot form a preference pair stops with a clear error."""

import json
import math

import pytest
from _stub_server import StubServer, chat_body
from test_training_pipeline import _data
from typer.testing import CliRunner

from personalens.cli import app

PERSONA = (
    "Enjoys sturdy, well made things that reward patience; prefers quiet designs over loud ones; gives generous "
    "marks when something does what it promises and is harsh on flimsy builds."
)


def _handler(path, body):
    if body.get("logprobs"):
        return 200, {}, chat_body("4", top={"4": math.log(0.7), "3": math.log(0.3)})
    return 200, {}, chat_body(f"{PERSONA} Sample {body.get('seed', 0)}.")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    with StubServer(handler=_handler) as server:
        runner = CliRunner()

        def run(*args, code=0):
            result = runner.invoke(app, ["--json", "--base-url", server.base_url, *args])
            assert result.exit_code == code, result.output + repr(result.exception)
            return json.loads(result.stdout) if code == 0 else result.output + repr(result.exception)

        run.server = server
        yield run


CONFIG = """
name = "cli"
iterations = 1
[data]
root = "data"
domains = ["amazon_toys"]
train_users_per_domain = 3
heldout_users_per_domain = 2
[sampling]
candidates = 3
min_words = 10
max_words = 80
"""


def test_train_samples_resumes_and_reports_a_run_without_pairs(cli, tmp_path):
    _data(tmp_path / "data", n_train=3)
    (tmp_path / "t.toml").write_text(CONFIG)
    summary = cli("train", "t.toml", "--out", "run", "--until", "sampling")
    assert [s["stage"] for s in summary["stages"]] == ["contexts:iter1", "sampling:iter1"]
    assert summary["stages"][1]["written"] == 3 and summary["usage"]["calls"] > 0
    samples = [json.loads(line) for line in (tmp_path / "run/iter1/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(s["candidates"]) == 3 for s in samples)
    requests = len(cli.server.requests)
    again = cli("train", "t.toml", "--out", "run", "--until", "sampling")
    assert again["stages"][1]["reused"] == 3 and len(cli.server.requests) == requests
    assert "config_changed" not in again
    # thresholds of a stage not yet run may change; the summary says which settings did
    (tmp_path / "t.toml").write_text(CONFIG + "[pairs]\npositive_min = 0.4\nmargin = 0.4\n")
    changed = cli("train", "t.toml", "--out", "run", "--until", "sampling")
    assert changed["config_changed"] == ["pairs"] and len(cli.server.requests) == requests
    # every candidate predicts the same ratings, so no reward reaches τ+: no pair, a clear error, files kept
    output = cli("train", "t.toml", "--out", "run", "--until", "pairs", code=1)  # main() turns it into exit 2
    assert "no preference pair" in output
    assert (tmp_path / "run/iter1/samples.jsonl").read_text().count("\n") == 3
    assert "pairs:iter1" in (tmp_path / "run/report.md").read_text()
