"""The persona store's data model: frozen dataclasses, plus the validation and canonical JSON the store relies on.

A :class:`PersonaSet` is one version of one user's personas (PersonaX: one persona per behaviour cluster). Vectors
are float32 ``(d,)`` arrays whose dimension comes from the embedder; arrays read back from the store are read-only.
A :class:`MemoryRecord` is one entry of a user's episodic memory (PersonaAgent, Eq. 1): a past query, the user's true
response, and its metadata, with an optional embedding for top-K retrieval.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from personalens.errors import StoreError

BuildStatus = Literal["pending", "done", "failed"]
BUILD_STATUSES: tuple[str, ...] = ("pending", "done", "failed")


def canonical_json(value: Any, *, what: str = "value") -> str:
    """Sorted keys, no whitespace, no NaN/Infinity: equal configs give equal strings (and equal hashes).

    Raises :class:`StoreError` naming ``what`` when ``value`` is not plain JSON (sets, arrays, objects, NaN...).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from exc


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a configuration (sha256 of its canonical JSON, first 16 hex digits)."""
    return hashlib.sha256(canonical_json(config, what="config").encode("utf-8")).hexdigest()[:16]


def _arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True, eq=False)
class Persona:
    """One persona: the text written for one behaviour cluster, and the cluster's centroid used to retrieve it.

    ``centroid`` is the mean of the cluster's (unit) item embeddings, so it is generally *not* unit length.
    ``embedding`` is the (optional) embedding of ``text`` itself. ``meta`` must be JSON-able (usage, leaked titles…).
    """

    cluster: int
    text: str
    centroid: np.ndarray
    selected_item_ids: tuple[str, ...] = ()
    cluster_size: int = 0
    budget: int = 0
    embedding: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.selected_item_ids, tuple) and not isinstance(self.selected_item_ids, str | bytes):
            object.__setattr__(self, "selected_item_ids", tuple(self.selected_item_ids))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Persona):
            return NotImplemented
        return (
            self.cluster == other.cluster
            and self.text == other.text
            and self.selected_item_ids == other.selected_item_ids
            and self.cluster_size == other.cluster_size
            and self.budget == other.budget
            and self.meta == other.meta
            and _arrays_equal(self.centroid, other.centroid)
            and _arrays_equal(self.embedding, other.embedding)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays and a dict


@dataclass(frozen=True, eq=False)
class PersonaSet:
    """One stored version of a user's personas and everything needed to reproduce or compare it."""

    user_id: str
    version: int
    parent_version: int | None
    creator: str
    method: str
    config_hash: str
    config: dict[str, Any]
    created_at: float
    personas: tuple[Persona, ...]
    embedder_id: str
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.personas, tuple):
            object.__setattr__(self, "personas", tuple(self.personas))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PersonaSet):
            return NotImplemented
        return (
            self.user_id == other.user_id
            and self.version == other.version
            and self.parent_version == other.parent_version
            and self.creator == other.creator
            and self.method == other.method
            and self.config_hash == other.config_hash
            and self.config == other.config
            and self.created_at == other.created_at
            and self.embedder_id == other.embedder_id
            and self.note == other.note
            and self.personas == other.personas
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def dim(self) -> int:
        """The embedding dimension (0 for an empty set, which the store never holds)."""
        return int(self.personas[0].centroid.shape[0]) if self.personas else 0

    def centroids(self) -> np.ndarray:
        """``(n_personas, d)`` float32 matrix of the raw (not normalised) centroids."""
        return np.stack([p.centroid for p in self.personas]).astype(np.float32, copy=False)

    def persona(self, cluster: int) -> Persona:
        for p in self.personas:
            if p.cluster == cluster:
                return p
        raise KeyError(f"user {self.user_id!r} v{self.version} has no persona for cluster {cluster}")


@dataclass(frozen=True, eq=False)
class MemoryRecord:
    """One episodic memory of a user (PersonaAgent Eq. 1): a past ``query``, the user's true ``response``, and its
    metadata ``m_i`` (``timestamp``, ``session`` and free-form JSON-able ``metadata``).

    ``memory_id`` is chosen by the caller and unique per user (e.g. the LaMP profile entry id); re-adding the same id
    with the same content is a no-op. ``timestamp`` is seconds since the epoch (UTC) or ``None``. ``embedding`` is the
    optional float32 ``(d,)`` embedding used for retrieval, produced by the embedder named by ``embedder_id`` (``""``
    exactly when there is no embedding). ``created_at`` is set by the store when the record is first added.

    Equality compares the content and ``memory_id`` (arrays with ``array_equal``) but not ``created_at``, which is
    bookkeeping: a record read back from the store equals the record that was added.
    """

    memory_id: str
    query: str
    response: str
    timestamp: float | None = None
    session: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    embedder_id: str = ""
    created_at: float = 0.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemoryRecord):
            return NotImplemented
        return (
            self.memory_id == other.memory_id
            and self.query == other.query
            and self.response == other.response
            and self.timestamp == other.timestamp
            and self.session == other.session
            and self.metadata == other.metadata
            and self.embedder_id == other.embedder_id
            and _arrays_equal(self.embedding, other.embedding)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array and a dict


@dataclass(frozen=True)
class VersionInfo:
    """One line of a user's history, as listed by ``PersonaStore.versions``."""

    version: int
    parent_version: int | None
    creator: str
    method: str
    config_hash: str
    created_at: float
    n_personas: int
    is_current: bool
    note: str = ""


@dataclass(frozen=True)
class RunInfo:
    """A build run: its configuration and how many users are in each status."""

    run_id: str
    config_hash: str
    config: dict[str, Any]
    started_at: float
    counts: dict[str, int]


# ---------------------------------------------------------------- diff


@dataclass(frozen=True)
class PersonaChange:
    """A cluster present in both versions whose persona differs. ``fields`` names what differs."""

    cluster: int
    fields: tuple[str, ...]
    text_diff: str
    centroid_cosine: float | None


@dataclass(frozen=True)
class ConfigChange:
    """One configuration key (dotted path into nested dicts) that differs between two versions."""

    key: str
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class PersonaSetDiff:
    user_id: str
    from_version: int
    to_version: int
    added: tuple[int, ...]
    removed: tuple[int, ...]
    changed: tuple[PersonaChange, ...]
    unchanged: tuple[int, ...]
    config: tuple[ConfigChange, ...]
    metadata: dict[str, tuple[Any, Any]]

    @property
    def is_empty(self) -> bool:
        """True when the personas and the configuration are the same (creator, time and note may differ)."""
        return not (self.added or self.removed or self.changed or self.config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "added": list(self.added),
            "removed": list(self.removed),
            "unchanged": list(self.unchanged),
            "changed": [
                {
                    "cluster": c.cluster,
                    "fields": list(c.fields),
                    "text_diff": c.text_diff,
                    "centroid_cosine": c.centroid_cosine,
                }
                for c in self.changed
            ],
            "config": [{"key": c.key, "kind": c.kind, "old": c.old, "new": c.new} for c in self.config],
            "metadata": {k: list(v) for k, v in self.metadata.items()},
        }


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict) and config:
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: config}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[ConfigChange, ...]:
    a, b = _flatten(old), _flatten(new)
    changes: list[ConfigChange] = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            changes.append(ConfigChange(key, "removed", old=a[key]))
        elif key not in a:
            changes.append(ConfigChange(key, "added", new=b[key]))
        elif canonical_json(a[key]) != canonical_json(b[key]):
            changes.append(ConfigChange(key, "changed", old=a[key], new=b[key]))
    return tuple(changes)


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return None
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)) / (na * nb))


