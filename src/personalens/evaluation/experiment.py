"""The next-item ranking experiment behind ``personalens eval run CONFIG``: a TOML file names the data, the user
filter, the candidate rule, the sampler grid (samplers × ratios × τ × α), the profiler and the rankers; the run
writes one JSON line per (method cell, user) and is resumable — a killed run skips every line already written, and
the LLM response cache and the embedding cache make repeated work free.

Example configuration (paths are relative to the file)::

    name = "MovieLens latest-small, users with >= 200 ratings"
    seed = 0

    [data]
    path = "../shared/data/movielens-latest-small"
    format = "movielens"           # any of personalens.data.summary.DATASET_FORMATS
    min_interactions = 200         # user filter on the raw history length
    max_users = 0                  # 0: every qualifying user; else a seeded sample of this many
    like_above = 3.0               # rating > 3 is a like, < 3 a dislike, 3 is dropped
    dislike_below = 3.0
    item_fields = ["genres"]
    domain = "movies"
    behaviours = "liked"           # profile the liked behaviours ("liked") or every behaviour ("all")

    [candidates]
    negatives = 9                  # or "all" for full-catalogue ranking
    target = "last_liked"          # or "last"

    [selection]
    samplers = ["full", "random", "recent", "relevance", "centroid", "boundary", "personax"]
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    threshold_rule = "n_clusters"  # "n_clusters" (m; "auto" = ceil(sqrt(n/8))), "distance" (tau) or "quantile"
    thresholds = ["auto"]
    alphas = [1.06]
    relevance = "per_candidate"    # or "candidate_set"

    [profiler]
    kind = "behaviours"            # or "summarize" (LLM)
    max_words = 100
    max_items = 30

    [rankers]
    kinds = ["embedding"]          # and/or "llm"

    [report]
    metrics = ["hit@1", "hit@5", "ndcg@5", "mrr@10"]
    primary = "mrr@10"
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalens._files import read_jsonl_rows
from personalens.data.records import Dataset, Interaction
from personalens.embed.base import Embedder
from personalens.errors import ConfigError, PersonaLensError
from personalens.evaluation.candidates import CandidateSpec, RankingTask, is_liked, prepare_tasks
from personalens.evaluation.metrics import parse_metric_names, rank_of, ranking_metrics_by_name
from personalens.evaluation.plans import SAMPLER_NAMES, MethodSpec, Plan, make_plan, specs_for
from personalens.evaluation.rankers import (
    BehaviourProfiler,
    EmbeddingRanker,
    LLMRanker,
    PersonaText,
    Profiler,
    Ranker,
    SummaryProfiler,
)
from personalens.jobs.build import behaviour_times
from personalens.llm.base import ChatModel, Usage

ROWS_FILE = "rows.jsonl"
CANDIDATES_FILE = "candidates.json"


# ---------------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class DataConfig:
    path: str
    format: str = "movielens"
    name: str | None = None
    min_interactions: int = 1
    max_users: int = 0
    like_above: float | None = 3.0
    dislike_below: float | None = 3.0
    item_fields: tuple[str, ...] = ("genres",)
    domain: str = "movies"
    behaviours: str = "liked"


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    samplers: tuple[str, ...] = ("full", "random", "recent", "relevance", "centroid", "boundary", "personax")
    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    threshold_rule: str = "n_clusters"
    thresholds: tuple[float | int | str | None, ...] = ("auto",)
    alphas: tuple[float, ...] = (1.06,)
    linkage: str = "complete"
    relevance: str = "per_candidate"


@dataclass(frozen=True, slots=True)
class ProfilerConfig:
    kind: str = "behaviours"
    max_words: int = 100
    max_items: int = 30
    encoding: str = "text"


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    name: str
    data: DataConfig
    candidates: CandidateSpec
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    profiler: ProfilerConfig = field(default_factory=ProfilerConfig)
    rankers: tuple[str, ...] = ("embedding",)
    metrics: tuple[str, ...] = ("hit@1", "hit@5", "ndcg@5", "mrr@10")
    primary: str = "mrr@10"
    seed: int = 0
    source: str | None = None

    @property
    def needs_llm(self) -> bool:
        return self.profiler.kind == "summarize" or "llm" in self.rankers

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = self.candidates.to_dict()
        return out


def _section(cls: Any, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def parse_config(raw: dict[str, Any], *, source: str = "<config>", base: Path | None = None) -> ExperimentConfig:
    """Validate a parsed TOML document. Errors name the file and the key."""
    allowed = {"name", "seed", "data", "candidates", "selection", "profiler", "rankers", "report"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known: {', '.join(sorted(allowed))}")
    if "data" not in raw or "path" not in raw.get("data", {}):
        raise ConfigError(f"{source}: [data] path is required")
    try:
        data = DataConfig(**_section(DataConfig, raw["data"], f"{source}: [data]"))
        if base is not None and not Path(data.path).is_absolute():
            data = DataConfig(**{**asdict(data), "path": str((base / data.path).resolve())})
        seed = int(raw.get("seed", 0))
        cand_raw = dict(raw.get("candidates", {}))
        cand_unknown = sorted(set(cand_raw) - {"negatives", "target"})
        if cand_unknown:
            raise ConfigError(f"{source}: [candidates]: unknown key {cand_unknown[0]!r}; known: negatives, target")
        negatives = cand_raw.get("negatives", 9)
        if negatives == "all":
            negatives = None
        elif isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
            raise ConfigError(f"{source}: [candidates] negatives must be a positive integer or 'all'")
        target = cand_raw.get("target", "last")
        if target not in ("last", "last_liked"):
            raise ConfigError(f"{source}: [candidates] target must be 'last' or 'last_liked', not {target!r}")
        candidates = CandidateSpec(negatives, target, data.like_above, seed)
        selection = SelectionConfig(**_section(SelectionConfig, raw.get("selection", {}), f"{source}: [selection]"))
        profiler = ProfilerConfig(**_section(ProfilerConfig, raw.get("profiler", {}), f"{source}: [profiler]"))
        rankers_raw = dict(raw.get("rankers", {}))
        extra = sorted(set(rankers_raw) - {"kinds"})
        if extra:
            raise ConfigError(f"{source}: [rankers]: unknown key {extra[0]!r}; known: kinds")
        rankers = tuple(rankers_raw.get("kinds", ("embedding",)))
        report = dict(raw.get("report", {}))
        report_unknown = sorted(set(report) - {"metrics", "primary"})
        if report_unknown:
            raise ConfigError(f"{source}: [report]: unknown key {report_unknown[0]!r}; known: metrics, primary")
        metrics = tuple(report.get("metrics", ("hit@1", "hit@5", "ndcg@5", "mrr@10")))
        primary = str(report.get("primary", "mrr@10"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for sampler in selection.samplers:
        if sampler not in SAMPLER_NAMES:
            raise ConfigError(f"{source}: [selection] samplers: unknown {sampler!r}; use {', '.join(SAMPLER_NAMES)}")
    if not selection.ratios or any(not (0 < float(r) <= 1) for r in selection.ratios):
        raise ConfigError(f"{source}: [selection] ratios must be a non-empty list of numbers in (0, 1]")
    if not selection.thresholds or not selection.alphas:
        raise ConfigError(f"{source}: [selection] thresholds and alphas must not be empty")
    if profiler.encoding not in ("text", "mean") or (profiler.encoding == "mean" and profiler.kind != "behaviours"):
        raise ConfigError(f"{source}: [profiler] encoding must be 'text' or 'mean' ('mean' only with behaviours)")
    if profiler.kind not in ("behaviours", "summarize"):
        raise ConfigError(f"{source}: [profiler] kind must be 'behaviours' or 'summarize', not {profiler.kind!r}")
    for kind in rankers:
        if kind not in ("embedding", "llm"):
            raise ConfigError(f"{source}: [rankers] kinds: unknown {kind!r}; use embedding or llm")
    if data.behaviours not in ("liked", "all"):
        raise ConfigError(f"{source}: [data] behaviours must be 'liked' or 'all', not {data.behaviours!r}")
    try:
        metrics = tuple(f"{m}@{k}" for m, k in parse_metric_names(metrics))
        primary = "{}@{}".format(*parse_metric_names([primary])[0])
    except ValueError as exc:
        raise ConfigError(f"{source}: [report] {exc}") from None
    if primary not in metrics:
        metrics = (*metrics, primary)
    name = str(raw.get("name") or Path(source).stem)
    return ExperimentConfig(
        name,
        data,
        candidates,
        selection,
        profiler,
        rankers,
        metrics,
        primary,
        seed,
        source,
    )


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    """A parsed experiment TOML; a missing or malformed file is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"experiment file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_sections(raw: Mapping[str, Any], sections: Mapping[str, set[str]], *, source: str) -> None:
    """Refuse an experiment table whose sections are not tables or hold unknown keys. ``sections`` maps a section
    name (``""`` for the top level) to its known keys; the error names the file, the section and the known keys."""
    for section, keys in sections.items():
        table = raw if not section else raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        unknown = sorted(set(table) - keys)
        if unknown:
            where = f"[{section}]" if section else "top level"
            raise ConfigError(f"{source}: {where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(keys))}")


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    return parse_config(read_experiment_file(path), source=str(path), base=path.parent)


