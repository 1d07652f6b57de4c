"""The data behind the persona explorer (``/explorer``), as plain functions of stored persona sets and ingested
behaviours, so they are tested without HTTP.

* :func:`behaviour_map` puts a user's behaviours in 2-D (PCA of their item embeddings, signs fixed so the picture is
  deterministic), with each behaviour's cluster, the cluster centroids projected the same way, and the persona text
  of every cluster (PersonaX Figures 1 and 5).
* :func:`word_diff` / :func:`persona_set_word_diff` compare persona texts word by word.
* :func:`timeline_entry` describes one stored version for the timeline: what made it (build, refinement round,
  alignment step, rollback, manual save) and, when the version records them, its errors before and after.

Cluster membership. A PersonaX build stores, per cluster, the centroid and the selected sub-sequence
(``Persona.selected_item_ids``) but not every behaviour's cluster label. A behaviour whose item is in a cluster's
selected sub-sequence therefore belongs to that cluster; every other behaviour is put in the cluster whose centroid
is nearest to its embedding (cosine), which is also how retrieval picks a persona for an item. Behaviours the build
left out (not liked) are placed the same way and flagged ``liked: false``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from personalens.data.records import Item, freeze_fields
from personalens.embed.base import Embedder
from personalens.plotting import project_2d
from personalens.service.tenantdb import BehaviourRow
from personalens.store import PersonaSet

DEFAULT_ITEM_FIELDS: tuple[str, ...] = ("genres",)

# ---------------------------------------------------------------- projection


@dataclass(frozen=True)
class Projection:
    """A 2-D PCA basis: ``points`` are the fitted rows; :meth:`apply` projects other vectors the same way."""

    points: np.ndarray  # (n, 2)
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (2, d)
    explained: tuple[float, float]  # share of the variance along each axis

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float64)
        if x.size == 0:
            return np.zeros((0, 2))
        return (x - self.mean) @ self.components.T


def fit_projection(vectors: np.ndarray) -> Projection:
    """PCA to two dimensions (:func:`personalens.plotting.project_2d`), each axis's sign fixed so that its largest
    loading is positive: the same vectors always give the same picture, not a mirrored one."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("need a non-empty (n, d) matrix to fit a projection")
    _, mean, components = project_2d(x)
    components = np.array(components, dtype=np.float64, copy=True)
    for i in range(components.shape[0]):
        row = components[i]
        if np.any(row):
            j = int(np.argmax(np.abs(row)))
            if row[j] < 0:
                components[i] = -row
    points = (x - mean) @ components.T
    total = float(np.sum((x - mean) ** 2))
    if total > 0:
        explained = (float(np.sum(points[:, 0] ** 2)) / total, float(np.sum(points[:, 1] ** 2)) / total)
    else:
        explained = (0.0, 0.0)
    return Projection(points, mean, components, explained)


# ---------------------------------------------------------------- cluster membership


@dataclass(frozen=True)
class Assignment:
    """A behaviour's cluster: ``by`` says how it was decided ("selected", "nearest" or "none")."""

    cluster: int | None
    by: Literal["selected", "nearest", "none"]
    similarity: float | None  # cosine of the behaviour to its cluster's centroid (None in another embedding space)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` cosine similarities (0 against a zero row)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return _unit_rows(a) @ _unit_rows(b).T


def assign_clusters(item_ids: Sequence[str], vectors: np.ndarray | None, persona_set: PersonaSet) -> list[Assignment]:
    """Each behaviour's cluster: the cluster whose selected sub-sequence holds its item, else the cluster with the
    nearest centroid (cosine). ``vectors`` None (embeddings from another space than the centroids) leaves the
    behaviours that no cluster selected unassigned."""
    clusters = [p.cluster for p in persona_set.personas]
    selected: dict[str, list[int]] = {}
    for index, persona in enumerate(persona_set.personas):
        for item_id in persona.selected_item_ids:
            selected.setdefault(item_id, []).append(index)
    sims = None if vectors is None else cosine_matrix(vectors, persona_set.centroids())
    out: list[Assignment] = []
    for row, item_id in enumerate(item_ids):
        holders = selected.get(item_id)
        if holders:
            best = holders[0] if sims is None else max(holders, key=lambda i: sims[row, i])
            out.append(Assignment(clusters[best], "selected", None if sims is None else float(sims[row, best])))
        elif sims is not None and len(clusters):
            best = int(np.argmax(sims[row]))
            out.append(Assignment(clusters[best], "nearest", float(sims[row, best])))
        else:
            out.append(Assignment(None, "none", None))
    return out