def diff_sets(old: PersonaSet, new: PersonaSet) -> PersonaSetDiff:
    """Personas matched by cluster id: added, removed, changed (with a unified diff of the text) and unchanged."""
    a = {p.cluster: p for p in old.personas}
    b = {p.cluster: p for p in new.personas}
    changed: list[PersonaChange] = []
    unchanged: list[int] = []
    for cluster in sorted(a.keys() & b.keys()):
        pa, pb = a[cluster], b[cluster]
        fields = []
        if pa.text != pb.text:
            fields.append("text")
        if not _arrays_equal(pa.centroid, pb.centroid):
            fields.append("centroid")
        if pa.selected_item_ids != pb.selected_item_ids:
            fields.append("selected_item_ids")
        if pa.cluster_size != pb.cluster_size:
            fields.append("cluster_size")
        if pa.budget != pb.budget:
            fields.append("budget")
        if not _arrays_equal(pa.embedding, pb.embedding):
            fields.append("embedding")
        if canonical_json(pa.meta) != canonical_json(pb.meta):
            fields.append("meta")
        if not fields:
            unchanged.append(cluster)
            continue
        text_diff = ""
        if "text" in fields:
            text_diff = "".join(
                difflib.unified_diff(
                    pa.text.splitlines(keepends=True),
                    pb.text.splitlines(keepends=True),
                    fromfile=f"v{old.version}/cluster-{cluster}",
                    tofile=f"v{new.version}/cluster-{cluster}",
                )
            )
            if text_diff and not text_diff.endswith("\n"):
                text_diff += "\n"
        cos = _cosine(pa.centroid, pb.centroid) if "centroid" in fields else None
        changed.append(PersonaChange(cluster, tuple(fields), text_diff, cos))
    metadata = {
        name: (getattr(old, name), getattr(new, name))
        for name in ("creator", "method", "config_hash", "embedder_id", "parent_version", "note")
        if getattr(old, name) != getattr(new, name)
    }
    return PersonaSetDiff(
        user_id=new.user_id,
        from_version=old.version,
        to_version=new.version,
        added=tuple(sorted(b.keys() - a.keys())),
        removed=tuple(sorted(a.keys() - b.keys())),
        changed=tuple(changed),
        unchanged=tuple(unchanged),
        config=config_changes(old.config, new.config),
        metadata=metadata,
    )