# ---------------------------------------------------------------------------------------------------- data
def load_experiment_data(config: ExperimentConfig) -> tuple[Dataset, list[str]]:
    """The labelled dataset and the users the experiment covers (filter, then a seeded sample if ``max_users``)."""
    from personalens.data.summary import load_dataset

    cfg = config.data
    raw = load_dataset(Path(cfg.path), cfg.format, name=cfg.name)
    lengths: dict[str, int] = {}
    for x in raw.interactions:
        lengths[x.user_id] = lengths.get(x.user_id, 0) + 1
    users = sorted((u for u, n in lengths.items() if n >= cfg.min_interactions), key=_natural)
    if cfg.like_above is not None and cfg.dislike_below is not None and raw.rating_scale is not None:
        dataset = raw.with_labels(like_above=cfg.like_above, dislike_below=cfg.dislike_below)
    else:
        dataset = raw
    if cfg.max_users and len(users) > cfg.max_users:
        rng = np.random.default_rng(config.seed)
        picks = sorted(rng.choice(len(users), size=cfg.max_users, replace=False))
        users = [users[int(i)] for i in picks]
    if not users:
        raise ConfigError(f"{config.source}: no user has >= {cfg.min_interactions} interactions")
    return dataset, users


def _natural(user_id: str) -> tuple[int, int | str]:
    return (0, int(user_id)) if user_id.isdigit() else (1, user_id)


