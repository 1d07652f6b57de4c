"""The DeePer refinement job: run the dynamic persona loop for many users and store every round as a persona version.

Lineage. Round 0 (the initial persona S0, written from W0) is stored as a version without a parent, unless the job
starts from the user's current persona (``initial="current"``), which then is round 0. Round t is stored as a new
version whose parent is the persona in effect before it, with the strategy, the window, the MAE on the previous,
current and future windows before and after, the rewards and (verified mode) the gate's decision in the persona's
``meta``. A verified round whose candidates did not lower the known error is stored too (``committed`` false, the
old text kept, the reason in its note) but is not made current: the old persona stays in effect.

Resuming. Every round's version carries the job's configuration hash and a hash of the windows it had seen
(W0..Wt). A rerun finds the user's latest round stored under the same configuration whose windows still match the
data, and goes on from the next round; users with every round stored are skipped. When new windows arrive, the
same command refines over just the new ones. If the earlier windows changed, the user starts again from S0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from personalens.embed.base import Embedder
from personalens.errors import BudgetExceeded, ConfigError, PersonaLensError
from personalens.jobs.backends import WorkerBackends
from personalens.jobs.executors import Executor, LimitedChatModel, LLMLimiter, LocalExecutor
from personalens.llm.base import ChatModel, Usage
from personalens.refinement.loop import DynamicRefiner, Predictor, RefineConfig, RoundRecord
from personalens.refinement.prompts import RatedItem
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows
from personalens.store import Persona, PersonaSet, PersonaStoreProtocol

REFINE_CREATOR = "deeper-refine"
InitialFrom = Literal["window", "current"]


def windows_fingerprint(windows: Sequence[Sequence[RatedItem]]) -> str:
    """sha256 of the windows' item texts and ratings, in order (predictions are not data and are left out)."""
    h = hashlib.sha256()
    for w in windows:
        h.update(json.dumps([[x.text, x.rating] for x in w], ensure_ascii=False).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass(slots=True)
class RefineOutcome:
    """One user's result: ``refined`` (rounds ran now), ``cached`` (every round was stored) or ``failed``."""

    user_id: str
    status: Literal["refined", "cached", "failed"]
    rounds_run: int = 0
    rounds_stored: int = 0
    committed: int = 0
    versions: list[int] = field(default_factory=list)
    current_version: int | None = None
    future_mae: list[float] = field(default_factory=list)  # MAE on W_{t+1} of the persona in effect after round t
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class RefineReport:
    run_id: str
    outcomes: list[RefineOutcome]
    usage: Usage
    seconds: float
    stopped: str | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "users": len(self.outcomes),
            "refined": self.count("refined"),
            "cached": self.count("cached"),
            "failed": self.count("failed"),
            "rounds_run": sum(o.rounds_run for o in self.outcomes),
            "committed": sum(o.committed for o in self.outcomes),
            "usage": self.usage.to_dict(),
            "seconds": round(self.seconds, 2),
            "users_detail": {
                o.user_id: {
                    "status": o.status,
                    "rounds_run": o.rounds_run,
                    "rounds_stored": o.rounds_stored,
                    "current_version": o.current_version,
                    "future_mae": [round(v, 4) for v in o.future_mae],
                }
                for o in self.outcomes
            },
            "failures": {o.user_id: o.error for o in self.outcomes if o.status == "failed"},
            "stopped": self.stopped,
        }


@dataclass(slots=True)
class _Chain:
    """What is stored for a user under one configuration: the last round and the persona in effect after it."""

    last_round: int
    persona: str
    effective_version: int


