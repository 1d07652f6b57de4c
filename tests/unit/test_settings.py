import pytest

from personalens.errors import ConfigError
from personalens.settings import load_settings


def test_defaults_use_the_embedded_backends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.llm.resolved_backend() == "embedded" and s.embed.resolved_backend() == "minilm"


def test_precedence_file_then_env_then_overrides(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[llm]\nmodel = "from-file"\nn_ctx = 2048\nbase_url = "http://file:1/v1"\n')
    env = {"PERSONALENS_LLM_MODEL": "from-env", "PERSONALENS_LLM_MAX_RETRIES": "7"}
    s = load_settings(f, env=env, overrides={"llm": {"base_url": "http://flag:2/v1"}})
    assert s.llm.model == "from-env" and s.llm.n_ctx == 2048 and s.llm.max_retries == 7
    assert s.llm.base_url == "http://flag:2/v1" and s.llm.resolved_backend() == "openai"


def test_one_setting_switches_to_a_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={"PERSONALENS_LLM_BASE_URL": "http://127.0.0.1:11434/v1"})
    assert s.llm.resolved_backend() == "openai"


def test_api_key_from_env_and_never_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={"PERSONALENS_LLM_API_KEY": "sk-1"}, overrides={"llm": {"api_key": "sk-2"}})
    assert s.llm_api_key() == "sk-2"
    assert "sk-2" not in repr(s) and s.public()["llm"]["api_key"] == "***"
    s2 = load_settings(env={})
    assert s2.llm_api_key(env={"OPENAI_API_KEY": "sk-3"}) == "sk-3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[llm]\nmodle = 'x'\n", "unknown setting 'modle'"),
        ("[llm]\nn_ctx = 'big'\n", "cannot use 'big'"),
        ("[llm\n", "p.toml"),
        ("[llm]\nbackend = 'magic'\n", "llm.backend must be"),
    ],
)
def test_bad_files_are_named(tmp_path, text, message):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(f, env={})


def test_named_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})