# ---------------------------------------------------------------- the 2-D map


def item_fields_of(config: dict[str, Any]) -> tuple[str, ...]:
    """The item fields the version's build embedded (``config.build.item_fields``), else the service default."""
    build = config.get("build")
    if isinstance(build, dict):
        fields = build.get("item_fields")
        if isinstance(fields, list | tuple) and all(isinstance(f, str) for f in fields):
            return tuple(fields)
    return DEFAULT_ITEM_FIELDS


def _liked(row: BehaviourRow, config: dict[str, Any]) -> bool | None:
    """Whether the build counted the behaviour as liked (its rule: a label wins, else rating > like_above)."""
    build = config.get("build")
    if not isinstance(build, dict) or not isinstance(build.get("like_above"), int | float):
        return None
    if row.label is not None:
        return row.label
    return row.rating is None or row.rating > float(build["like_above"])


def _r(value: float | None, digits: int = 5) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def latest_per_item(rows: Sequence[BehaviourRow]) -> tuple[list[BehaviourRow], dict[str, int]]:
    """One behaviour per item (the latest one, in order of last occurrence) and how many behaviours each item has."""
    latest: dict[str, BehaviourRow] = {}
    counts: dict[str, int] = {}
    for row in rows:
        latest.pop(row.item_id, None)
        latest[row.item_id] = row
        counts[row.item_id] = counts.get(row.item_id, 0) + 1
    return list(latest.values()), counts


def behaviour_map(
    persona_set: PersonaSet,
    rows: Sequence[BehaviourRow],
    embedder: Embedder,
    *,
    target: str | None = None,
    limit: int = 2000,
) -> dict[str, Any]:
    """The explorer's picture of one persona version over the user's ingested behaviours (see the module doc).

    At most ``limit`` items are embedded: every selected item, then the most recent others (``truncated`` says
    so). When the version was built with another embedder than the service's, the centroids cannot be placed and
    only selected behaviours get a cluster (``same_space`` false, with a ``warning``).
    """
    items, counts = latest_per_item(rows)
    selected_ids = {item_id for p in persona_set.personas for item_id in p.selected_item_ids}
    truncated = len(items) > limit
    if truncated:
        keep = {r.item_id for r in items if r.item_id in selected_ids}
        if len(keep) > limit:
            keep = set(list(keep)[:limit])
        for r in reversed(items):
            if len(keep) >= limit:
                break
            keep.add(r.item_id)
        items = [r for r in items if r.item_id in keep]
    fields = item_fields_of(persona_set.config)
    texts = [Item(r.item_id, r.title, freeze_fields(r.fields.items())).text(fields) for r in items]
    vectors = np.asarray(embedder.embed(texts), dtype=np.float64) if texts else np.zeros((0, persona_set.dim))
    centroids = np.asarray(persona_set.centroids(), dtype=np.float64)
    same_space = persona_set.embedder_id == embedder.model_id and (
        not len(vectors) or vectors.shape[1] == centroids.shape[1]
    )
    warning = None
    if not same_space:
        warning = (
            f"these personas were built with embedder {persona_set.embedder_id}, the service uses "
            f"{embedder.model_id}: centroids are not shown and only selected behaviours have a cluster"
        )
    if len(vectors) >= 2 or not same_space:
        basis = vectors
    else:
        basis = np.vstack([vectors, centroids]) if len(vectors) else centroids
    projection = fit_projection(basis) if len(basis) else None
    points_2d = projection.apply(vectors) if projection is not None else np.zeros((0, 2))
    centroids_2d = projection.apply(centroids) if projection is not None and same_space else None
    assignments = assign_clusters([r.item_id for r in items], vectors if same_space else None, persona_set)
    members: dict[int, int] = {}
    points = []
    for i, (row, text, where) in enumerate(zip(items, texts, assignments, strict=True)):
        if where.cluster is not None:
            members[where.cluster] = members.get(where.cluster, 0) + 1
        points.append(
            {
                "item_id": row.item_id,
                "title": row.title,
                "text": text,
                "x": _r(points_2d[i, 0]),
                "y": _r(points_2d[i, 1]),
                "cluster": where.cluster,
                "assigned_by": where.by,
                "similarity": _r(where.similarity),
                "selected": row.item_id in selected_ids,
                "rating": row.rating,
                "liked": _liked(row, persona_set.config),
                "behaviours": counts[row.item_id],
            }
        )
    clusters = []
    for index, persona in enumerate(persona_set.personas):
        centroid = None
        if centroids_2d is not None:
            centroid = {"x": _r(centroids_2d[index, 0]), "y": _r(centroids_2d[index, 1])}
        clusters.append(
            {
                "cluster": persona.cluster,
                "text": persona.text,
                "words": len(persona.text.split()),
                "cluster_size": persona.cluster_size,
                "budget": persona.budget,
                "selected_item_ids": list(persona.selected_item_ids),
                "members": members.get(persona.cluster, 0),
                "centroid": centroid,
            }
        )
    target_out = None
    if target is not None and projection is not None and same_space:
        vector = np.asarray(embedder.embed([target]), dtype=np.float64)
        where_2d = projection.apply(vector)[0]
        sims = cosine_matrix(vector, centroids)[0]
        target_out = {
            "text": target,
            "x": _r(where_2d[0]),
            "y": _r(where_2d[1]),
            "cluster": persona_set.personas[int(np.argmax(sims))].cluster,
            "similarities": [
                {"cluster": p.cluster, "score": _r(float(s))} for p, s in zip(persona_set.personas, sims, strict=True)
            ],
        }
    return {
        "user": persona_set.user_id,
        "version": persona_set.version,
        "embedder_id": persona_set.embedder_id,
        "same_space": same_space,
        "warning": warning,
        "projection": "pca",
        "explained_variance": [] if projection is None else [_r(v, 4) for v in projection.explained],
        "assignment": "selected sub-sequence, else nearest centroid (cosine)"
        if same_space
        else "selected sub-sequence only",
        "item_fields": list(fields),
        "truncated": truncated,
        "clusters": clusters,
        "points": points,
        "target": target_out,
    }


