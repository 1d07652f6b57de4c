"""Background build and refine jobs: a bounded queue, worker threads, and job records in the tenant's database.

A job runs the library's own resumable jobs (:class:`~personalens.jobs.PersonaXBuilder`,
:class:`~personalens.jobs.refine.RefineJob`) on the users' ingested behaviours, with a usage meter of its own, so a
job's tokens and seconds are exactly its own even while chat requests use the same model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from personalens.data.records import Dataset, Interaction, Item, freeze_fields
from personalens.embed.base import Embedder
from personalens.errors import PersonaLensError
from personalens.llm.base import ChatModel
from personalens.llm.usage import UsageMeter
from personalens.service.schemas import BuildOptions, RefineOptions
from personalens.service.tenants import Tenant

log = logging.getLogger("personalens.service")


@dataclass(frozen=True)
class JobTicket:
    tenant: Tenant
    job_id: str
    kind: str
    users: tuple[str, ...]
    options: BuildOptions | RefineOptions


class QueueFull(Exception):
    pass


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:16]


def tenant_dataset(tenant: Tenant, user_ids: Sequence[str], rating_scale: tuple[float, float, float]) -> Dataset:
    """The users' ingested behaviours as a :class:`Dataset` (items from the behaviours; the latest text wins)."""
    items: dict[str, Item] = {}
    interactions: list[Interaction] = []
    for user_id in user_ids:
        for row in tenant.db.behaviours(user_id):
            items[row.item_id] = Item(row.item_id, row.title, freeze_fields(row.fields.items()))
            interactions.append(Interaction(user_id, row.item_id, row.rating, row.label, row.timestamp, row.text))
    return Dataset("service", items, interactions, rating_scale)


