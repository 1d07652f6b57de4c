import json
import math

import pytest
from typer.testing import CliRunner

from personalens.cli import app
from personalens.demo import load_demo_dataset, run_rating_demo
from personalens.llm import ScriptedChatModel
from personalens.profiling import bound_words, summarize_history

PERSONA = "Enjoys tense science fiction and action; avoids romance and musicals. " * 3


def _fake_model():
    def next_tokens(request):
        text = request.messages[-1].content
        item = text.rsplit("Item:", 1)[1]
        liked = "Sci-Fi" in item or "Action" in item
        return {"5": 0.7, "2": 0.3} if liked else {"5": 0.2, "2": 0.8}

    return ScriptedChatModel([PERSONA], next_tokens=next_tokens)


def test_demo_holds_out_items_from_the_persona_prompt():
    dataset = load_demo_dataset()
    model = _fake_model()
    result = run_rating_demo(model, dataset, "demo", holdout=8)
    persona_prompt = model.calls[0].messages[0].content
    history, held_out = dataset.history("demo").split_last(8)
    for x in held_out:
        assert dataset.item(x.item_id).title not in persona_prompt
    for x in history:
        assert dataset.item(x.item_id).title in persona_prompt
    assert len(result.predictions) == 8 and result.auc == 1.0
    # expected rating from the scripted digit probabilities: 5·0.7 + 2·0.3 for a liked genre
    assert result.predictions[0][2] == pytest.approx(5 * 0.7 + 2 * 0.3)
    assert result.usage.calls == 9
    # every scoring prompt starts with the same persona prefix (what the prompt cache reuses)
    prefix = model.calls[1].messages[0].content.split("Item:")[0]
    assert all(c.messages[0].content.startswith(prefix) for c in model.calls[1:])


def test_persona_is_bounded_and_leaks_are_reported():
    dataset = load_demo_dataset()
    history = dataset.history("demo").interactions[:10]
    long_answer = "Persona: This person likes Alien a lot. " + "They enjoy dark thrillers. " * 60
    persona = summarize_history(ScriptedChatModel([long_answer]), history, dataset.items, max_words=50)
    assert len(persona.text.split()) <= 50 and persona.truncated
    assert persona.text.endswith(".") and not persona.text.lower().startswith("persona")
    assert "Alien (1979)" in persona.leaked_titles


def test_bound_words_cuts_at_a_sentence():
    assert bound_words("One two. Three four five.", 4) == ("One two.", True)
    assert bound_words("short", 4) == ("short", False)


def test_cli_config_masks_secrets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALENS_LLM_API_KEY", "sk-should-not-show")
    (tmp_path / "personalens.toml").write_text('[llm]\napi_key = "sk-file-secret"\nmodel = "m"\n')
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert "sk-file-secret" not in result.output and "sk-should-not-show" not in result.output
    assert json.loads(result.output)["llm"]["model"] == "m"


def test_cli_data_stats_reports_file_line_and_field(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,X (1999),Drama\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,5\n1,1,abc,6\n")
    result = CliRunner().invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert "ratings.csv:3" in str(result.exception) and "'rating'" in str(result.exception)


def test_cli_data_stats_on_a_movielens_directory(tmp_path):
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,"Heat, The (1995)",Action|Crime\n2,Up (2009),(no genres listed)\n'
    )
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,5\n1,2,2,6\n2,1,3,7\n")
    result = CliRunner().invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 2, 3)
    assert stats["rating_scale"] == [0.5, 5.0, 0.5]


def test_bundled_demo_user_loads():
    dataset = load_demo_dataset()
    history = dataset.history("demo")
    assert len(history) == 32 and len(dataset.items) == 32
    assert dataset.item(history.interactions[0].item_id).text() == "Alien (1979); genres: Horror, Sci-Fi"


def test_cli_score_against_a_loopback_server(tmp_path, monkeypatch):
    from _stub_server import StubServer, chat_body

    monkeypatch.chdir(tmp_path)
    top = {"1": math.log(0.1), "2": math.log(0.9)}
    with StubServer(handler=lambda path, body: (200, {}, chat_body("2", top=top))) as server:
        result = CliRunner().invoke(
            app, ["--json", "--base-url", server.base_url, "--no-cache", "score", "pick", "--choices", "1,2"]
        )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["probabilities"] == pytest.approx({"1": 0.1, "2": 0.9})
    assert data["usage"]["calls"] == 1


def test_help_and_errors_print_brackets_as_written(tmp_path, monkeypatch, capsys):
    """Neither help text nor error messages are read as Rich markup: the extras' names survive, and a path holding
    an unmatched closing tag is reported instead of crashing the error printer."""
    import sys

    from personalens.cli import main

    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.split())
    assert "pip install 'personalens[train]'" in help_text
    bad = tmp_path / "no[/such]" / "c[bold].toml"
    monkeypatch.setattr(sys, "argv", ["personalens", "eval", "lamp", str(bad)])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert f"error: experiment file not found: {bad}" in " ".join(capsys.readouterr().err.split())
