"""Versioned persona storage: every persona set ever built, per user, with a ``current`` pointer, diffs, rollback,
deletion and the bookkeeping that makes offline builds resumable; and each user's episodic memory
(:class:`MemoryRecord`: past query, true response, metadata, optional embedding), deleted with the user.

    from personalens.store import Persona, PersonaStore

    with PersonaStore("personas.sqlite") as store:
        store.save("u1", personas, creator="personax-build", method="summarize",
                   config=cfg, config_hash=config_hash(cfg), embedder_id=embedder.model_id)
        store.current("u1")

``PostgresPersonaStore`` (``personalens.store.postgres``) implements the same contract on PostgreSQL; it is exported
here lazily, so importing this package never needs psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from personalens.errors import StoreError
from personalens.store.base import PersonaStoreProtocol
from personalens.store.models import (
    BUILD_STATUSES,
    ConfigChange,
    MemoryRecord,
    Persona,
    PersonaChange,
    PersonaSet,
    PersonaSetDiff,
    RunInfo,
    VersionInfo,
    canonical_json,
    config_hash,
    diff_sets,
)
from personalens.store.sqlite import APPLICATION_ID, MIGRATIONS, PersonaStore, schema_version

if TYPE_CHECKING:
    from personalens.store.postgres import PostgresPersonaStore


def __getattr__(name: str) -> Any:
    if name == "PostgresPersonaStore":  # imported on first use; psycopg itself only when a store is constructed
        from personalens.store.postgres import PostgresPersonaStore

        return PostgresPersonaStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APPLICATION_ID",
    "BUILD_STATUSES",
    "MIGRATIONS",
    "ConfigChange",
    "MemoryRecord",
    "Persona",
    "PersonaChange",
    "PersonaSet",
    "PersonaSetDiff",
    "PersonaStore",
    "PersonaStoreProtocol",
    "PostgresPersonaStore",
    "RunInfo",
    "StoreError",
    "VersionInfo",
    "canonical_json",
    "config_hash",
    "diff_sets",
    "schema_version",
]