class JobRunner:
    """``workers`` threads take jobs from a queue of at most ``queue_size``; :meth:`submit` refuses when it is full."""

    def __init__(
        self,
        model: Callable[[], ChatModel],
        embedder: Callable[[], Embedder],
        *,
        workers: int = 1,
        queue_size: int = 16,
    ) -> None:
        self._model = model
        self._embedder = embedder
        self._queue: queue.Queue[JobTicket | None] = queue.Queue(maxsize=queue_size)
        self._n_workers = workers
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle

    def start(self) -> None:
        for i in range(self._n_workers):
            thread = threading.Thread(target=self._work, name=f"personalens-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; wait up to ``timeout`` for the running ones. Jobs still queued or running stay so in
        their records and are marked ``interrupted`` when the tenant is next opened."""
        self._stopping.set()
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    # -- submission

    def submit(self, tenant: Tenant, kind: str, users: Sequence[str], options: BuildOptions | RefineOptions) -> str:
        if self._stopping.is_set():
            raise QueueFull("the service is shutting down")
        job_id = new_job_id()
        ticket = JobTicket(tenant, job_id, kind, tuple(users), options)
        tenant.db.create_job(job_id, kind, options.model_dump(mode="json"), list(users))
        try:
            self._queue.put_nowait(ticket)
        except queue.Full:
            tenant.db.update_job(job_id, status="failed", finished_at=time.time(), error="the job queue was full")
            raise QueueFull("the job queue is full; try again later") from None
        return job_id

    # -- work

    def _work(self) -> None:
        while True:
            ticket = self._queue.get()
            if ticket is None or self._stopping.is_set():
                return
            try:
                self._run(ticket)
            except Exception:  # a bug must not kill the worker; the job is marked failed
                log.exception("job %s failed", ticket.job_id)
                try:
                    ticket.tenant.db.update_job(
                        ticket.job_id, status="failed", finished_at=time.time(), error="internal error"
                    )
                except Exception:
                    log.exception("could not record the failure of job %s", ticket.job_id)

    def _run(self, ticket: JobTicket) -> None:
        db = ticket.tenant.db
        started = time.time()
        db.update_job(ticket.job_id, status="running", started_at=started)
        progress = {"users": len(ticket.users), "finished": 0, "failed": 0}
        meter: UsageMeter | None = None
        try:
            meter = UsageMeter(self._model())  # built on first use: a missing model fails the job, not the worker
            if ticket.kind == "build":
                assert isinstance(ticket.options, BuildOptions)
                summary, stopped = self._build(ticket, ticket.options, meter, progress)
            else:
                assert isinstance(ticket.options, RefineOptions)
                summary, stopped = self._refine(ticket, ticket.options, meter, progress)
        except (PersonaLensError, ValueError) as exc:
            db.update_job(
                ticket.job_id,
                status="failed",
                finished_at=time.time(),
                error=str(exc),
                usage=None if meter is None else meter.total.to_dict(),
                seconds=round(time.time() - started, 3),
                progress=progress,
            )
            return
        finally:
            for user_id in ticket.users:  # the personas may have changed: serve them fresh on the next request
                ticket.tenant.index.remove(user_id)
        db.update_job(
            ticket.job_id,
            status="stopped" if stopped else "done",
            finished_at=time.time(),
            error=stopped,
            usage=meter.total.to_dict(),
            seconds=round(time.time() - started, 3),
            progress=progress,
            summary=summary,
        )

    def _progress_hook(self, ticket: JobTicket, progress: dict[str, int]) -> Callable[[str, str, dict[str, Any]], None]:
        def on_event(kind: str, user_id: str, payload: dict[str, Any]) -> None:
            if kind == "user":
                progress["finished"] += 1
                progress["failed"] += int(payload.get("status") == "failed")
                ticket.tenant.db.update_job(ticket.job_id, progress=progress)

        return on_event

    def _usable(self, ticket: JobTicket, progress: dict[str, int], check: Callable[[str], str | None]) -> list[str]:
        """The users ``check`` finds nothing wrong with; the others are recorded as failed with its reason."""
        usable = []
        for user_id in ticket.users:
            problem = check(user_id)
            if problem is None:
                usable.append(user_id)
            else:
                ticket.tenant.db.mark_job_user(ticket.job_id, user_id, "failed", problem)
                progress["finished"] += 1
                progress["failed"] += 1
        return usable

    def _build(
        self, ticket: JobTicket, options: BuildOptions, meter: UsageMeter, progress: dict[str, int]
    ) -> tuple[dict[str, Any], str | None]:
        from personalens.jobs import BuildConfig, PersonaXBuilder
        from personalens.selection import PersonaXSelector

        tenant = ticket.tenant
        dataset = tenant_dataset(tenant, ticket.users, options.rating_scale)
        known = set(dataset.users)
        users = self._usable(ticket, progress, lambda u: None if u in known else "no behaviours ingested")
        config = BuildConfig(
            method=options.method,
            domain=options.domain,
            max_words=options.max_words,
            item_fields=tuple(options.item_fields),
            like_above=options.like_above,
            dislike_below=options.dislike_below,
        )
        rule, threshold = ("n_clusters", options.clusters if options.clusters is not None else "auto")
        selector = PersonaXSelector(
            linkage=options.linkage, threshold_rule=rule, threshold=threshold, alpha=options.alpha, ratio=options.ratio
        )
        builder = PersonaXBuilder(
            meter, self._embedder(), selector, tenant.store, config, on_event=self._progress_hook(ticket, progress)
        )
        with tenant.lock:
            report = builder.run(dataset, users, run_id=ticket.job_id) if users else None
        if report is None:
            return {"built": 0, "cached": 0, "failed": len(ticket.users)}, None
        for outcome in report.outcomes:
            tenant.db.mark_job_user(ticket.job_id, outcome.user_id, outcome.status, outcome.error)
        reached = {o.user_id for o in report.outcomes}
        for user_id in users:
            if user_id not in reached:
                tenant.db.mark_job_user(ticket.job_id, user_id, "pending", report.stopped)
        data = report.to_json()
        summary = {k: data[k] for k in ("built", "cached", "failed", "personas")}
        summary["versions"] = {o.user_id: o.version for o in report.outcomes if o.version is not None}
        return summary, report.stopped

    def _refine(
        self, ticket: JobTicket, options: RefineOptions, meter: UsageMeter, progress: dict[str, int]
    ) -> tuple[dict[str, Any], str | None]:
        from personalens.jobs.refine import RefineJob
        from personalens.refinement.loop import ProbabilityPredictor, RefineConfig, StructuredPredictor
        from personalens.refinement.windows import UserWindows, windows_from_history

        tenant = ticket.tenant
        dataset = tenant_dataset(tenant, ticket.users, options.rating_scale)
        known = set(dataset.users)
        windows: dict[str, UserWindows] = {}

        def check(user_id: str) -> str | None:
            if user_id not in known:
                return "no behaviours ingested"
            try:
                windows[user_id] = windows_from_history(
                    dataset,
                    dataset.history(user_id),
                    size=options.window,
                    item_fields=tuple(options.item_fields),
                    domain=options.domain,
                )
            except (ValueError, PersonaLensError) as exc:
                return f"cannot cut windows of {options.window} rated behaviours: {exc}"
            return None

        users = self._usable(ticket, progress, check)
        config = RefineConfig(
            options.strategy,
            verified=options.verified,
            candidates=options.candidates,
            temperature=options.temperature,
        )
        predictor = ProbabilityPredictor(meter) if options.predictor == "probability" else StructuredPredictor(meter)
        job = RefineJob(
            meter,
            predictor,
            self._embedder(),
            tenant.store,
            config,
            min_words=options.min_words,
            max_words=options.max_words,
            rounds=options.rounds,
            initial=options.initial,
            on_event=self._progress_hook(ticket, progress),
        )
        if not users:
            return {"refined": 0, "cached": 0, "failed": len(ticket.users)}, None
        with tenant.lock:
            report = job.run([windows[u] for u in users], run_id=ticket.job_id)
        for outcome in report.outcomes:
            tenant.db.mark_job_user(ticket.job_id, outcome.user_id, outcome.status, outcome.error)
        reached = {o.user_id for o in report.outcomes}
        for user_id in users:
            if user_id not in reached:
                tenant.db.mark_job_user(ticket.job_id, user_id, "pending", report.stopped)
        data = report.to_json()
        summary = {k: data[k] for k in ("refined", "cached", "failed", "rounds_run", "committed")}
        summary["versions"] = {o.user_id: o.current_version for o in report.outcomes}
        return summary, report.stopped


__all__ = ["JobRunner", "QueueFull", "tenant_dataset"]
