"""Everything a running service holds, in one object on ``app.state.service`` (no module-level globals)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from personalens.embed.base import Embedder
from personalens.service.config import ServiceConfig
from personalens.service.jobs import JobRunner
from personalens.service.keys import KeyRing
from personalens.service.models import GatedChatModel, Lazy
from personalens.service.tenants import TenantRegistry


@dataclass
class ServiceState:
    config: ServiceConfig
    keys: KeyRing
    tenants: TenantRegistry
    runner: JobRunner
    model: Lazy[GatedChatModel]
    embedder: Lazy[Embedder]
    owns_model: bool
    owns_embedder: bool

    def close(self) -> None:
        self.runner.stop()
        self.tenants.close()
        model = self.model.peek()
        if model is not None and self.owns_model:
            model.close()


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