# ---------------------------------------------------------------- validation


def check_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _check_vector(vec: Any, what: str, dim: int | None, *, allow_zero: bool = False) -> np.ndarray:
    if not isinstance(vec, np.ndarray):
        raise StoreError(f"{what} must be a numpy float32 array, got {type(vec).__name__}")
    if vec.dtype != np.float32:
        raise StoreError(f"{what} must have dtype float32, got {vec.dtype}")
    if vec.ndim != 1 or vec.shape[0] == 0:
        raise StoreError(f"{what} must have shape (d,), got {vec.shape}")
    if dim is not None and vec.shape[0] != dim:
        raise StoreError(f"{what} has dimension {vec.shape[0]}, but this persona set's dimension is {dim}")
    if not np.all(np.isfinite(vec)):
        raise StoreError(f"{what} contains NaN or infinite values")
    if not allow_zero and not np.any(vec):
        raise StoreError(f"{what} is all zeros (its cosine to anything is undefined)")
    return vec


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def validate_personas(personas: Any) -> tuple[Persona, ...]:
    """Check a sequence of personas before anything is written (one dimension, unique clusters, JSON-able meta)."""
    if isinstance(personas, Persona) or not hasattr(personas, "__iter__"):
        raise StoreError("personas must be a sequence of Persona")
    personas = list(personas)
    if not personas:
        raise StoreError("a persona set needs at least one persona")
    dim: int | None = None
    seen: set[int] = set()
    for i, p in enumerate(personas):
        if not isinstance(p, Persona):
            raise StoreError(f"personas[{i}] is a {type(p).__name__}, not a Persona")
        if not _is_int(p.cluster):
            raise StoreError(f"personas[{i}].cluster must be an int, got {p.cluster!r}")
        if int(p.cluster) in seen:
            raise StoreError(f"cluster {p.cluster} appears twice in one persona set")
        seen.add(int(p.cluster))
        where = f"persona for cluster {p.cluster}"
        if not isinstance(p.text, str):
            raise StoreError(f"{where}: text must be a string, got {type(p.text).__name__}")
        dim = _check_vector(p.centroid, f"{where}: centroid", dim).shape[0]
        if p.embedding is not None:
            _check_vector(p.embedding, f"{where}: embedding", dim)
        if not isinstance(p.selected_item_ids, tuple) or not all(isinstance(x, str) for x in p.selected_item_ids):
            raise StoreError(f"{where}: selected_item_ids must be a tuple of strings")
        for name in ("cluster_size", "budget"):
            value = getattr(p, name)
            if not _is_int(value) or value < 0:
                raise StoreError(f"{where}: {name} must be a non-negative int, got {value!r}")
        if not isinstance(p.meta, dict):
            raise StoreError(f"{where}: meta must be a dict, got {type(p.meta).__name__}")
        canonical_json(p.meta, what=f"{where}: meta")
    return tuple(personas)


