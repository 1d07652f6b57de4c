"""Where a job's per-user work runs: in this process (:class:`LocalExecutor`, the default) or on a Ray cluster
(:class:`RayExecutor`).

A job hands an executor a picklable :class:`WorkerSetup` and a picklable work function. Each worker calls the setup
once (it rebuilds the worker's own backends, e.g. from :class:`~personalens.settings.Settings`; live connections,
loaded models and open stores are never pickled), then runs ``work(state, item)`` for the items it is given. Results
come back as they finish, in any order, as :class:`WorkResult` (the item's key and either a value or the exception
the work raised; exceptions never escape a worker).

Every LLM call in every worker goes through one :class:`LLMLimiter`, so the number of calls in flight across all
workers never exceeds ``llm_concurrency``: a threading semaphore locally, a named Ray actor acting as a semaphore on
Ray. Ray is imported only when a :class:`RayExecutor` is used.
"""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from personalens.errors import BackendUnavailable, PersonaLensError
from personalens.llm.base import ChatModel, ChatRequest, ChatResult

T = TypeVar("T")
R = TypeVar("R")
S_co = TypeVar("S_co", covariant=True)


# ---------------------------------------------------------------------------------------------------------- limiter
@runtime_checkable
class LLMLimiter(Protocol):
    """A counting semaphore shared by every worker of a run: ``with limiter.slot(): ...`` around each LLM call."""

    def slot(self) -> AbstractContextManager[None]: ...


class ThreadLimiter:
    """The in-process limiter: a bounded threading semaphore."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("llm_concurrency must be >= 1")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def slot(self) -> AbstractContextManager[None]:
        return _SemaphoreSlot(self._sem)


class _SemaphoreSlot:
    def __init__(self, sem: threading.BoundedSemaphore) -> None:
        self._sem = sem

    def __enter__(self) -> None:
        self._sem.acquire()

    def __exit__(self, *exc: object) -> None:
        self._sem.release()


class LimitedChatModel:
    """Wraps a chat backend so that each call holds one slot of ``limiter`` while it runs (retries included)."""

    def __init__(self, inner: ChatModel, limiter: LLMLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def chat(self, request: ChatRequest) -> ChatResult:
        with self.limiter.slot():
            return self.inner.chat(request)

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------------------------------------- protocol
class WorkerSetup(Protocol[S_co]):
    """Builds a worker's state once per worker (picklable: it travels to Ray workers). ``limiter`` is the run's
    global LLM limiter (``None``: no limit); ``local`` is true when the worker is this very process (live objects
    may be reused)."""

    def __call__(self, limiter: LLMLimiter | None, local: bool) -> S_co: ...


@dataclass(slots=True)
class WorkResult(Generic[R]):
    """One item's outcome: ``value`` or ``error`` (the exception the work raised, re-created in the driver)."""

    key: str
    value: R | None = None
    error: BaseException | None = None


