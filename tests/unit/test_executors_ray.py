"""The Ray executor on a private local Ray instance (one per module): same personas as the local executor, the
global LLM limit held across worker processes, refinement through workers that write the store themselves.

Slow (Ray takes ~10 s to start on two shared cores): `make test-slow` / `pytest -m slow` runs it."""

import pytest
from _jobs_data import jobs_dataset
from test_executors import USERS, persona_sets

from personalens.jobs import BuildConfig, PersonaXBuilder, RefineJob
from personalens.jobs.executors import LocalExecutor, RayExecutor
from personalens.jobs.testing import DeterministicBackends, InFlightRecorder
from personalens.refinement.loop import ProbabilityPredictor
from personalens.refinement.windows import windows_from_history
from personalens.selection import PersonaXSelector

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    ray.init(address=None, num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _builder(path, executor, **kw):
    backends = DeterministicBackends(str(path), **kw)
    selector = PersonaXSelector(threshold_rule="n_clusters", threshold=3)
    store = backends.open_store()
    builder = PersonaXBuilder(
        backends.chat_model(),
        backends.embedder(),
        selector,
        store,
        BuildConfig(max_words=40),
        executor=executor,
        backends=backends,
    )
    return builder, store


def test_ray_builds_the_same_personas_as_local_and_keeps_the_global_llm_limit(ray_session, tmp_path):
    dataset = jobs_dataset()
    local, local_store = _builder(tmp_path / "local.sqlite", LocalExecutor())
    local_report = local.run(dataset, USERS)
    recorder = InFlightRecorder(tmp_path / "inflight")
    remote, remote_store = _builder(
        tmp_path / "ray.sqlite",
        RayExecutor(num_workers=2, llm_concurrency=1),
        delay=0.02,
        inflight=str(recorder.path),
    )
    report = remote.run(dataset, USERS)
    assert report.count("built") == local_report.count("built") == len(USERS)
    assert persona_sets(remote_store) == persona_sets(local_store)
    assert report.usage.calls == local_report.usage.calls
    in_flight, peak, started = recorder.read()
    assert in_flight == 0 and started == report.usage.calls and peak == 1
    for user_id in USERS:  # the driver wrote each user once
        assert [v.version for v in remote_store.versions(user_id)] == [1]
    again = remote.run(dataset, USERS)
    assert again.count("cached") == len(USERS)


def test_ray_limit_of_two_and_a_failing_user_is_recorded(ray_session, tmp_path):
    dataset = jobs_dataset(hater=True)
    recorder = InFlightRecorder(tmp_path / "inflight")
    builder, store = _builder(
        tmp_path / "p.sqlite", RayExecutor(num_workers=2, llm_concurrency=2), delay=0.02, inflight=str(recorder.path)
    )
    # a user with no liked behaviour fails on the worker; the driver records it and goes on
    report = builder.run(dataset, [*USERS[:3], "hater"], run_id="r1")
    assert report.count("built") == 3 and report.count("failed") == 1
    assert "no liked behaviours" in report.to_json()["failures"]["hater"]
    assert store.build_status("r1")["hater"] == "failed" and store.current("hater") is None
    assert recorder.read()[1] <= 2


def test_refine_on_ray_matches_local(ray_session, tmp_path):
    dataset = jobs_dataset(3)
    users = [windows_from_history(dataset, h, size=6, domain="movies") for h in dataset.histories()]
    results = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor(num_workers=2, llm_concurrency=2))):
        backends = DeterministicBackends(str(tmp_path / f"{name}.sqlite"))
        model = backends.chat_model()
        store = backends.open_store()
        job = RefineJob(
            model,
            ProbabilityPredictor(model),
            backends.embedder(),
            store,
            min_words=20,
            max_words=60,
            rounds=2,
            executor=executor,
            backends=backends,
            predictor_factory=ProbabilityPredictor,
        )
        report = job.run(users)
        assert report.count("refined") == len(users), report.to_json()["failures"]
        results[name] = {
            u.user_id: [
                (v.version, v.parent_version, store.get(u.user_id, v.version).personas[0].text)
                for v in store.versions(u.user_id)
            ]
            for u in users
        }
    assert results["local"] == results["ray"]
