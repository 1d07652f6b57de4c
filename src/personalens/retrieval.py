"""Online persona selection (PersonaX §3.4): at request time pick the persona whose cluster centroid is most similar
(cosine) to the target item's embedding. No LLM call, and no database query per request when serving from the index.

:class:`PersonaIndex` holds every user's current personas in memory: one contiguous float32 matrix of L2-normalised
centroids (and one of persona-text embeddings), with a ``(start, count)`` slice per user. A lookup is a dict access
plus a ``(count, d) @ (d,)`` product; :meth:`PersonaIndex.retrieve_many` scores a whole batch with one gather and one
batched matrix product.

Writers (``add``, ``refresh``, ``remove``) take a lock; readers take none. Rows are never overwritten in place: a
re-saved user's new rows are appended and the user's slice is swapped atomically; when the buffer is full a new,
compacted buffer is built and swapped in as a whole. A reader therefore always sees one consistent version of a user.

:func:`retrieve_from_store` does the same selection straight from a store (one query per request) for scripts and for
comparison; it is what the index exists to avoid on the serving path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np

from personalens.errors import PersonaLensError, StoreError
from personalens.store import PersonaSet, PersonaStoreProtocol

Use = Literal["centroid", "persona", "both"]
_USES = ("centroid", "persona", "both")


class UnknownUserError(PersonaLensError, KeyError):
    """The user has no personas in the index (or store)."""

    def __init__(self, user_id: str, where: str = "persona index") -> None:
        super().__init__(user_id)
        self.user_id = user_id
        self.message = f"user {user_id!r} has no personas in the {where}"

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return self.message


class DimensionMismatchError(PersonaLensError, ValueError):
    """Vectors from another embedding space than the index's: a target or persona set of another dimension, or a
    persona set built with another embedder."""


class RetrievedPersona(NamedTuple):
    """One selected persona. ``score`` is the cosine that ranked it; ``matched`` says which vector gave it.

    An immutable named tuple rather than a frozen dataclass: it is built on every request, and this is 2x cheaper.
    """

    user_id: str
    cluster: int
    text: str
    score: float
    rank: int
    version: int
    config_hash: str
    matched: Literal["centroid", "persona"]


@dataclass(frozen=True)
class _Entry:
    start: int
    count: int
    version: int
    config_hash: str
    has_embeddings: bool


@dataclass(frozen=True)
class _State:
    """Everything a reader needs, swapped as one object when the buffers are replaced."""

    centroids: np.ndarray  # (capacity, d) float32, unit rows
    embeddings: np.ndarray | None  # like centroids for persona-text embeddings (zero rows where absent), or None
    has_embedding: np.ndarray  # (capacity,) bool
    clusters: np.ndarray  # (capacity,) int64
    texts: list[str]  # per row
    entries: dict[str, _Entry]
    used: int  # rows [0, used) are written (live or dead)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def _check_use(use: str) -> None:
    if use not in _USES:
        raise ValueError(f"use must be one of {_USES}, got {use!r}")


def _check_k(k: int) -> None:
    if k.__class__ is int and k >= 1:  # the common case, checked first: this runs on every request
        return
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _check_target(target: np.ndarray, dim: int | None, embedder_id: str | None) -> tuple[np.ndarray, float]:
    t = np.asarray(target, dtype=np.float32)
    if t.ndim != 1 or t.shape[0] != dim:
        raise DimensionMismatchError(
            f"target embedding has shape {t.shape}, the personas hold {dim}-d vectors ({embedder_id})"
        )
    norm = math.sqrt(float(t @ t))
    if not (norm > 0.0 and math.isfinite(norm)):
        raise ValueError("target embedding is all zeros or not finite")
    return t, norm


def _dot(matrix: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(n, d) @ (d,) -> (n,)``, or batched ``(b, n, d) @ (b, d) -> (b, n)``."""
    return matrix @ t if t.ndim == 1 else np.matmul(matrix, t[:, :, None])[..., 0]


