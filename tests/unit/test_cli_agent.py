"""``personalens agent remember/chat/align`` end to end: the LLM served by a scripted OpenAI-compatible server on
loopback, the bundled MiniLM embedder, a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _stub_server import StubServer, chat_body
from typer.testing import CliRunner

from personalens.cli import app
from personalens.store import PersonaStore


def _handler(path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    system = body["messages"][0]["content"]
    if system.startswith("You study"):
        return 200, {}, chat_body("- Loves space operas.\n- Skips romantic comedies entirely.")
    if system.startswith("You review"):
        return 200, {}, chat_body("The user tags epic space films as sci-fi.")
    if system.startswith("You maintain"):
        return 200, {}, chat_body("- Loves space operas.\n- Skips romantic comedies entirely.\n- Tags epics sci-fi.")
    if any(m["role"] == "user" and m["content"].startswith("Observation:") for m in body["messages"]):
        return 200, {}, chat_body("Final Answer: sci-fi")
    return 200, {}, chat_body("Thought: check\nAction: memory_search: space opera")


@pytest.fixture()
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    with StubServer(handler=_handler) as server:
        runner = CliRunner()

        def run(*args: str, code: int = 0, input: str | None = None) -> Any:
            result = runner.invoke(app, ["--json", "--base-url", server.base_url, *args], input=input)
            assert result.exit_code == code, result.output + repr(result.exception)
            if code != 0:
                return result.output + repr(result.exception)
            return json.loads(result.output) if input is None else result.output

        yield run


def test_remember_chat_align(cli: Any, tmp_path: Path) -> None:
    memories = tmp_path / "m.jsonl"
    memories.write_text(
        "\n".join(
            json.dumps({"id": f"m{i}", "query": q, "response": r, "timestamp": 100.0 + i})
            for i, (q, r) in enumerate(
                [("Tag: Star Wars", "sci-fi"), ("Tag: Notting Hill", "romance"), ("Tag: Dune", "sci-fi")]
            )
        )
        + "\n"
    )
    store = str(tmp_path / "p.sqlite")
    assert cli("agent", "remember", "u1", str(memories), "--store", store) == {"user": "u1", "added": 3, "total": 3}
    assert cli("agent", "remember", "u1", str(memories), "--store", store)["added"] == 0
    answer = cli("agent", "chat", "u1", "-m", "Tag: Alien", "--store", store, "--init")
    assert answer["answer"] == "sci-fi" and answer["tools_used"] == ["memory_search"]
    assert answer["persona_version"] == 1
    aligned = cli("agent", "align", "u1", "--n", "2", "--store", store)
    assert aligned["version"] == 2 and aligned["persona"].endswith("Tags epics sci-fi.")
    assert len(aligned["steps"][0]["feedback"]) == 2
    with PersonaStore(store) as st:
        assert [v.method for v in st.versions("u1")] == ["agent-init", "agent-align"]
    # interactive: one question, then an empty line ends the session
    output = cli("agent", "chat", "u1", "--store", store, input="Tag: Alien\n\n")
    assert '"answer": "sci-fi"' in output


def test_bad_memory_file_names_line_and_field(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "query": "q", "response": "r"}\n{"id": "b", "query": "", "response": "r"}\n')
    output = cli("agent", "remember", "u1", str(bad), "--store", str(tmp_path / "p.sqlite"), code=1)
    assert "bad.jsonl:2" in output and "query" in output
    with PersonaStore(tmp_path / "p.sqlite") as st:
        assert st.count_memories("u1") == 0  # nothing half-written


def test_chat_without_json_prints_brackets_in_memories_and_answers_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The human-readable chat shows retrieved memories with Rich; text from the data ("[/INST]", "[bold]") must be
    printed as written, not read as markup (an unmatched closing tag made Rich raise and the chat die)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_CACHE_DIR", str(tmp_path / "cache"))
    memories = tmp_path / "m.jsonl"
    memories.write_text(
        json.dumps({"id": "m0", "query": "Tag: Space opera [/INST] [bold]epic[/bold]", "response": "sci-fi"}) + "\n"
    )
    store = str(tmp_path / "p.sqlite")
    with StubServer(handler=_handler) as server:
        runner = CliRunner()
        base = ["--base-url", server.base_url, "agent"]
        assert runner.invoke(app, [*base, "remember", "u1", str(memories), "--store", store]).exit_code == 0
        result = runner.invoke(app, [*base, "chat", "u1", "-m", "Tag: [/x] Alien", "--store", store, "--init"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "memory_search" in result.output
    assert "Space opera [/INST] [bold]epic[/bold]" in result.output
    assert "agent> sci-fi" in result.output