def _check_no_nul(value: str | None, what: str) -> None:
    if value is not None and "\x00" in value:
        raise StoreError(f"{what} contains a NUL character, which the store cannot keep")


def _check_timestamp(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise StoreError(f"{what} must be a number of seconds since the epoch or None, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise StoreError(f"{what} must be finite, got {value!r}")
    return seconds


def validate_memories(records: Any) -> tuple[MemoryRecord, ...]:
    """Check memory records before anything is written; every message names the record's index and id and the field.

    Rules: ``memory_id``, ``query`` and ``response`` are non-empty strings; ``timestamp`` is None or a finite number;
    ``session`` is None or a string; ``metadata`` a JSON-able dict; ``embedding`` None or a finite float32 ``(d,)``
    array with one ``d`` for the whole call (all zeros is allowed, unlike persona centroids: an embedder may give that
    for a degenerate text, and one such record should not sink a batch); ``embedder_id`` is a non-empty string with an
    embedding and ``""`` without one. No text may contain a NUL character (PostgreSQL cannot store it; SQLite refuses
    it too, so both backends accept the same records).
    """
    if isinstance(records, MemoryRecord | str | bytes | dict) or not hasattr(records, "__iter__"):
        raise StoreError(f"records must be a sequence of MemoryRecord, got {type(records).__name__}")
    records = list(records)
    dim: tuple[int, int] | None = None  # (dimension, index of the first record with an embedding)
    for i, r in enumerate(records):
        if not isinstance(r, MemoryRecord):
            raise StoreError(f"memory record {i} is a {type(r).__name__}, not a MemoryRecord")
        if not isinstance(r.memory_id, str) or not r.memory_id.strip():
            raise StoreError(f"memory record {i}: memory_id must be a non-empty string, got {r.memory_id!r}")
        where = f"memory record {i} (id {r.memory_id!r})"
        _check_no_nul(r.memory_id, f"{where}: memory_id")
        for name in ("query", "response"):
            _check_no_nul(check_text(getattr(r, name), f"{where}: {name}"), f"{where}: {name}")
        _check_timestamp(r.timestamp, f"{where}: timestamp")
        if r.session is not None and not isinstance(r.session, str):
            raise StoreError(f"{where}: session must be a string or None, got {type(r.session).__name__}")
        _check_no_nul(r.session, f"{where}: session")
        if not isinstance(r.metadata, dict):
            raise StoreError(f"{where}: metadata must be a dict, got {type(r.metadata).__name__}")
        canonical_json(r.metadata, what=f"{where}: metadata")
        if not isinstance(r.embedder_id, str):
            raise StoreError(f"{where}: embedder_id must be a string, got {type(r.embedder_id).__name__}")
        if r.embedding is None:
            if r.embedder_id:
                raise StoreError(
                    f"{where}: embedder_id must be empty when there is no embedding, got {r.embedder_id!r}"
                )
            continue
        d = int(_check_vector(r.embedding, f"{where}: embedding", None, allow_zero=True).shape[0])
        if dim is None:
            dim = (d, i)
        elif d != dim[0]:
            raise StoreError(
                f"{where}: embedding has dimension {d}, but memory record {dim[1]} in the same call has dimension "
                f"{dim[0]} (all of a user's memory embeddings share one dimension)"
            )
        check_text(r.embedder_id, f"{where}: embedder_id (required with an embedding)")
        _check_no_nul(r.embedder_id, f"{where}: embedder_id")
    return tuple(records)