def _scores(
    centroids: np.ndarray, embeddings: np.ndarray | None, has: np.ndarray | None, t: np.ndarray, use: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cosine scores (times the target's norm) and, unless ``use="centroid"``, where the persona embedding won.

    Rows are unit vectors, so a dot product is the cosine up to the target's norm, which does not change the order.
    Personas without a text embedding score ``-inf`` under ``"persona"`` and fall back to the centroid under ``"both"``.
    """
    if use == "centroid":
        return _dot(centroids, t), None
    assert embeddings is not None and has is not None
    persona = np.where(has, _dot(embeddings, t), -np.inf)
    if use == "persona":
        return persona, has
    centroid = _dot(centroids, t)
    won = persona > centroid
    return np.where(won, persona, centroid), won


def _without_embeddings(use: Use, user_id: str, version: int) -> Use:
    """The mode to use for a user none of whose personas has a text embedding: "both" falls back to the centroids,
    "persona" cannot be served."""
    if use == "persona":
        raise StoreError(f"user {user_id!r} v{version} has no persona-text embeddings (use 'centroid' or 'both')")
    return "centroid"


def _top(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(position, score) of the ``k`` best finite scores, best first; ties keep the stored (cluster) order."""
    if k == 1:
        i = int(scores.argmax())
        best = float(scores[i])
        return [] if best == -math.inf else [(i, best)]
    else:
        order = np.argsort(-scores, kind="stable")[:k]
        pairs = list(zip(order.tolist(), scores[order].tolist(), strict=True))
    return [(i, s) for i, s in pairs if s != -math.inf]


class PersonaIndex:
    """In-memory per-user centroid matrices for persona selection without an LLM or a database on the request path.

    ``embedder_id`` / ``dim`` fix which embedding space the index serves; when omitted they are taken from the first
    persona set added. Every set added must match both (cosines across embedders mean nothing).
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        embedder_id: str | None = None,
        store: PersonaStoreProtocol | None = None,
        capacity: int = 1024,
    ) -> None:
        self.dim = dim
        self.embedder_id = embedder_id
        self.store = store
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._initial_capacity = max(int(capacity), 1)
        self._dead = 0

    # ------------------------------------------------------------ building

    @classmethod
    def from_store(
        cls, store: PersonaStoreProtocol, *, embedder_id: str | None = None, batch_size: int = 1024
    ) -> PersonaIndex:
        """Load the current persona set of every user. The store is kept for :meth:`refresh` only."""
        sets = list(store.iter_current(batch_size=batch_size))
        index = cls(store=store, embedder_id=embedder_id)
        index.add_many(sets)
        return index

    def add(self, persona_set: PersonaSet) -> None:
        """Add a user's set, replacing whatever the index held for that user."""
        self.add_many([persona_set])

    def add_many(self, persona_sets: Sequence[PersonaSet]) -> None:
        """Add several sets in one go (one buffer write, one growth at most)."""
        if not persona_sets:
            return
        with self._lock:
            dim, embedder = self.dim, self.embedder_id
            for ps in persona_sets:
                if not isinstance(ps, PersonaSet):
                    raise TypeError(f"expected a PersonaSet, got {type(ps).__name__}")
                if not ps.personas:
                    raise StoreError(f"user {ps.user_id!r} v{ps.version} has no personas")
                embedder = embedder or ps.embedder_id
                dim = dim or ps.dim
                if ps.embedder_id != embedder:
                    raise DimensionMismatchError(
                        f"user {ps.user_id!r} v{ps.version} was embedded with {ps.embedder_id!r}, "
                        f"but the index serves {embedder!r}"
                    )
                if ps.dim != dim:
                    raise DimensionMismatchError(
                        f"user {ps.user_id!r} v{ps.version} has dimension {ps.dim}, the index has {dim}"
                    )
            self.dim, self.embedder_id = dim, embedder
            latest = {ps.user_id: ps for ps in persona_sets}  # the last set given for a user wins
            self._append(list(latest.values()))

    def _append(self, sets: list[PersonaSet]) -> None:
        assert self.dim is not None
        d = self.dim
        n_new = sum(len(ps.personas) for ps in sets)
        centroids = np.empty((n_new, d), dtype=np.float32)
        clusters = np.empty(n_new, dtype=np.int64)
        has = np.zeros(n_new, dtype=bool)
        embeddings: np.ndarray | None = None
        texts: list[str] = []
        row = 0
        for ps in sets:
            for p in ps.personas:
                centroids[row] = p.centroid
                if p.embedding is not None:
                    if embeddings is None:
                        embeddings = np.zeros((n_new, d), dtype=np.float32)
                    embeddings[row] = p.embedding
                    has[row] = True
                clusters[row] = p.cluster
                texts.append(p.text)
                row += 1
        centroids = _unit_rows(centroids)  # centroids are means of unit vectors: not unit themselves

        state = self._state
        replaced = sum(state.entries[ps.user_id].count for ps in sets if state and ps.user_id in state.entries)
        if (
            state is None
            or state.used + n_new > state.centroids.shape[0]
            or (embeddings is not None and state.embeddings is None)
        ):
            state = self._grow(state, n_new, with_embeddings=embeddings is not None)
        start, stop = state.used, state.used + n_new
        state.centroids[start:stop] = centroids
        if embeddings is not None:
            assert state.embeddings is not None
            state.embeddings[start:stop] = _unit_rows(embeddings)
        state.has_embedding[start:stop] = has
        state.clusters[start:stop] = clusters
        state.texts[start:stop] = texts
        new_entries = {}
        row = start
        for ps in sets:
            n = len(ps.personas)
            with_emb = bool(has[row - start : row - start + n].any())
            new_entries[ps.user_id] = _Entry(row, n, ps.version, ps.config_hash, with_emb)
            row += n
        # Publish: the rows are written (above) before any entry points at them; each dict assignment is atomic.
        state = replace(state, used=stop)
        self._state = state
        state.entries.update(new_entries)
        self._dead += replaced

    def _grow(self, state: _State | None, n_new: int, *, with_embeddings: bool) -> _State:
        """A new buffer holding only the live rows (compaction) with room for ``n_new`` more; swapped in whole.

        Readers holding the old state keep using the old buffers, which stay valid and unchanged.
        """
        assert self.dim is not None
        live = 0 if state is None else state.used - self._dead
        need = live + n_new
        capacity = need + max(self._initial_capacity, need // 8)  # 12.5% slack: amortised O(1) appends
        d = self.dim
        with_embeddings = with_embeddings or (state is not None and state.embeddings is not None)
        centroids = np.zeros((capacity, d), dtype=np.float32)
        embeddings = np.zeros((capacity, d), dtype=np.float32) if with_embeddings else None
        has = np.zeros(capacity, dtype=bool)
        clusters = np.zeros(capacity, dtype=np.int64)
        texts: list[str] = [""] * capacity
        entries: dict[str, _Entry] = {}
        used = 0
        if state is not None:
            for user_id, e in list(state.entries.items()):
                src, dst = slice(e.start, e.start + e.count), slice(used, used + e.count)
                centroids[dst] = state.centroids[src]
                if embeddings is not None and state.embeddings is not None:
                    embeddings[dst] = state.embeddings[src]
                has[dst] = state.has_embedding[src]
                clusters[dst] = state.clusters[src]
                texts[dst] = state.texts[src]
                entries[user_id] = replace(e, start=used)
                used += e.count
        self._dead = 0
        grown = _State(centroids, embeddings, has, clusters, texts, entries, used)
        self._state = grown
        return grown

    def remove(self, user_id: str) -> bool:
        """Drop a user from the index. Returns whether it was there."""
        with self._lock:
            state = self._state
            if state is None or user_id not in state.entries:
                return False
            entry = state.entries.pop(user_id)
            self._dead += entry.count
            return True

    def refresh(self, user_id: str) -> PersonaSet | None:
        """Re-read the user's current set from the store (e.g. after a re-save or a rollback); drop the user when the
        store no longer has one. Returns the set now served."""
        if self.store is None:
            raise StoreError("this index has no store to refresh from (build it with PersonaIndex.from_store)")
        persona_set = self.store.current(user_id)
        if persona_set is None:
            self.remove(user_id)
            return None
        self.add(persona_set)
        return persona_set

    # ------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return 0 if self._state is None else len(self._state.entries)

    def __contains__(self, user_id: object) -> bool:
        return self._state is not None and user_id in self._state.entries

    @property
    def n_personas(self) -> int:
        state = self._state
        return 0 if state is None else sum(e.count for e in state.entries.values())

    def version(self, user_id: str) -> int:
        """The version of ``user_id``'s personas being served."""
        return self._entry(self._state, user_id).version

    @property
    def nbytes(self) -> int:
        """Memory held by the vector buffers (texts not counted)."""
        state = self._state
        if state is None:
            return 0
        return state.centroids.nbytes + (0 if state.embeddings is None else state.embeddings.nbytes)

    # ------------------------------------------------------------ serving

    @staticmethod
    def _entry(state: _State | None, user_id: str) -> _Entry:
        entry = None if state is None else state.entries.get(user_id)
        if entry is None:
            raise UnknownUserError(user_id)
        return entry

    def retrieve(
        self, user_id: str, target_embedding: np.ndarray, *, k: int = 1, use: Use = "centroid"
    ) -> list[RetrievedPersona]:
        """The user's ``k`` personas most similar to the target item, best first (fewer if the user has fewer).

        ``use="centroid"`` scores the cluster centroids (PersonaX); ``"persona"`` the persona-text embeddings (personas
        without one are skipped; a user with none is an error); ``"both"`` the larger of the two per persona.
        """
        _check_k(k)
        _check_use(use)
        state = self._state
        entry = self._entry(state, user_id)
        assert state is not None
        if not entry.has_embeddings:
            use = _without_embeddings(use, user_id, entry.version)
        t, norm = _check_target(target_embedding, self.dim, self.embedder_id)
        rows = slice(entry.start, entry.start + entry.count)
        scores, matched = _scores(
            state.centroids[rows],
            None if state.embeddings is None else state.embeddings[rows],
            state.has_embedding[rows] if use != "centroid" else None,
            t,
            use,
        )
        return [
            RetrievedPersona(
                user_id=user_id,
                cluster=int(state.clusters[entry.start + i]),
                text=state.texts[entry.start + i],
                score=score / norm,
                rank=rank,
                version=entry.version,
                config_hash=entry.config_hash,
                matched="persona" if matched is not None and matched[i] else "centroid",
            )
            for rank, (i, score) in enumerate(_top(scores, k))
        ]

    def retrieve_many(
        self,
        user_ids: Sequence[str],
        target_embeddings: np.ndarray,
        *,
        k: int = 1,
        use: Use = "centroid",
        on_unknown: Literal["raise", "skip"] = "raise",
        chunk_bytes: int = 4 << 20,
    ) -> list[list[RetrievedPersona]]:
        """:meth:`retrieve` for a batch: request ``i`` is ``(user_ids[i], target_embeddings[i])``.

        Vectorised: the requested users' rows are gathered into a ``(batch, max_personas, d)`` block (in chunks of at
        most ``chunk_bytes``) and scored with one batched product. ``on_unknown="skip"`` answers ``[]`` for a user the
        index does not hold instead of raising.
        """
        _check_k(k)
        _check_use(use)
        state = self._state
        n = len(user_ids)
        known: list[tuple[int, _Entry]] = []
        for i, user_id in enumerate(user_ids):
            entry = None if state is None else state.entries.get(user_id)
            if entry is None:
                if on_unknown == "raise":
                    raise UnknownUserError(user_id)
                continue
            if not entry.has_embeddings:
                _without_embeddings(use, user_id, entry.version)
            known.append((i, entry))
        results: list[list[RetrievedPersona]] = [[] for _ in range(n)]
        if not known or state is None:
            return results
        if state.embeddings is None:  # nobody has text embeddings: "both" is "centroid"
            use = "centroid"
        dim = self.dim
        assert dim is not None  # set by the first add
        targets = np.asarray(target_embeddings, dtype=np.float32)
        if targets.ndim != 2 or targets.shape != (n, dim):
            raise DimensionMismatchError(
                f"target_embeddings has shape {targets.shape}, expected ({n}, {self.dim}) for {n} user ids"
            )
        norms = np.linalg.norm(targets, axis=1)
        bad = np.flatnonzero(~(np.isfinite(norms) & (norms > 0)))
        if bad.size:
            raise ValueError(f"target_embeddings[{int(bad[0])}] is all zeros or not finite")
        starts = np.array([e.start for _, e in known], dtype=np.int64)
        counts = np.array([e.count for _, e in known], dtype=np.int64)
        width = int(counts.max())
        per_request = width * dim * 4 * (1 if use == "centroid" else 2)
        chunk = max(1, int(chunk_bytes) // per_request)
        cols = np.arange(width)
        for lo in range(0, len(known), chunk):
            hi = min(lo + chunk, len(known))
            req = np.array([i for i, _ in known[lo:hi]], dtype=np.int64)
            valid = cols[None, :] < counts[lo:hi, None]
            rows = np.where(valid, starts[lo:hi, None] + cols[None, :], starts[lo:hi, None])
            scores, matched = _scores(
                state.centroids[rows],
                None if state.embeddings is None or use == "centroid" else state.embeddings[rows],
                state.has_embedding[rows] & valid,
                targets[req],
                use,
            )
            scores = np.where(valid, scores, -np.inf)
            if k == 1:
                order = np.argmax(scores, axis=1)[:, None]
            else:
                order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            top_rows = np.take_along_axis(rows, order, axis=1)
            # Everything the loop below reads is converted to Python lists once: no numpy call per request.
            top_scores = (np.take_along_axis(scores, order, axis=1) / norms[req][:, None]).tolist()
            top_clusters = state.clusters[top_rows].tolist()
            top_text_rows = top_rows.tolist()
            top_matched = None if matched is None else np.take_along_axis(matched, order, axis=1).tolist()
            texts = state.texts
            for j, (i, entry) in enumerate(known[lo:hi]):
                user_id, out = user_ids[i], results[i]
                for rank, score in enumerate(top_scores[j]):
                    if score == -math.inf:
                        break
                    out.append(
                        RetrievedPersona(
                            user_id,
                            top_clusters[j][rank],
                            texts[top_text_rows[j][rank]],
                            score,
                            rank,
                            entry.version,
                            entry.config_hash,
                            "persona" if top_matched is not None and top_matched[j][rank] else "centroid",
                        )
                    )
        return results


def retrieve_from_store(
    store: PersonaStoreProtocol, user_id: str, target_embedding: np.ndarray, *, k: int = 1, use: Use = "centroid"
) -> list[RetrievedPersona]:
    """The same selection as :meth:`PersonaIndex.retrieve`, reading the user's current set from the store (one query
    per call). For scripts and low volume; serve from a :class:`PersonaIndex` otherwise."""
    _check_k(k)
    _check_use(use)
    ps = store.current(user_id)
    if ps is None:
        raise UnknownUserError(user_id, "persona store")
    t, norm = _check_target(target_embedding, ps.dim, ps.embedder_id)
    has = np.array([p.embedding is not None for p in ps.personas])
    if not has.any():
        use = _without_embeddings(use, user_id, ps.version)
    embeddings = None
    if use != "centroid":
        embeddings = _unit_rows(np.stack([p.centroid if p.embedding is None else p.embedding for p in ps.personas]))
    scores, matched = _scores(_unit_rows(ps.centroids()), embeddings, has, t, use)
    return [
        RetrievedPersona(
            user_id=user_id,
            cluster=ps.personas[i].cluster,
            text=ps.personas[i].text,
            score=score / norm,
            rank=rank,
            version=ps.version,
            config_hash=ps.config_hash,
            matched="persona" if matched is not None and matched[i] else "centroid",
        )
        for rank, (i, score) in enumerate(_top(scores, k))
    ]