class RefineJob:
    """Refines and stores personas for many users. ``on_event(kind, user_id, payload)`` reports progress: ``start``
    (rounds to run), ``round`` (one round stored), ``user`` (one user finished).

    ``executor`` runs the users (default: in this process, one after another). On a remote executor each worker
    rebuilds its model, predictor (``predictor_factory(model)``, e.g. ``ProbabilityPredictor``), embedder and store
    from ``backends``, and writes each user's rounds itself through the store's atomic, concurrency-safe ``save``:
    a user's rounds are a chain of versions whose parents are the versions just written, so the worker that owns
    the user is its only writer (one work item per user), and the driver records the build status. On a cluster the
    store must be reachable from every worker (PostgreSQL, or a SQLite file on a shared disk).
    """

    def __init__(
        self,
        model: ChatModel,
        predictor: Predictor,
        embedder: Embedder,
        store: PersonaStoreProtocol,
        config: RefineConfig | None = None,
        *,
        min_words: int = 200,
        max_words: int = 320,
        repetition_penalty: float | None = None,
        revised_only: bool = True,
        drop_naming: bool = True,
        rounds: int | None = None,
        initial: InitialFrom = "window",
        on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
        executor: Executor | None = None,
        backends: WorkerBackends | None = None,
        predictor_factory: Callable[[ChatModel], Predictor] | None = None,
    ) -> None:
        if initial not in ("window", "current"):
            raise ValueError(f"initial must be 'window' or 'current', not {initial!r}")
        if rounds is not None and rounds < 1:
            raise ValueError("rounds must be >= 1")
        if repetition_penalty is not None and repetition_penalty < 1:
            raise ValueError("repetition_penalty must be >= 1 (1: none)")
        self.model = model
        self.predictor = predictor
        self.embedder = embedder
        self.store = store
        self.config = config or RefineConfig()
        self.min_words = min_words
        self.max_words = max_words
        # the writer's settings beyond the length bounds (PersonaWriter): a penalty for every persona request, and
        # the answer clean-ups (keep the profile under a "revised profile" heading, drop sentences naming an item)
        self.repetition_penalty = repetition_penalty
        self.revised_only = revised_only
        self.drop_naming = drop_naming
        self.rounds = rounds
        self.initial = initial
        self.on_event = on_event or (lambda kind, user, payload: None)
        self.executor: Executor = executor or LocalExecutor()
        self.backends = backends
        self.predictor_factory = predictor_factory

    # ------------------------------------------------------------------ configuration
    def _writer(self, user: UserWindows | None = None) -> PersonaWriter:
        """The writer for ``user`` (None: a probe whose settings go into the configuration hash)."""
        return PersonaWriter(
            self.model,
            domain="items" if user is None else user.domain,
            scale=(1, 5, 1) if user is None else user.scale,
            min_words=self.min_words,
            max_words=self.max_words,
            repetition_penalty=self.repetition_penalty,
            revised_only=self.revised_only,
            drop_naming=self.drop_naming,
        )

    def run_config(self) -> dict[str, Any]:
        """Everything but the data that determines the stored personas (one hash per job configuration)."""
        probe = DynamicRefiner(self._writer(), self.predictor, self.config)
        return {
            "refine": probe.describe() | {"max_words": self.max_words},
            "embedder": self.embedder.model_id,
            "initial": self.initial,
        }

    def user_config(self, user: UserWindows, start: PersonaSet | None) -> tuple[dict[str, Any], str]:
        config = self.run_config() | {
            "source": user.source,
            "domain": user.domain,
            "scale": list(user.scale),
        }
        if start is not None:
            config["initial_version"] = start.version
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()
        return config, digest[:16]

    def planned_rounds(self, user: UserWindows) -> int:
        """Rounds 1..n: every window after W0 by default (the last round has no future window to score)."""
        available = len(user.windows) - 1
        return available if self.rounds is None else min(self.rounds, available)

    # ------------------------------------------------------------------ stored state
    def _chain(self, user: UserWindows, config_hash: str) -> _Chain | None:
        """The latest stored round for this configuration whose seen windows still match the data."""
        rows = [
            v for v in self.store.versions(user.user_id) if v.config_hash == config_hash and v.creator == REFINE_CREATOR
        ]
        for info in sorted(rows, key=lambda v: v.version, reverse=True):
            stored = self.store.get(user.user_id, info.version)
            if stored is None or len(stored.personas) != 1:
                continue
            meta = stored.personas[0].meta
            t = int(meta.get("round", -1))
            if not 0 <= t < len(user.windows) or meta.get("seen_sha256") != windows_fingerprint(user.up_to(t)):
                continue
            effective = info.version if meta.get("committed", True) else int(stored.parent_version or info.version)
            return _Chain(t, stored.personas[0].text, effective)
        return None

    def _persona(self, user: UserWindows, text: str, t: int, meta: dict[str, Any]) -> Persona:
        seen = [x.text for w in user.up_to(t) for x in w]
        vectors = self.embedder.embed([*seen, text])
        centroid = np.asarray(vectors[:-1], dtype=np.float32).mean(axis=0)
        return Persona(
            cluster=0,
            text=text,
            centroid=centroid.astype(np.float32),
            cluster_size=len(seen),
            budget=len(seen),
            embedding=np.asarray(vectors[-1], dtype=np.float32),
            meta=meta | {"round": t, "seen_sha256": windows_fingerprint(user.up_to(t))},
        )

    def _save(
        self,
        user: UserWindows,
        persona: Persona,
        config: dict[str, Any],
        config_hash: str,
        *,
        parent: int | None,
        note: str,
        make_current: bool,
    ) -> PersonaSet:
        return self.store.save(
            user.user_id,
            [persona],
            creator=REFINE_CREATOR,
            method=f"deeper:{self.config.label}",
            config=config,
            config_hash=config_hash,
            embedder_id=self.embedder.model_id,
            parent_version=parent,
            note=note,
            make_current=make_current,
        )

    # ------------------------------------------------------------------ one user
    def refine_user(self, user: UserWindows) -> RefineOutcome:
        started = time.perf_counter()
        n = self.planned_rounds(user)
        start_set = None
        if self.initial == "current":
            start_set = self.store.current(user.user_id)
            if start_set is None:
                raise PersonaLensError(f"user {user.user_id!r} has no stored persona to start from")
            if len(start_set.personas) != 1:
                raise PersonaLensError(
                    f"user {user.user_id!r}: the current version {start_set.version} holds "
                    f"{len(start_set.personas)} personas; refinement starts from a single persona"
                )
        config, config_hash = self.user_config(user, start_set)
        outcome = RefineOutcome(user.user_id, "refined")
        chain = self._chain(user, config_hash)
        writer = self._writer(user)
        if chain is None:
            if start_set is not None:
                chain = _Chain(0, start_set.personas[0].text, start_set.version)
            else:
                written = writer.initial(user.windows[0])
                outcome.usage = outcome.usage + written.usage
                meta = {
                    "strategy": "initial",
                    "committed": True,
                    "usage": written.usage.to_dict(),
                    "flags": {
                        "short": written.short,
                        "leaked": list(written.leaked),
                        "attempts": written.attempts,
                        "cut_to_revision": written.cut_to_revision,
                        "dropped_sentences": written.dropped_sentences,
                    },
                }
                saved = self._save(
                    user,
                    self._persona(user, written.text, 0, meta),
                    config,
                    config_hash,
                    parent=None,
                    note="initial persona from window 0",
                    make_current=True,
                )
                outcome.versions.append(saved.version)
                chain = _Chain(0, written.text, saved.version)
                self.on_event("round", user.user_id, {"round": 0, "of": n, "committed": True})
        outcome.rounds_stored = chain.last_round
        if chain.last_round >= n:
            outcome.status = "cached"
            outcome.current_version = chain.effective_version
            outcome.seconds = time.perf_counter() - started
            return outcome
        effective = chain.effective_version

        def on_round(_user_id: str, record: RoundRecord) -> None:
            nonlocal effective
            meta = {k: v for k, v in record.to_dict().items() if k != "persona"}
            meta["window"] = record.round
            if record.committed:
                note = f"round {record.round}: {record.strategy} on window {record.round}"
            else:
                reason = record.gate.reason if record.gate is not None else "not committed"
                note = f"round {record.round}: version {effective} stays in effect; {reason}"
            saved = self._save(
                user,
                self._persona(user, record.persona, record.round, meta),
                config,
                config_hash,
                parent=effective,
                note=note,
                make_current=record.committed,
            )
            outcome.versions.append(saved.version)
            outcome.rounds_run += 1
            outcome.rounds_stored = record.round
            outcome.committed += int(record.committed)
            if record.after.future is not None:
                outcome.future_mae.append(record.after.future)
            if record.committed:
                effective = saved.version
            self.on_event("round", user.user_id, {"round": record.round, "of": n, "committed": record.committed})

        refiner = DynamicRefiner(writer, self.predictor, self.config, on_round=on_round)
        trace = refiner.run(user, rounds=n, initial=chain.persona, start=chain.last_round + 1)
        outcome.usage = outcome.usage + trace.usage
        outcome.current_version = effective
        outcome.seconds = time.perf_counter() - started
        return outcome

    # ------------------------------------------------------------------ many users
    def run(self, users: Sequence[UserWindows], *, run_id: str | None = None) -> RefineReport:
        """Refine every user; one user's failure is recorded and the run goes on (the rounds it stored stay and a
        rerun continues after them); a budget cap stops the run cleanly."""
        run_id = run_id or uuid.uuid4().hex[:12]
        started = time.perf_counter()
        run_config = self.run_config()
        self.store.start_run(
            run_id, hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest(), run_config
        )
        self.on_event("start", "", {"users": len(users), "rounds": sum(self.planned_rounds(u) for u in users)})
        outcomes: dict[str, RefineOutcome] = {}
        stopped = None
        items = [(user.user_id, user) for user in users]
        with contextlib.closing(self.executor.run(_RefineSetup(self), _refine_work, items)) as results:
            for result in results:
                user_id = result.key
                error = result.error
                if isinstance(error, BudgetExceeded):
                    stopped = str(error)
                    self.store.mark_build(run_id, user_id, "pending", error=stopped)
                    break
                if error is not None and not isinstance(error, PersonaLensError):
                    raise error
                if error is not None or result.value is None:
                    message = str(error) if error is not None else "the worker returned no outcome"
                    outcome = RefineOutcome(user_id, "failed", error=message)
                    self.store.mark_build(run_id, user_id, "failed", error=message)
                else:
                    outcome = result.value
                    self.store.mark_build(run_id, user_id, "done", usage=outcome.usage.to_dict())
                outcomes[user_id] = outcome
                self.on_event("user", user_id, {"status": outcome.status, "rounds": outcome.rounds_run})
        ordered = [outcomes[u.user_id] for u in users if u.user_id in outcomes]
        total = Usage()
        for outcome in ordered:
            total = total + outcome.usage
        return RefineReport(run_id, ordered, total, time.perf_counter() - started, stopped)