@runtime_checkable
class Executor(Protocol):
    """Runs per-user work items and yields their results as they finish."""

    name: str
    llm_concurrency: int | None

    def run(
        self,
        setup: WorkerSetup[Any],
        work: Callable[[Any, Any], Any],
        items: Sequence[tuple[str, Any]],
    ) -> Generator[WorkResult[Any], None, None]: ...

    def close(self) -> None: ...


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` itself if it survives pickling, else a :class:`PersonaLensError` (or RuntimeError) with its text."""
    try:
        again = pickle.loads(pickle.dumps(exc))
        if type(again) is type(exc) and str(again) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - any pickling failure means "send the text"
        pass
    cls = PersonaLensError if isinstance(exc, PersonaLensError) else RuntimeError
    return cls(f"{type(exc).__name__}: {exc}")


def _run_one(work: Callable[[Any, Any], Any], state: Any, key: str, item: Any) -> WorkResult[Any]:
    try:
        return WorkResult(key, value=work(state, item))
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver, which decides
        return WorkResult(key, error=exc)


# ---------------------------------------------------------------------------------------------------------- local
class LocalExecutor:
    """Runs the work in this process: one item after another (``threads=1``, the default, exactly the old
    sequential behaviour) or on a thread pool. ``llm_concurrency`` (default: no extra limit) bounds LLM calls in
    flight across the threads."""

    name = "local"

    def __init__(self, threads: int = 1, llm_concurrency: int | None = None) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self.llm_concurrency = llm_concurrency
        self.limiter: LLMLimiter | None = ThreadLimiter(llm_concurrency) if llm_concurrency else None

    def run(
        self,
        setup: WorkerSetup[Any],
        work: Callable[[Any, Any], Any],
        items: Sequence[tuple[str, Any]],
    ) -> Generator[WorkResult[Any], None, None]:
        state = setup(self.limiter, True)
        if self.threads == 1:
            for key, item in items:
                yield _run_one(work, state, key, item)
            return
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="personalens-worker")
        pending: set[Future[WorkResult[Any]]] = set()
        queue = list(items)
        try:
            while queue or pending:
                while queue and len(pending) < self.threads:
                    key, item = queue.pop(0)
                    pending.add(pool.submit(_run_one, work, state, key, item))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            # a consumer that stops early (a budget cap) lets the running items finish; queued ones never start
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------- ray
class RayLimiter:
    """The global limiter on Ray: a handle to a named semaphore actor. Picklable (actor handles travel to workers)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def slot(self) -> AbstractContextManager[None]:
        return _RaySlot(self.actor)


class _RaySlot:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __enter__(self) -> None:
        import ray

        ray.get(self.actor.acquire.remote())

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.get(self.actor.release.remote())


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailable("the Ray executor needs ray: pip install 'personalens[ray]'") from exc
    return ray


class RayExecutor:
    """Runs the work on ``num_workers`` Ray actors, each with its own backends built by the setup.

    ``address`` is ``None`` (start a private local Ray instance with ``num_cpus``), ``"auto"`` (the cluster this
    machine belongs to) or ``"ray://head:10001"`` (Ray Client). An already initialised Ray session is reused and
    left running. ``llm_concurrency`` (default 4) is the limit on LLM calls in flight over all workers, held by a
    named semaphore actor. ``cpus_per_worker`` is what each worker actor reserves on the cluster.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_workers: int = 2,
        llm_concurrency: int | None = 4,
        *,
        num_cpus: int | None = None,
        cpus_per_worker: float = 1.0,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if llm_concurrency is not None and llm_concurrency < 1:
            raise ValueError("llm_concurrency must be >= 1")
        self.address = address
        self.num_workers = num_workers
        self.llm_concurrency = llm_concurrency
        self.num_cpus = num_cpus
        self.cpus_per_worker = cpus_per_worker
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False

    def _ensure_ray(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False} | self.init_kwargs
            if self.address is None:
                cpus = self.num_cpus or max(2, int(self.num_workers * self.cpus_per_worker + 0.999))
                ray.init(address=None, num_cpus=cpus, **kwargs)
            else:
                ray.init(address=self.address, **kwargs)
            self._started = True
        return ray

    def run(
        self,
        setup: WorkerSetup[Any],
        work: Callable[[Any, Any], Any],
        items: Sequence[tuple[str, Any]],
    ) -> Generator[WorkResult[Any], None, None]:
        ray = self._ensure_ray()
        semaphore = None
        if self.llm_concurrency:
            semaphore = (
                ray.remote(_SemaphoreActor)
                .options(name=f"personalens-llm-limit-{uuid.uuid4().hex[:12]}", num_cpus=0, max_concurrency=10_000)
                .remote(self.llm_concurrency)
            )
        limiter = RayLimiter(semaphore) if semaphore is not None else None
        worker_cls = ray.remote(_WorkerActor).options(num_cpus=self.cpus_per_worker)
        setup_ref = ray.put(setup)
        work_ref = ray.put(work)
        n = min(self.num_workers, max(1, len(items)))
        actors = [worker_cls.remote(setup_ref, work_ref, limiter) for _ in range(n)]
        queue = list(items)
        running: dict[Any, tuple[Any, str]] = {}
        idle = list(actors)
        try:
            while queue or running:
                while queue and idle:
                    actor = idle.pop()
                    key, item = queue.pop(0)
                    running[actor.process.remote(key, item)] = (actor, key)
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    actor, key = running.pop(ref)
                    idle.append(actor)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the actor died (e.g. killed): the item failed
                        result = WorkResult(key, error=PersonaLensError(f"worker failed: {type(exc).__name__}: {exc}"))
                    yield result
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            for actor in actors:
                ray.kill(actor)
            if semaphore is not None:
                ray.kill(semaphore)

    def close(self) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False


class _SemaphoreActor:
    """A counting semaphore as an async Ray actor: ``acquire`` waits for a free slot, ``release`` frees one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._sem: Any = None

    def _semaphore(self) -> Any:
        import asyncio

        if self._sem is None:  # created inside the actor's event loop
            self._sem = asyncio.Semaphore(self.limit)
        return self._sem

    async def acquire(self) -> None:
        await self._semaphore().acquire()
        self.held += 1
        self.peak = max(self.peak, self.held)

    async def release(self) -> None:
        self.held -= 1
        self._semaphore().release()

    async def stats(self) -> dict[str, int]:
        return {"limit": self.limit, "held": self.held, "peak": self.peak}


class _WorkerActor:
    """One Ray worker: builds its state once, then processes one item per call."""

    def __init__(self, setup: WorkerSetup[Any], work: Callable[[Any, Any], Any], limiter: LLMLimiter | None) -> None:
        self.state = setup(limiter, False)
        self.work = work

    def process(self, key: str, item: Any) -> WorkResult[Any]:
        result = _run_one(self.work, self.state, key, item)
        if result.error is not None:
            result.error = portable_error(result.error)
        return result


def make_executor(
    kind: str,
    *,
    ray_address: str | None = None,
    workers: int = 2,
    llm_concurrency: int | None = None,
) -> Executor:
    """The executor a command line names: ``local`` or ``ray``."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(ray_address, num_workers=workers, llm_concurrency=llm_concurrency)
    raise ValueError(f"executor must be local or ray, not {kind!r}")


__all__ = [
    "Executor",
    "LLMLimiter",
    "LimitedChatModel",
    "LocalExecutor",
    "RayExecutor",
    "RayLimiter",
    "ThreadLimiter",
    "WorkResult",
    "WorkerSetup",
    "make_executor",
    "portable_error",
]
