"""Versioned persona storage: every persona set ever built, per user, with a ``current`` pointer, diffs, rollback,
deletion and the bookkeeping that makes offline builds resumable.

    from personalens.store import Persona, PersonaStore

    with PersonaStore("personas.sqlite") as store:
        store.save("u1", personas, creator="personax-build", method="summarize",
                   config=cfg, config_hash=config_hash(cfg), embedder_id=embedder.model_id)
        store.current("u1")
"""

from personalens.errors import StoreError
from personalens.store.base import PersonaStoreProtocol
from personalens.store.models import (
    BUILD_STATUSES,
    ConfigChange,
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

__all__ = [
    "APPLICATION_ID",
    "BUILD_STATUSES",
    "MIGRATIONS",
    "ConfigChange",
    "Persona",
    "PersonaChange",
    "PersonaSet",
    "PersonaSetDiff",
    "PersonaStore",
    "PersonaStoreProtocol",
    "RunInfo",
    "StoreError",
    "VersionInfo",
    "canonical_json",
    "config_hash",
    "diff_sets",
    "schema_version",
]
