"""The PersonaX offline build: for each user, embed the liked behaviours, cluster them, allocate the sampling
budget, select a sub-sequence per cluster, write one persona per cluster and store the set with its configuration.

Resumable by construction: every user's set is saved in one transaction under a hash of everything that produced
it (the user's data, the model, the embedder, the selector's hyper-parameters, the profiling method and the prompts
version). A user whose current configuration hash is already stored is skipped, so a killed run resumes where it
stopped, a finished run repeats instantly, and a cache is never reused after anything that matters changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from personalens.data.records import Dataset, History, Interaction
from personalens.embed.base import Embedder
from personalens.errors import BudgetExceeded, ConfigError, PersonaLensError
from personalens.jobs.backends import WorkerBackends
from personalens.jobs.executors import Executor, LimitedChatModel, LLMLimiter, LocalExecutor, portable_error
from personalens.llm.base import ChatModel, Usage
from personalens.llm.usage import UsageMeter
from personalens.profiling import PROMPTS_VERSION, reflect_profile, sample_negatives, summarize_history
from personalens.selection import PersonaXSelector, Selection
from personalens.store import Persona, PersonaSet, PersonaStoreProtocol

Method = Literal["summarize", "reflect"]


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """What a persona build does besides selection. Every field is part of the configuration hash.

    Behaviours rated above ``like_above`` are likes and below ``dislike_below`` dislikes (PersonaX drops the middle
    rating of a 1–5 scale); explicit labels win over ratings. ``holdout`` leaves each user's last N interactions out
    of the build (for evaluation without leaking the target).
    """

    method: Method = "summarize"
    domain: str = "movies"
    max_words: int = 100
    item_fields: tuple[str, ...] = ("genres",)
    like_above: float = 3.0
    dislike_below: float = 3.0
    max_items_per_persona: int = 30
    reflect_max_tries: int = 2
    holdout: int = 0
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        """The inverse of ``dataclasses.asdict`` (as stored in a persona set's config); unknown keys are errors."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def __post_init__(self) -> None:
        if self.method not in ("summarize", "reflect"):
            raise ValueError(f"method must be summarize or reflect, not {self.method!r}")
        if self.max_words < 20:
            raise ValueError("max_words must be at least 20")
        if self.holdout < 0:
            raise ValueError("holdout must be >= 0")


@dataclass(slots=True)
class UserOutcome:
    user_id: str
    status: Literal["built", "cached", "failed"]
    version: int | None = None
    n_personas: int = 0
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class BuildReport:
    run_id: str
    outcomes: list[UserOutcome]
    usage: Usage
    seconds: float
    stopped: str | None = None  # why the run ended early (a budget cap), if it did

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "users": len(self.outcomes),
            "built": self.count("built"),
            "cached": self.count("cached"),
            "failed": self.count("failed"),
            "personas": sum(o.n_personas for o in self.outcomes),
            "usage": self.usage.to_dict(),
            "seconds": round(self.seconds, 2),
            "failures": {o.user_id: o.error for o in self.outcomes if o.status == "failed"},
            "stopped": self.stopped,
        }


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)


def history_fingerprint(history: Sequence[Interaction], item_text: Callable[[str], str]) -> str:
    """sha256 of the behaviours and the item texts the build reads: any change in the data changes it."""
    h = hashlib.sha256()
    for x in history:
        h.update(_canonical([x.item_id, x.rating, x.label, x.timestamp, item_text(x.item_id)]).encode())
    return h.hexdigest()


def split_history(
    dataset: Dataset, user_id: str, config: BuildConfig
) -> tuple[History, list[Interaction], list[Interaction]]:
    """The user's history used for building (minus ``config.holdout``), its liked and its disliked behaviours."""
    history = dataset.history(user_id)
    if config.holdout:
        history, _ = history.split_last(config.holdout)
    liked: list[Interaction] = []
    disliked: list[Interaction] = []
    for x in history:
        if x.label is not None:
            (liked if x.label else disliked).append(x)
        elif x.rating is None or x.rating > config.like_above:
            liked.append(x)
        elif x.rating < config.dislike_below:
            disliked.append(x)
    return history, liked, disliked


