"""The persona-store contract. :class:`~personalens.store.PersonaStore` (SQLite) and
:class:`~personalens.store.postgres.PostgresPersonaStore` (PostgreSQL) implement it with the same semantics, so its
callers (the offline build, the retrieval index, the CLI, the per-user agent's episodic memory) work on either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from personalens.store.models import MemoryRecord, Persona, PersonaSet, PersonaSetDiff, RunInfo, VersionInfo


@runtime_checkable
class PersonaStoreProtocol(Protocol):
    """Versioned, append-only storage of persona sets, with a ``current`` pointer per user and build bookkeeping.

    Implementations must make :meth:`save` and :meth:`add_memories` atomic, give concurrent writers distinct version
    numbers, store a memory added by concurrent writers once, validate every input before writing, and raise
    :class:`~personalens.errors.StoreError` for refused inputs and failed writes.
    """

    def save(
        self,
        user_id: str,
        personas: Sequence[Persona],
        *,
        creator: str,
        method: str,
        config: dict[str, Any],
        config_hash: str,
        embedder_id: str,
        parent_version: int | Literal["current"] | None = None,
        note: str = "",
        make_current: bool = True,
    ) -> PersonaSet: ...

    def current(self, user_id: str) -> PersonaSet | None: ...

    def get(self, user_id: str, version: int) -> PersonaSet | None: ...

    def set_current(self, user_id: str, version: int) -> None: ...

    def versions(self, user_id: str) -> list[VersionInfo]: ...

    def users(self, *, limit: int | None = None, offset: int = 0) -> list[str]: ...

    def count_users(self) -> int: ...

    def find(self, user_id: str, config_hash: str) -> PersonaSet | None: ...

    def iter_current(self, *, batch_size: int = 512) -> Iterator[PersonaSet]: ...

    def diff(self, user_id: str, v1: int, v2: int) -> PersonaSetDiff: ...

    def rollback(
        self, user_id: str, version: int, *, creator: str = "rollback", note: str | None = None
    ) -> PersonaSet: ...

    def delete_user(self, user_id: str) -> int:
        """Remove everything of the user (persona versions, build-status rows, episodic memories); returns the number
        of rows removed (0 for an unknown user)."""
        ...

    # -- episodic memory (PersonaAgent Eq. 1): independent of persona sets, deleted with the user

    def add_memories(self, user_id: str, records: Sequence[MemoryRecord]) -> int:
        """Add records atomically after validating all of them; an id already stored with identical content is
        skipped, with different content refused (nothing written). Returns how many were newly inserted."""
        ...

    def memories(
        self,
        user_id: str,
        *,
        before: float | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[MemoryRecord]:
        """Records without a timestamp first (insertion order), then by timestamp (ties in insertion order), or the
        exact reverse with ``newest_first``; ``before`` keeps ``timestamp < before`` only; ``limit`` applies last."""
        ...

    def count_memories(self, user_id: str) -> int: ...

    def memory_users(self) -> list[str]: ...

    def delete_memories(self, user_id: str, memory_ids: Sequence[str] | None = None) -> int: ...

    def start_run(self, run_id: str, config_hash: str, config: dict[str, Any]) -> RunInfo: ...

    def run_info(self, run_id: str) -> RunInfo | None: ...

    def mark_build(
        self,
        run_id: str,
        user_id: str,
        status: str,
        *,
        error: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None: ...

    def build_status(self, run_id: str) -> dict[str, str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...
