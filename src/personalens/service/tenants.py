"""Tenants are isolated by construction: each has its own persona store (a SQLite file in its own folder, or its own
PostgreSQL schema), its own behaviour log and job records, and its own in-memory persona index. A request is only
ever served from the resources of the tenant its API key belongs to, so another tenant's users simply do not exist
for it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from personalens.errors import StoreError
from personalens.retrieval import PersonaIndex
from personalens.service.config import ServiceConfig
from personalens.service.keys import check_tenant
from personalens.service.tenantdb import TenantDB
from personalens.store import PersonaStore, PersonaStoreProtocol


@dataclass
class Tenant:
    name: str
    store: PersonaStoreProtocol
    db: TenantDB
    index: PersonaIndex
    lock: threading.RLock = field(default_factory=threading.RLock)  # serialises user deletes with job writes

    def close(self) -> None:
        self.store.close()
        self.db.close()


def postgres_schema(store_url: str, tenant: str) -> str:
    from urllib.parse import parse_qsl, urlsplit

    params = dict(parse_qsl(urlsplit(store_url).query))
    schema = f"{params.get('schema') or 'personalens'}_t_{tenant}"
    if len(schema) > 63:
        raise StoreError(f"schema name {schema!r} is longer than PostgreSQL's 63 characters; use a shorter ?schema=")
    return schema


def open_store(config: ServiceConfig, tenant: str) -> PersonaStoreProtocol:
    check_tenant(tenant)
    if config.store_url is not None:
        from personalens.store.postgres import PostgresPersonaStore

        return PostgresPersonaStore(config.store_url, schema=postgres_schema(config.store_url, tenant))
    return PersonaStore(config.data_dir / tenant / "personas.sqlite")


class TenantRegistry:
    """Opens a tenant's resources on first use and keeps them open; a failed open is not cached (the next request
    tries again), and is raised as :class:`StoreError`."""

    def __init__(self, config: ServiceConfig, embedder_id: str | None = None) -> None:
        self.config = config
        self.embedder_id = embedder_id
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, name: str) -> Tenant:
        tenant = self._tenants.get(name)
        if tenant is not None:
            return tenant
        with self._lock:
            if self._closed:
                raise StoreError("the service is shutting down")
            tenant = self._tenants.get(name)
            if tenant is None:
                tenant = self._open(name)
                self._tenants[name] = tenant
            return tenant

    def _open(self, name: str) -> Tenant:
        check_tenant(name)
        try:
            db = TenantDB(self.config.data_dir / name / "service.sqlite")
        except OSError as exc:
            raise StoreError(f"tenant {name}: cannot open the service database: {exc}") from exc
        try:
            store = open_store(self.config, name)
        except OSError as exc:  # the store reports a file that is not a database itself, as a StoreError
            db.close()
            raise StoreError(f"tenant {name}: cannot open the persona store: {exc}") from exc
        except BaseException:
            db.close()
            raise
        db.interrupt_active_jobs()  # left queued/running by a previous process: they will never finish
        return Tenant(name, store, db, PersonaIndex(embedder_id=self.embedder_id, store=store))

    def opened(self) -> list[Tenant]:
        return list(self._tenants.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            tenants, self._tenants = list(self._tenants.values()), {}
        for tenant in tenants:
            tenant.close()