class _RefineSetup:
    """Builds a worker's :class:`RefineJob`: the driver's own job in this process, or one rebuilt from the
    driver's ``backends`` and ``predictor_factory`` on a remote worker (the live driver is not pickled)."""

    def __init__(self, driver: RefineJob) -> None:
        self.driver: RefineJob | None = driver
        self.backends = driver.backends
        self.predictor_factory = driver.predictor_factory
        self.options: dict[str, Any] = {
            "config": driver.config,
            "min_words": driver.min_words,
            "max_words": driver.max_words,
            "repetition_penalty": driver.repetition_penalty,
            "revised_only": driver.revised_only,
            "drop_naming": driver.drop_naming,
            "rounds": driver.rounds,
            "initial": driver.initial,
        }

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"driver": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __call__(self, limiter: LLMLimiter | None, local: bool) -> RefineJob:
        d = self.driver
        if local and d is not None:
            if limiter is None or self.predictor_factory is None:
                return d
            model: ChatModel = LimitedChatModel(d.model, limiter)
            return RefineJob(
                model, self.predictor_factory(model), d.embedder, d.store, on_event=d.on_event, **self.options
            )
        if self.backends is None or self.predictor_factory is None:
            raise ConfigError("a remote executor needs the job's `backends` and `predictor_factory`")
        model = self.backends.chat_model(limiter)
        return RefineJob(
            model,
            self.predictor_factory(model),
            self.backends.embedder(),
            self.backends.open_store(),
            **self.options,
        )


def _refine_work(job: RefineJob, user: UserWindows) -> RefineOutcome:
    return job.refine_user(user)


__all__ = ["REFINE_CREATOR", "RefineJob", "RefineOutcome", "RefineReport", "windows_fingerprint"]
