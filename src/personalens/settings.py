"""Settings from defaults < a TOML file < environment variables < explicit overrides (CLI flags).

The file is ``personalens.toml`` in the working directory unless a path is given (or ``$PERSONALENS_CONFIG``)::

    [llm]
    base_url = "http://localhost:11434/v1"   # any OpenAI-compatible server; leave unset for the embedded model
    model = "qwen2.5:1.5b-instruct"

Environment variables are ``PERSONALENS_<SECTION>_<FIELD>`` (``PERSONALENS_LLM_BASE_URL``, ``PERSONALENS_LLM_MODEL``,
``PERSONALENS_LLM_API_KEY``, ``PERSONALENS_EMBED_BASE_URL`` …). Setting ``llm.base_url`` alone switches the chat
backend from the embedded model to that server. The API key is read from ``PERSONALENS_LLM_API_KEY`` or from the
variable named by ``llm.api_key_env`` (default ``OPENAI_API_KEY``); it is never written out by :meth:`Settings.public`.

``store`` (``PERSONALENS_STORE``) is the persona store: a SQLite file, or a ``postgresql://`` URL for the PostgreSQL
store; a password in that URL is masked by :meth:`Settings.public` too.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from personalens._files import default_cache_dir
from personalens.errors import ConfigError


@dataclass(slots=True)
class LLMSettings:
    backend: str = "auto"  # auto | embedded | openai
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    model_path: str | None = None  # a GGUF file for the embedded backend; default: the pinned Qwen2.5-Coder-1.5B
    lora: str | None = None  # a llama.cpp LoRA GGUF applied by the embedded backend (e.g. a trained refiner)
    lora_scale: float = 1.0
    n_ctx: int = 4096
    n_threads: int = 0  # 0 = all cores
    timeout: float = 120.0
    max_retries: int = 4
    max_concurrency: int = 4
    native_tools: bool = False  # the OpenAI-compatible server handles `tools`/`tool_calls` (the agent uses them)
    response_cache: bool = True
    max_tokens_total: int | None = None
    max_calls: int | None = None
    max_seconds: float | None = None

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "openai" if self.base_url else "embedded"
        if self.backend not in ("embedded", "openai"):
            raise ConfigError(f"llm.backend must be auto, embedded or openai, not {self.backend!r}")
        return self.backend


@dataclass(slots=True)
class EmbedSettings:
    backend: str = "auto"  # auto | minilm | openai
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = 64
    cache: bool = True

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "openai" if self.base_url else "minilm"
        if self.backend not in ("minilm", "openai"):
            raise ConfigError(f"embed.backend must be auto, minilm or openai, not {self.backend!r}")
        return self.backend


@dataclass(slots=True)
class Settings:
    llm: LLMSettings = field(default_factory=LLMSettings)
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    cache_dir: str = ""
    store: str = "personas.sqlite"  # the persona store: a SQLite file (relative to the working directory) or a
    # postgresql:// URL (the PostgreSQL store, extra "postgres"); PERSONALENS_STORE sets it too
    seed: int = 0

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def llm_api_key(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return self.llm.api_key or env.get("PERSONALENS_LLM_API_KEY") or env.get(self.llm.api_key_env) or None

    def embed_api_key(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return self.embed.api_key or env.get("PERSONALENS_EMBED_API_KEY") or env.get(self.embed.api_key_env) or None

    def public(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced by ``"***"`` (safe to print or log)."""
        d = dataclasses.asdict(self)
        for section in ("llm", "embed"):
            if d[section].get("api_key"):
                d[section]["api_key"] = "***"
        d["cache_dir"] = str(self.cache_path)
        from personalens.store.postgres import is_postgres_url, redact_dsn  # no psycopg import

        if is_postgres_url(self.store):
            d["store"] = redact_dsn(self.store)
        return d

    def __repr__(self) -> str:
        return f"Settings({self.public()!r})"


def _coerce(value: Any, kind: Any, where: str) -> Any:
    text = str(kind)
    if value is None:
        return None
    try:
        if "bool" in text and not isinstance(value, bool):
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if text.startswith("int") and not isinstance(value, int):
            return None if str(value).strip().lower() in ("", "none") else int(value)
        if text.startswith("float") and not isinstance(value, (int, float)):
            return None if str(value).strip().lower() in ("", "none") else float(value)
        if text.startswith("str") and not isinstance(value, str):
            raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{where}: cannot use {value!r} as {text}") from None
    return value


def _apply(target: Any, values: Mapping[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(target)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where}[{key}]")
        else:
            setattr(target, key, _coerce(value, known[key].type, f"{where}: {key}"))


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings: defaults, then the TOML file, then ``PERSONALENS_*`` variables, then ``overrides``
    (a nested dict like ``{"llm": {"base_url": ...}}``). An explicitly named file must exist."""
    env = os.environ if env is None else env
    settings = Settings()
    explicit = path or env.get("PERSONALENS_CONFIG")
    file = Path(explicit) if explicit else Path("personalens.toml")
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        _apply(settings, data, str(file))
    elif explicit:
        raise ConfigError(f"settings file not found: {file}")
    from_env: dict[str, Any] = {}
    sections = {"LLM": "llm", "EMBED": "embed"}
    for name, value in env.items():
        if not name.startswith("PERSONALENS_") or name in ("PERSONALENS_CONFIG",):
            continue
        rest = name[len("PERSONALENS_") :]
        head, _, tail = rest.partition("_")
        if head in sections and tail:
            from_env.setdefault(sections[head], {})[tail.lower()] = value
        elif rest in ("CACHE_DIR", "SEED", "STORE"):
            from_env[rest.lower()] = value
    _apply(settings, from_env, "environment")
    if overrides:
        _apply(settings, overrides, "overrides")
    settings.llm.resolved_backend()
    settings.embed.resolved_backend()
    if settings.llm.resolved_backend() == "openai" and not settings.llm.base_url:
        raise ConfigError("llm.backend = openai needs llm.base_url")
    return settings