def behaviour_times(behaviours: Sequence[Interaction]) -> np.ndarray:
    """Timestamps for selection; the input order stands in where a behaviour has none."""
    return np.array([x.timestamp if x.timestamp is not None else i for i, x in enumerate(behaviours)], dtype=float)


class PersonaXBuilder:
    """Builds and stores PersonaX persona sets. ``on_event(kind, user_id, payload)`` reports progress.

    ``executor`` says where the per-user work (embedding, selection, LLM calls) runs: in this process by default
    (:class:`~personalens.jobs.executors.LocalExecutor`), or on Ray
    (:class:`~personalens.jobs.executors.RayExecutor`), whose workers rebuild their backends from ``backends`` (a
    picklable recipe such as :class:`~personalens.jobs.backends.SettingsBackends`). Whatever the executor, only
    this object (the driver) writes to the store: workers return the finished personas, the driver saves each
    user's set in one transaction and records its build status. On Ray, ``selected``/``persona`` progress events
    stay on the workers; ``user`` events arrive as users finish, in any order.
    """

    def __init__(
        self,
        model: ChatModel,
        embedder: Embedder,
        selector: PersonaXSelector,
        store: PersonaStoreProtocol,
        config: BuildConfig | None = None,
        *,
        on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
        executor: Executor | None = None,
        backends: WorkerBackends | None = None,
    ) -> None:
        self.model = model
        self.embedder = embedder
        self.selector = selector
        self.store = store
        self.config = config or BuildConfig()
        self.on_event = on_event or (lambda kind, user, payload: None)
        self.executor: Executor = executor or LocalExecutor()
        self.backends = backends

    # ------------------------------------------------------------------ configuration
    def run_config(self) -> dict[str, Any]:
        """Everything except the data that determines a persona set."""
        return {
            "build": asdict(self.config),
            "selector": self.selector.config(),
            "model": self.model.model_id,
            "embedder": self.embedder.model_id,
            "prompts_version": PROMPTS_VERSION,
        }

    def user_config(self, dataset: Dataset, history: Sequence[Interaction]) -> tuple[dict[str, Any], str]:
        fields = self.config.item_fields
        config = self.run_config() | {
            "dataset": dataset.name,
            "data_sha256": history_fingerprint(history, lambda item_id: dataset.item(item_id).text(fields)),
        }
        return config, hashlib.sha256(_canonical(config).encode()).hexdigest()

    # ------------------------------------------------------------------ one user
    def build_user(self, dataset: Dataset, user_id: str) -> PersonaSet:
        """Select, profile and store one user's persona set (always builds; :meth:`run` does the skipping)."""
        history, liked, disliked = split_history(dataset, user_id, self.config)
        config, config_hash = self.user_config(dataset, history.interactions)
        personas = self.compose(dataset, user_id, history, liked, disliked)
        return self._save(user_id, personas, config, config_hash)

    def compose(
        self,
        dataset: Dataset,
        user_id: str,
        history: History,
        liked: list[Interaction],
        disliked: list[Interaction],
    ) -> list[Persona]:
        """Select and profile one user's personas (with their embeddings); writes nothing."""
        if not liked:
            raise PersonaLensError(f"user {user_id!r} has no liked behaviours to build personas from")
        cfg = self.config
        texts = [dataset.item(x.item_id).text(cfg.item_fields) for x in liked]
        embeddings = self.embedder.embed(texts)
        selection: Selection = self.selector.select(embeddings, behaviour_times(liked))
        self.on_event("selected", user_id, {"clusters": len(selection.sizes), "selected": len(selection.selected)})
        personas = []
        seen = {x.item_id for x in history}
        titles = [dataset.item(x.item_id).title for x in history]
        for cluster, chosen in enumerate(selection.selected_by_cluster):
            picked = [liked[i] for i in chosen][-cfg.max_items_per_persona :]
            if cfg.method == "summarize":
                persona = summarize_history(
                    self.model,
                    picked,
                    dataset.items,
                    domain=cfg.domain,
                    max_words=cfg.max_words,
                    max_items=cfg.max_items_per_persona,
                    item_fields=cfg.item_fields,
                )
                meta: dict[str, Any] = {}
            else:
                negative_ids = sample_negatives(
                    [x.item_id for x in picked],
                    [x.item_id for x in disliked],
                    dataset.items,
                    seen,
                    len(picked),
                    seed=cfg.seed + cluster,
                )
                persona, trace = reflect_profile(
                    self.model,
                    [dataset.item(x.item_id) for x in picked],
                    [dataset.item(i) for i in negative_ids],
                    domain=cfg.domain,
                    max_words=cfg.max_words,
                    max_tries=cfg.reflect_max_tries,
                    item_fields=cfg.item_fields,
                    seed=cfg.seed + cluster,
                    history_titles=titles,
                )
                meta = {
                    "negatives": negative_ids,
                    "pairs_right_before_rewrite": round(trace.accuracy_before, 3),
                    "rewrites": sum(s.rewrites for s in trace.steps),
                }
            meta |= {
                "usage": persona.usage.to_dict(),
                "leaked_titles": list(persona.leaked_titles),
                "truncated": persona.truncated,
            }
            personas.append(
                Persona(
                    cluster=cluster,
                    text=persona.text,
                    centroid=selection.centroids[cluster],
                    selected_item_ids=tuple(x.item_id for x in picked),
                    cluster_size=int(selection.sizes[cluster]),
                    budget=int(selection.budgets[cluster]),
                    embedding=None,
                    meta=meta,
                )
            )
            self.on_event("persona", user_id, {"cluster": cluster, "of": len(selection.sizes)})
        persona_vectors = self.embedder.embed([p.text for p in personas])
        return [_with_embedding(p, v) for p, v in zip(personas, persona_vectors, strict=True)]

    def _save(self, user_id: str, personas: list[Persona], config: dict[str, Any], config_hash: str) -> PersonaSet:
        return self.store.save(
            user_id,
            personas,
            creator="personax-build",
            method=self.config.method,
            config=config,
            config_hash=config_hash,
            embedder_id=self.embedder.model_id,
        )

    # ------------------------------------------------------------------ many users
    def run(self, dataset: Dataset, user_ids: Sequence[str], *, run_id: str | None = None) -> BuildReport:
        """Build every user in ``user_ids`` that has no stored set for its current configuration.

        A failure for one user is recorded (with its message) and the run goes on; nothing partial is stored. A
        budget cap stops the run: the users not reached stay unbuilt and a later run picks them up.
        """
        run_id = run_id or uuid.uuid4().hex[:12]
        started = time.perf_counter()
        self.store.start_run(
            run_id, hashlib.sha256(_canonical(self.run_config()).encode()).hexdigest(), self.run_config()
        )
        outcomes: dict[str, UserOutcome] = {}
        total = Usage()
        stopped = None
        todo: list[tuple[str, tuple[str, dict[str, Any], str]]] = []
        for user_id in user_ids:
            t0 = time.perf_counter()
            history, _liked, _disliked = split_history(dataset, user_id, self.config)
            config, config_hash = self.user_config(dataset, history.interactions)
            existing = self.store.find(user_id, config_hash)
            if existing is None:
                todo.append((user_id, (user_id, config, config_hash)))
                continue
            outcome = UserOutcome(user_id, "cached", existing.version, len(existing.personas))
            self.store.mark_build(run_id, user_id, "done")
            outcome.seconds = time.perf_counter() - t0
            outcomes[user_id] = outcome
            self.on_event("user", user_id, {"status": outcome.status, "seconds": outcome.seconds})
        setup = _BuildSetup(self, dataset)
        with contextlib.closing(self.executor.run(setup, _build_work, todo)) as results:
            for result in results:
                user_id = result.key
                done = result.value
                error = result.error if done is None else done.error
                used = Usage() if done is None else done.usage
                if isinstance(error, BudgetExceeded):
                    stopped = str(error)
                    self.store.mark_build(run_id, user_id, "pending", error=stopped)
                    break
                if error is not None and not isinstance(error, PersonaLensError):
                    raise error
                if error is not None or done is None or done.personas is None:
                    message = str(error) if error is not None else "the worker returned no personas"
                    outcome = UserOutcome(user_id, "failed", usage=used, error=message)
                    self.store.mark_build(run_id, user_id, "failed", error=message, usage=used.to_dict())
                else:
                    _, config, config_hash = done.item
                    saved = self._save(user_id, done.personas, config, config_hash)
                    outcome = UserOutcome(user_id, "built", saved.version, len(saved.personas), used)
                    self.store.mark_build(run_id, user_id, "done", usage=used.to_dict())
                outcome.seconds = 0.0 if done is None else done.seconds
                outcomes[user_id] = outcome
                self.on_event("user", user_id, {"status": outcome.status, "seconds": outcome.seconds})
        ordered = [outcomes[u] for u in user_ids if u in outcomes]
        for outcome in ordered:
            total = total + outcome.usage
        return BuildReport(run_id, ordered, total, time.perf_counter() - started, stopped)