# ---------------------------------------------------------------- word-level diff

DiffKind = Literal["equal", "insert", "delete"]
_TOKEN = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class DiffOp:
    op: DiffKind
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"op": self.op, "text": self.text}


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.strip())


def word_diff(old: str, new: str) -> list[DiffOp]:
    """``old`` → ``new`` as runs of equal, deleted and inserted words (each word keeps the whitespace after it;
    words are compared without it, so re-wrapping a paragraph changes nothing)."""
    a, b = _tokens(old), _tokens(new)
    matcher = difflib.SequenceMatcher(None, [t.strip() for t in a], [t.strip() for t in b], autojunk=False)
    ops: list[DiffOp] = []

    def emit(kind: DiffKind, words: list[str]) -> None:
        if not words:
            return
        text = "".join(words)
        if ops and ops[-1].op == kind:
            ops[-1] = DiffOp(kind, ops[-1].text + text)
        else:
            ops.append(DiffOp(kind, text))

    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            emit("equal", b[j1:j2])
        else:
            emit("delete", a[i1:i2])
            emit("insert", b[j1:j2])
    return ops


def diff_counts(ops: Sequence[DiffOp]) -> dict[str, int]:
    out = {"equal": 0, "insert": 0, "delete": 0}
    for op in ops:
        out[op.op] += len(op.text.split())
    return out


def persona_set_word_diff(old: PersonaSet, new: PersonaSet) -> dict[str, Any]:
    """Every cluster of either version (matched by cluster id, as the store's diff does) with a word diff of its
    persona text: ``changed``, ``unchanged``, ``added`` (all words inserted) or ``removed`` (all deleted)."""
    a = {p.cluster: p for p in old.personas}
    b = {p.cluster: p for p in new.personas}
    clusters = []
    totals = {"insert": 0, "delete": 0}
    for cluster in sorted(a.keys() | b.keys()):
        before = a[cluster].text if cluster in a else ""
        after = b[cluster].text if cluster in b else ""
        if cluster not in a:
            status = "added"
        elif cluster not in b:
            status = "removed"
        else:
            status = "unchanged" if before == after else "changed"
        ops = word_diff(before, after)
        counts = diff_counts(ops)
        totals["insert"] += counts["insert"]
        totals["delete"] += counts["delete"]
        clusters.append(
            {
                "cluster": cluster,
                "status": status,
                "inserted_words": counts["insert"],
                "deleted_words": counts["delete"],
                "ops": [op.to_dict() for op in ops],
            }
        )

    def side(s: PersonaSet) -> dict[str, Any]:
        return {"version": s.version, "creator": s.creator, "method": s.method, "note": s.note, "kind": kind_of(s)}

    return {
        "user": new.user_id,
        "from": side(old),
        "to": side(new),
        "inserted_words": totals["insert"],
        "deleted_words": totals["delete"],
        "clusters": clusters,
    }


# ---------------------------------------------------------------- timeline