def profiled_behaviours(task: RankingTask, config: ExperimentConfig) -> list[Interaction]:
    if config.data.behaviours == "all":
        return list(task.history)
    return [x for x in task.history if is_liked(x, config.data.like_above)]


# ---------------------------------------------------------------------------------------------------- running
@dataclass(frozen=True, slots=True)
class Cell:
    """One column of results: a sampling spec with a profiler and a ranker."""

    spec: MethodSpec
    profiler: str
    ranker: str
    key: str

    def describe(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "profiler": self.profiler, "ranker": self.ranker}


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(slots=True)
class RunSummary:
    rows_written: int = 0
    rows_skipped: int = 0
    users: int = 0
    skipped_users: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    bad_lines: int = 0


def read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows written so far; a torn last line (a killed run) is counted, not fatal."""
    return read_jsonl_rows(path)


class RankingExperiment:
    """Runs an :class:`ExperimentConfig` into ``out_dir`` (rows.jsonl, candidates.json; see :mod:`.report`)."""

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: str | Path,
        *,
        embedder: Embedder,
        model_factory: Callable[[], ChatModel] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.embedder = embedder
        self._model_factory = model_factory
        self._model: ChatModel | None = None
        self.on_event = on_event or (lambda kind, payload: None)

    @property
    def model(self) -> ChatModel:
        if self._model is None:
            if self._model_factory is None:
                raise ConfigError("this experiment needs an LLM (summarize profiler or llm ranker) but none was given")
            self._model = self._model_factory()
        return self._model

    def _profiler(self) -> Profiler:
        cfg, data = self.config.profiler, self.config.data
        if cfg.kind == "summarize":
            return SummaryProfiler(
                self.model,
                domain=data.domain,
                max_words=cfg.max_words,
                max_items=cfg.max_items,
                item_fields=data.item_fields,
                like_above=data.like_above,
            )
        return BehaviourProfiler(data.item_fields, encoding=cfg.encoding)

    def _rankers(self) -> list[Ranker]:
        data = self.config.data
        out: list[Ranker] = []
        for kind in self.config.rankers:
            if kind == "embedding":
                out.append(EmbeddingRanker(self.embedder, data.item_fields))
            else:
                out.append(LLMRanker(self.model, domain=data.domain, item_fields=data.item_fields))
        return out

    def specs(self) -> list[MethodSpec]:
        s = self.config.selection
        return specs_for(
            s.samplers,
            s.ratios,
            [None if t == "auto" else t for t in s.thresholds],
            s.alphas,
            threshold_rule=s.threshold_rule,
            linkage=s.linkage,
            relevance=s.relevance,  # type: ignore[arg-type]
            seed=self.config.seed,
        )

    def run(self) -> RunSummary:
        started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, default=str))
        dataset, users = load_experiment_data(self.config)
        tasks, skipped = prepare_tasks(self.out_dir / CANDIDATES_FILE, dataset, users, self.config.candidates)
        candidates_sha = hashlib.sha256((self.out_dir / CANDIDATES_FILE).read_bytes()).hexdigest()
        summary = RunSummary(users=len(tasks), skipped_users=skipped)
        rows_path = self.out_dir / ROWS_FILE
        existing, summary.bad_lines = read_rows(rows_path)
        done = {(r["cell"], r["user"]) for r in existing}
        # constructing the LLM is cheap (weights load on the first call), so a finished run never loads them
        profiler = self._profiler()
        rankers = self._rankers()
        specs = self.specs()
        names = list(self.config.metrics)
        common = {
            "dataset": dataset.name,
            "data": asdict(self.config.data),
            "candidates_sha256": candidates_sha,
            "embedder": self.embedder.model_id,
        }
        cells = [
            Cell(
                spec,
                profiler.name,
                ranker.name,
                _digest({**common, "spec": spec.to_dict(), "profiler": profiler.config(), "ranker": ranker.config()}),
            )
            for spec in specs
            for ranker in rankers
        ]
        ranker_of = {cell.key: rankers[i % len(rankers)] for i, cell in enumerate(cells)}
        self.on_event("start", {"users": len(tasks), "cells": len(cells)})
        with rows_path.open("a", encoding="utf-8") as sink:
            for task in tasks:
                pending = [cell for cell in cells if (cell.key, task.user_id) not in done]
                summary.rows_skipped += len(cells) - len(pending)
                if not pending:
                    self.on_event("user", {"user": task.user_id, "rows": 0})
                    continue
                try:
                    written, usage = self._run_user(dataset, task, pending, profiler, ranker_of, names, sink)
                except PersonaLensError as exc:
                    summary.failures[task.user_id] = str(exc)
                    self.on_event("failed", {"user": task.user_id, "error": str(exc)})
                    continue
                summary.rows_written += written
                summary.usage = summary.usage + usage
                self.on_event("user", {"user": task.user_id, "rows": written})
        summary.seconds = time.perf_counter() - started
        return summary

    def _run_user(
        self,
        dataset: Dataset,
        task: RankingTask,
        pending: list[Cell],
        profiler: Profiler,
        ranker_of: dict[str, Ranker],
        names: list[str],
        sink: Any,
    ) -> tuple[int, Usage]:
        t_user = time.perf_counter()
        behaviours = profiled_behaviours(task, self.config)
        if not behaviours:
            raise PersonaLensError(f"user {task.user_id!r} has no behaviours to profile")
        fields = self.config.data.item_fields
        b_vec = self.embedder.embed([dataset.item(x.item_id).text(fields) for x in behaviours])
        times = behaviour_times(behaviours)
        cand_items = [dataset.item(c) for c in task.candidates]
        c_vec = self.embedder.embed([item.text(fields) for item in cand_items])
        positive = task.positive_index
        budgets: dict[float, int] = {}
        plans: dict[str, Plan] = {}
        personas: dict[tuple[int, ...], PersonaText] = {}
        usage = Usage()
        written = 0
        mean_encoding = getattr(profiler, "encoding", "text") == "mean"
        first = self.config.selection.thresholds[0]
        reference_threshold = None if first == "auto" else first
        for cell in pending:
            t0 = time.perf_counter()
            spec = cell.spec
            if spec.ratio not in budgets:
                reference = MethodSpec(
                    "personax",
                    spec.ratio,
                    threshold_rule=self.config.selection.threshold_rule,
                    threshold=reference_threshold,
                    linkage=self.config.selection.linkage,
                ).selector()
                budgets[spec.ratio] = reference.select(b_vec, times).budget
            plan_key = json.dumps(spec.to_dict(), sort_keys=True, default=str)
            if plan_key not in plans:
                plans[plan_key] = make_plan(spec, b_vec, times, c_vec, budgets[spec.ratio])
            plan = plans[plan_key]
            cell_usage = Usage()
            shown = []
            for group in plan.groups:
                if group not in personas:
                    persona = profiler.persona([behaviours[i] for i in group], dataset.items)
                    if mean_encoding:
                        persona.vector = np.asarray(b_vec[list(group)], dtype=np.float64).mean(axis=0)
                    personas[group] = persona
                    cell_usage = cell_usage + persona.usage
                shown.append(personas[group])
            scores, rank_usage = ranker_of[cell.key].score(shown, plan.assign, cand_items)
            cell_usage = cell_usage + rank_usage
            score_list = [float(x) for x in scores]
            metrics = ranking_metrics_by_name(score_list, positive, names)
            rank = rank_of(score_list, positive)
            row = {
                "cell": cell.key,
                "user": task.user_id,
                **cell.describe(),
                "budget": plan.budget,
                "behaviours": len(behaviours),
                "behaviours_used": plan.n_behaviours,
                "personas": len(plan.groups),
                "persona_words": round(float(np.mean([len(p.text.split()) for p in shown])), 1),
                "truncated": sum(personas[g].truncated for g in plan.groups),
                "rank": rank,
                "candidates": len(task.candidates),
                "metrics": {name: float(metrics[name]) for name in names},
                "scores": [round(float(s), 6) for s in scores] if len(scores) <= 100 else None,
                "usage": cell_usage.to_dict(),
                "seconds": round(time.perf_counter() - t0, 4),
            }
            sink.write(json.dumps(row, default=str) + "\n")
            sink.flush()
            usage = usage + cell_usage
            written += 1
        self.on_event("user_done", {"user": task.user_id, "seconds": time.perf_counter() - t_user})
        return written, usage


__all__ = [
    "Cell",
    "DataConfig",
    "ExperimentConfig",
    "ProfilerConfig",
    "RankingExperiment",
    "RunSummary",
    "SelectionConfig",
    "load_config",
    "load_experiment_data",
    "parse_config",
    "read_rows",
]
