"""The app factory. Nothing happens on import: :func:`create_app` builds one app with its own state (keys, tenants,
job workers, model and embedder), starts the workers when the app starts and stops them when it stops."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from personalens import __version__
from personalens.embed.base import Embedder
from personalens.llm.base import ChatModel
from personalens.service.config import ServiceConfig
from personalens.service.errors import BodyLimitMiddleware, install_error_handlers
from personalens.service.explorer import api as explorer_api
from personalens.service.explorer import page as explorer_page
from personalens.service.jobs import JobRunner
from personalens.service.keys import KeyRing
from personalens.service.models import GatedChatModel, Lazy
from personalens.service.routes import public, v1
from personalens.service.state import ServiceState
from personalens.service.tenants import TenantRegistry

DESCRIPTION = """Ingest user behaviours, build and refine personas in background jobs, retrieve the persona that fits
a target item (no LLM call), inspect, diff and roll back persona versions, chat with a user's agent, and delete a
user with all their data; `/explorer` is a web page over the same API. Every `/v1` endpoint needs an API key
(`Authorization: Bearer KEY` or `X-API-Key: KEY`) and sees only its tenant's users."""


def create_app(config: ServiceConfig, *, model: ChatModel | None = None, embedder: Embedder | None = None) -> FastAPI:
    """A ready-to-serve app. ``model`` / ``embedder`` (e.g. test doubles) replace the ones ``config.settings`` would
    build on first use; an injected model is not closed by the app."""

    # The service builds its model and embedder without the on-disk response and vector caches: those are shared by
    # every tenant and keyed by prompt text, so a user's behaviours would outlive DELETE /v1/users/{user} in them.
    # Unchanged users are still not rebuilt: jobs skip every user whose exact configuration is stored.
    settings = dataclasses.replace(
        config.settings,
        llm=dataclasses.replace(config.settings.llm, response_cache=False),
        embed=dataclasses.replace(config.settings.embed, cache=False),
    )

    def build_model() -> GatedChatModel:
        from personalens.factory import build_chat_model

        return GatedChatModel(build_chat_model(settings), config.llm_concurrency)

    def build_embedder() -> Embedder:
        from personalens.factory import build_embedder as factory

        return factory(settings)

    lazy_model = Lazy(build_model, None if model is None else GatedChatModel(model, config.llm_concurrency))
    lazy_embedder: Lazy[Embedder] = Lazy(build_embedder, embedder)
    state = ServiceState(
        config=config,
        keys=KeyRing(config.keys_path),
        tenants=TenantRegistry(config),
        runner=JobRunner(lazy_model.get, lazy_embedder.get, workers=config.job_workers, queue_size=config.job_queue),
        model=lazy_model,
        embedder=lazy_embedder,
        owns_model=model is None,
        owns_embedder=embedder is None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.runner.start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title=f"{config.title} service",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # FastAPI's Swagger/ReDoc pages load JavaScript from a CDN; /docs is a local page instead
        redoc_url=None,
        lifespan=lifespan,
        **_no_telemetry(),
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)
    app.include_router(public)
    app.include_router(v1)
    app.include_router(explorer_page)  # /explorer: the persona explorer page (public HTML; its data needs a key)
    app.include_router(explorer_api)
    return app


def _no_telemetry() -> dict[str, Any]:
    """FastAPI versions with native OpenTelemetry get it switched off explicitly (nothing is sent anywhere)."""
    import inspect

    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}
