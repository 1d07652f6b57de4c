"""The executor protocol in this process: sequential default, thread pool, the global LLM limit."""

import pickle

import numpy as np
from _jobs_data import jobs_dataset

from personalens.jobs import BuildConfig, PersonaXBuilder
from personalens.jobs.executors import LocalExecutor, ThreadLimiter
from personalens.jobs.testing import DeterministicBackends, InFlightRecorder
from personalens.selection import PersonaXSelector
from personalens.store import PersonaStore

USERS = [f"u{i}" for i in range(6)]


def _build(tmp_path, name, executor=None, *, delay=0.0, inflight=None):
    backends = DeterministicBackends(str(tmp_path / f"{name}.sqlite"), delay=delay, inflight=inflight)
    store = backends.open_store()
    selector = PersonaXSelector(threshold_rule="n_clusters", threshold=3)
    builder = PersonaXBuilder(
        backends.chat_model(),
        backends.embedder(),
        selector,
        store,
        BuildConfig(max_words=40),
        executor=executor,
        backends=backends,
    )
    report = builder.run(jobs_dataset(), USERS)
    return report, store


def persona_sets(store):
    out = {}
    for user_id in USERS:
        s = store.current(user_id)
        out[user_id] = [(p.cluster, p.text, p.centroid.tobytes(), p.selected_item_ids) for p in s.personas]
    return out


def test_thread_pool_gives_the_sequential_results_and_keeps_the_llm_limit(tmp_path):
    seq_report, seq_store = _build(tmp_path, "seq")
    recorder = InFlightRecorder(tmp_path / "inflight")
    par_report, par_store = _build(
        tmp_path, "par", LocalExecutor(threads=4, llm_concurrency=2), delay=0.01, inflight=str(recorder.path)
    )
    assert seq_report.count("built") == par_report.count("built") == len(USERS)
    assert [o.user_id for o in par_report.outcomes] == USERS  # the report keeps the input order
    assert persona_sets(seq_store) == persona_sets(par_store)
    assert seq_report.usage.calls == par_report.usage.calls > 0
    for o_seq, o_par in zip(seq_report.outcomes, par_report.outcomes, strict=True):
        assert o_seq.usage.calls == o_par.usage.calls  # per-user usage is that user's alone, even in parallel
    in_flight, peak, started = recorder.read()
    assert in_flight == 0 and started == par_report.usage.calls
    assert 1 <= peak <= 2


def test_the_limit_without_a_cap_lets_threads_overlap(tmp_path):
    # the recorder does see overlap when nothing limits it, so the bound above is not vacuous
    recorder = InFlightRecorder(tmp_path / "inflight")
    _build(tmp_path, "free", LocalExecutor(threads=3), delay=0.05, inflight=str(recorder.path))
    assert recorder.read()[1] >= 2


def test_thread_limiter_bounds_and_builder_setup_pickles_without_live_objects(tmp_path):
    import threading
    import time

    limiter = ThreadLimiter(3)
    recorder = InFlightRecorder(tmp_path / "f")

    def call():
        with limiter.slot():
            recorder.enter()
            time.sleep(0.01)
            recorder.exit()

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.read()[1] <= 3 and recorder.read()[2] == 12

    from personalens.jobs.build import _BuildSetup

    backends = DeterministicBackends(str(tmp_path / "x.sqlite"))
    builder = PersonaXBuilder(
        backends.chat_model(), backends.embedder(), PersonaXSelector(), backends.open_store(), backends=backends
    )
    setup = pickle.loads(pickle.dumps(_BuildSetup(builder, jobs_dataset(1))))
    assert setup.driver is None  # the live store and model stayed behind
    worker, dataset = setup(None, False)
    assert worker.store is None and worker.model.model_id == builder.model.model_id
    assert np.array_equal(worker.embedder.embed(["a b"]), builder.embedder.embed(["a b"]))


def test_default_executor_is_local_and_sequential(tmp_path):
    backends = DeterministicBackends(str(tmp_path / "d.sqlite"))
    builder = PersonaXBuilder(backends.chat_model(), backends.embedder(), PersonaXSelector(), PersonaStore(":memory:"))
    assert isinstance(builder.executor, LocalExecutor) and builder.executor.threads == 1