VersionKind = Literal["build", "refinement", "alignment", "rollback", "manual", "other"]


def version_kind(creator: str, method: str = "", note: str = "") -> VersionKind:
    """What made a version, from its creator and method: the library's own writers are ``personax-build``
    (build), ``deeper-refine`` (refinement rounds), the PersonaAgent (``agent-init``: its initial persona, a build;
    ``agent-align``: a test-time alignment step), ``rollback`` / ``service-rollback`` (rollback); any other creator
    or method naming alignment is an alignment step, and one naming a manual save or edit is ``manual``."""
    words = f"{creator} {method}".lower()
    if "rollback" in words or note.lower().startswith("rollback"):
        return "rollback"
    if "align" in words:
        return "alignment"
    if method_is_agent_init(method):
        return "build"
    if "refine" in words or creator.lower().startswith("deeper"):
        return "refinement"
    if "build" in words or creator.lower().startswith("personax"):
        return "build"
    if "manual" in words or "edit" in words:
        return "manual"
    return "other"


def kind_of(persona_set: PersonaSet) -> VersionKind:
    return version_kind(persona_set.creator, persona_set.method, persona_set.note)


_WINDOWS = ("previous", "current", "future")


def _errors(value: Any) -> dict[str, float | None] | None:
    if not isinstance(value, dict):
        return None
    out: dict[str, float | None] = {}
    for name in _WINDOWS:
        v = value.get(name)
        out[name] = _r(float(v), 4) if isinstance(v, int | float) and not isinstance(v, bool) else None
    return out


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict) and config:
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(config, str) and len(config) > 120:
        config = config[:117] + "..."
    return {prefix: config} if prefix else {}


def method_is_agent_init(method: str) -> bool:
    return method.lower() == "agent-init"


def timeline_entry(persona_set: PersonaSet, *, is_current: bool) -> dict[str, Any]:
    """One version for the timeline. A refinement round stores, in its persona's ``meta``, the strategy, round and
    window, ``committed``, the MAE on the previous, current and future windows before and after the update
    (``mae_before`` / ``mae_after``), DeePer's rewards and (verified mode) the gate's decision; an agent alignment
    step its ``iteration`` (and ``error``, if it failed): all passed on."""
    kind = kind_of(persona_set)
    step: dict[str, Any] = {}
    errors = None
    for persona in persona_set.personas:
        meta = persona.meta
        before, after = _errors(meta.get("mae_before")), _errors(meta.get("mae_after"))
        if before is not None or after is not None:
            errors = {"metric": "MAE", "before": before, "after": after}
        for key in (
            "strategy",
            "round",
            "window",
            "committed",
            "iteration",
            "error",
            "feedback",
            "dropped",
            "restored",
        ):
            if key in meta and key not in step:
                step[key] = meta[key]
        rewards = meta.get("rewards")
        if isinstance(rewards, dict) and "rewards" not in step:
            step["rewards"] = {k: _r(v, 4) for k, v in rewards.items() if isinstance(v, int | float)}
        gate = meta.get("gate")
        if isinstance(gate, dict) and "gate" not in step:
            step["gate"] = {k: gate.get(k) for k in ("committed", "chosen", "reason", "old_error")}
    if kind == "refinement" and step.get("strategy") == "initial":
        label = "initial persona"
    elif kind == "refinement" and "round" in step:
        label = f"round {step['round']}: {step.get('strategy', 'refine')}"
    elif kind == "alignment" and "iteration" in step:
        label = f"alignment iteration {step['iteration']}"
    elif method_is_agent_init(persona_set.method):
        label = "agent: initial persona"
    else:
        label = kind
    return {
        "version": persona_set.version,
        "parent_version": persona_set.parent_version,
        "creator": persona_set.creator,
        "method": persona_set.method,
        "note": persona_set.note,
        "created_at": persona_set.created_at,
        "config_hash": persona_set.config_hash,
        "embedder_id": persona_set.embedder_id,
        "is_current": is_current,
        "kind": kind,
        "label": label,
        "n_personas": len(persona_set.personas),
        "clusters": [p.cluster for p in persona_set.personas],
        "words": sum(len(p.text.split()) for p in persona_set.personas),
        "errors": errors,
        "step": step,
        "config": _flat(persona_set.config),
    }


__all__ = [
    "Assignment",
    "DiffOp",
    "Projection",
    "assign_clusters",
    "behaviour_map",
    "cosine_matrix",
    "fit_projection",
    "persona_set_word_diff",
    "timeline_entry",
    "version_kind",
    "word_diff",
]