@dataclass(slots=True)
class _UserBuild:
    """What a worker sends back for one user: the personas (or the error that stopped them) and the usage."""

    item: tuple[str, dict[str, Any], str]
    personas: list[Persona] | None
    usage: Usage
    seconds: float
    error: BaseException | None = None


class _BuildSetup:
    """Builds a worker's :class:`PersonaXBuilder` (without a store). In this process it reuses the driver's live
    model and embedder; on a remote worker it rebuilds them from the driver's ``backends`` recipe. Picklable: the
    live driver is dropped when it travels."""

    def __init__(self, driver: PersonaXBuilder, dataset: Dataset) -> None:
        self.driver: PersonaXBuilder | None = driver
        self.dataset = dataset
        self.selector = driver.selector
        self.config = driver.config
        self.backends = driver.backends
        self.model_id = driver.model.model_id
        self.embedder_id = driver.embedder.model_id

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["driver"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __call__(self, limiter: LLMLimiter | None, local: bool) -> tuple[PersonaXBuilder, Dataset]:
        store: Any = None  # workers never write: the driver saves what they return
        if local and self.driver is not None:
            d = self.driver
            model = d.model if limiter is None else LimitedChatModel(d.model, limiter)
            worker = PersonaXBuilder(model, d.embedder, self.selector, store, self.config, on_event=d.on_event)
            return worker, self.dataset
        if self.backends is None:
            raise ConfigError("a remote executor needs the builder's `backends` (e.g. SettingsBackends(settings))")
        model = self.backends.chat_model(limiter)
        embedder = self.backends.embedder()
        for what, got, want in (
            ("model", model.model_id, self.model_id),
            ("embedder", embedder.model_id, self.embedder_id),
        ):
            if got != want:
                raise ConfigError(f"worker {what} {got!r} differs from the driver's {want!r}")
        return PersonaXBuilder(model, embedder, self.selector, store, self.config), self.dataset


def _build_work(state: tuple[PersonaXBuilder, Dataset], item: tuple[str, dict[str, Any], str]) -> _UserBuild:
    """One user's personas on a worker; every error is returned (with the usage spent), never raised."""
    builder, dataset = state
    user_id = item[0]
    started = time.perf_counter()
    meter = UsageMeter(builder.model)  # this user's usage alone (other users may run at the same time)
    worker = PersonaXBuilder(meter, builder.embedder, builder.selector, builder.store, builder.config)
    worker.on_event = builder.on_event
    try:
        history, liked, disliked = split_history(dataset, user_id, builder.config)
        personas = worker.compose(dataset, user_id, history, liked, disliked)
    except Exception as exc:  # noqa: BLE001 - the driver decides (fail the user, stop the run, or re-raise)
        return _UserBuild(item, None, meter.total, time.perf_counter() - started, portable_error(exc))
    return _UserBuild(item, personas, meter.total, time.perf_counter() - started)


def _with_embedding(persona: Persona, vector: np.ndarray) -> Persona:
    from dataclasses import replace

    return replace(persona, embedding=np.asarray(vector, dtype=np.float32))
