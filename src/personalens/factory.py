"""Build the configured backends from :class:`~personalens.settings.Settings`.

The chat model comes wrapped as: backend → response cache (optional) → usage meter with the run's budget, so every
call of a run is cached, counted and capped in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from personalens._retry import RetryPolicy
from personalens.embed.base import Embedder
from personalens.embed.cache import CachedEmbedder
from personalens.llm.base import ChatModel
from personalens.llm.cache import CachedChatModel, ResponseCache
from personalens.llm.usage import Budget, UsageMeter
from personalens.settings import Settings

if TYPE_CHECKING:
    from personalens.jobs.executors import LLMLimiter
    from personalens.store import PersonaStore
    from personalens.store.postgres import PostgresPersonaStore


def build_backend(settings: Settings) -> ChatModel:
    """The bare chat backend the settings name (no cache, no meter)."""
    llm = settings.llm
    if llm.resolved_backend() == "openai":
        from personalens.llm.openai_compat import OpenAICompatibleModel

        assert llm.base_url is not None
        return OpenAICompatibleModel(
            llm.base_url,
            llm.model or "default",
            api_key=settings.llm_api_key(),
            timeout=llm.timeout,
            retry=RetryPolicy(max_attempts=llm.max_retries + 1),
            max_concurrency=llm.max_concurrency,
            native_tools=llm.native_tools,
        )
    from personalens.llm.embedded import LlamaCppModel

    return LlamaCppModel(
        llm.model_path,
        cache_dir=settings.cache_path,
        n_ctx=llm.n_ctx,
        n_threads=llm.n_threads or None,
        lora=[(llm.lora, llm.lora_scale)] if llm.lora else (),
    )


def build_chat_model(
    settings: Settings, *, refresh_cache: bool = False, limiter: LLMLimiter | None = None
) -> UsageMeter:
    """The chat model for a run: backend, response cache (``llm.response_cache``), usage meter and budget.

    ``limiter`` (a distributed job's global LLM concurrency limit) wraps the bare backend, below the cache.
    """
    model: ChatModel = build_backend(settings)
    if limiter is not None:
        from personalens.jobs.executors import LimitedChatModel

        model = LimitedChatModel(model, limiter)
    if settings.llm.response_cache:
        cache = ResponseCache(Path(settings.cache_path) / "responses.sqlite")
        model = CachedChatModel(model, cache, refresh=refresh_cache)
    budget = Budget(settings.llm.max_tokens_total, settings.llm.max_calls, settings.llm.max_seconds)
    return UsageMeter(model, budget)


def build_embedder(settings: Settings) -> Embedder:
    """The configured embedder, with the on-disk vector cache when ``embed.cache`` is on."""
    emb = settings.embed
    embedder: Embedder
    if emb.resolved_backend() == "openai":
        from personalens.embed.openai_compat import OpenAICompatibleEmbedder
        from personalens.llm.openai_compat import HTTPClient

        assert emb.base_url is not None
        http = HTTPClient(emb.base_url, api_key=settings.embed_api_key(), timeout=settings.llm.timeout)
        embedder = OpenAICompatibleEmbedder(http, emb.model or "default", batch_size=emb.batch_size)
    else:
        from personalens.embed.minilm import MiniLMEmbedder

        embedder = MiniLMEmbedder(batch_size=emb.batch_size)
    if emb.cache:
        embedder = CachedEmbedder(embedder, Path(settings.cache_path) / "embeddings.sqlite")
    return embedder


def build_store(settings: Settings, location: str | Path | None = None) -> PersonaStore | PostgresPersonaStore:
    """Open the persona store at ``location`` (default: the ``store`` setting).

    A ``postgresql://`` (or ``postgres://``) URL opens :class:`~personalens.store.postgres.PostgresPersonaStore`
    (psycopg from the ``postgres`` extra; ``?schema=NAME`` picks the schema); anything else is a SQLite file path.
    Either way the schema is created or upgraded on open.
    """
    from personalens.store.postgres import is_postgres_url

    target = settings.store if location is None else location
    if is_postgres_url(target):
        from personalens.store.postgres import PostgresPersonaStore

        return PostgresPersonaStore(str(target))
    from personalens.store import PersonaStore

    return PersonaStore(Path(target))
