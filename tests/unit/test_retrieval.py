"""Online persona selection: cosine to normalised centroids, k>1 order, persona/both modes, batches, refresh."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest

import personalens.retrieval as retrieval_module
from personalens.errors import PersonaLensError, StoreError
from personalens.retrieval import DimensionMismatchError, PersonaIndex, UnknownUserError, retrieve_from_store
from personalens.store import Persona, PersonaSet, PersonaStore


def make_set(user: str, centroids, *, embeddings=None, version: int = 1, embedder: str = "e", chash: str = "h"):
    personas = tuple(
        Persona(
            cluster=10 * (i + 1),
            text=f"{user} v{version} persona {i}",
            centroid=np.asarray(c, dtype=np.float32),
            embedding=None if embeddings is None or embeddings[i] is None else np.asarray(embeddings[i], np.float32),
        )
        for i, c in enumerate(centroids)
    )
    return PersonaSet(
        user_id=user,
        version=version,
        parent_version=None,
        creator="test",
        method="summarize",
        config_hash=chash,
        config={},
        created_at=0.0,
        personas=personas,
        embedder_id=embedder,
    )


def save_set(store: PersonaStore, ps: PersonaSet) -> PersonaSet:
    return store.save(
        ps.user_id,
        ps.personas,
        creator=ps.creator,
        method=ps.method,
        config=ps.config,
        config_hash=ps.config_hash,
        embedder_id=ps.embedder_id,
    )


# Hand-made, 4-d. The centroids are means of unit vectors, so shorter than 1. Cluster 20 has the largest raw dot
# product with the target, but cluster 30 points the same way as the target: cosine must pick cluster 30.
HAND = [
    [0.0, 0.0, 0.9, 0.1],  # cluster 10
    [0.6, 0.6, 0.0, 0.0],  # cluster 20: raw dot 0.66, cosine 0.774
    [0.3, 0.0, 0.0, 0.05],  # cluster 30: raw dot 0.30, cosine 0.981
]
TARGET = np.array([1.0, 0.1, 0.0, 0.0], dtype=np.float32)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def hand_index() -> PersonaIndex:
    index = PersonaIndex()
    index.add(make_set("alice", HAND, chash="cfg-a"))
    return index


def test_target_closest_to_a_cluster_by_cosine_returns_that_persona(hand_index):
    assert np.argmax(np.array(HAND, np.float32) @ TARGET) == 1  # a raw dot product would pick the wrong one
    (best,) = hand_index.retrieve("alice", TARGET)
    assert best.cluster == 30 and best.text == "alice v1 persona 2"
    assert best.score == pytest.approx(cosine(HAND[2], TARGET), abs=1e-6)
    assert (best.rank, best.version, best.config_hash, best.matched) == (0, 1, "cfg-a", "centroid")
    assert hand_index.dim == 4 and hand_index.embedder_id == "e"


def test_k_greater_than_one_is_ordered_by_cosine(hand_index):
    got = hand_index.retrieve("alice", TARGET, k=3)
    assert [r.cluster for r in got] == [30, 20, 10]
    assert [r.rank for r in got] == [0, 1, 2]
    assert [r.score for r in got] == pytest.approx([cosine(c, TARGET) for c in (HAND[2], HAND[1], HAND[0])], abs=1e-6)
    assert len(hand_index.retrieve("alice", TARGET, k=10)) == 3
    # the target's length does not change cosine scores
    scaled = hand_index.retrieve("alice", TARGET * 7.5, k=3)
    assert [r.score for r in scaled] == pytest.approx([r.score for r in got], abs=1e-6)


def test_persona_and_both_modes():
    embeddings = [
        [1.0, 0.0, 0.0, 0.0],  # cluster 10's persona text is about exactly the target's topic
        None,  # cluster 20 has no text embedding
        [0.0, 1.0, 0.0, 0.0],
    ]
    index = PersonaIndex()
    index.add(make_set("bob", HAND, embeddings=embeddings))
    (by_centroid,) = index.retrieve("bob", TARGET, use="centroid")
    assert by_centroid.cluster == 30
    by_persona = index.retrieve("bob", TARGET, k=3, use="persona")
    assert [r.cluster for r in by_persona] == [10, 30]  # cluster 20 has nothing to compare: skipped
    assert by_persona[0].score == pytest.approx(cosine(embeddings[0], TARGET), abs=1e-6)
    assert {r.matched for r in by_persona} == {"persona"}
    both = index.retrieve("bob", TARGET, k=3, use="both")
    expected = {
        10: max(cosine(HAND[0], TARGET), cosine(embeddings[0], TARGET)),
        20: cosine(HAND[1], TARGET),
        30: max(cosine(HAND[2], TARGET), cosine(embeddings[2], TARGET)),
    }
    assert [r.cluster for r in both] == sorted(expected, key=expected.get, reverse=True)
    assert {r.cluster: r.score for r in both} == pytest.approx(expected, abs=1e-6)
    assert {r.cluster: r.matched for r in both} == {10: "persona", 20: "centroid", 30: "centroid"}
    index.add(make_set("carol", HAND))  # no text embeddings at all: "both" is "centroid", "persona" is an error
    assert [r.cluster for r in index.retrieve("carol", TARGET, k=3, use="both")] == [30, 20, 10]
    with pytest.raises(StoreError, match="no persona-text embeddings"):
        index.retrieve("carol", TARGET, use="persona")
    with pytest.raises(StoreError, match="no persona-text embeddings"):
        index.retrieve_many(["bob", "carol"], np.stack([TARGET, TARGET]), use="persona")
    pair = index.retrieve_many(["bob", "carol"], np.stack([TARGET, TARGET]), use="both")
    assert [r[0].cluster for r in pair] == [10, 30]
    centroid_only = PersonaIndex()
    centroid_only.add(make_set("carol", HAND))
    assert centroid_only.retrieve_many(["carol"], TARGET[None, :], use="both")[0][0].cluster == 30
    with pytest.raises(ValueError, match="use must be"):
        index.retrieve("bob", TARGET, use="text")


def test_clear_errors(hand_index):
    with pytest.raises(UnknownUserError, match="user 'zed' has no personas") as info:
        hand_index.retrieve("zed", TARGET)
    assert isinstance(info.value, KeyError) and isinstance(info.value, PersonaLensError)
    with pytest.raises(DimensionMismatchError, match=r"shape \(5,\).*4-d"):
        hand_index.retrieve("alice", np.ones(5, np.float32))
    with pytest.raises(ValueError, match="all zeros"):
        hand_index.retrieve("alice", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        hand_index.retrieve("alice", TARGET, k=0)
    with pytest.raises(DimensionMismatchError, match="dimension 5"):
        hand_index.add(make_set("dora", [[1, 0, 0, 0, 0]]))
    with pytest.raises(DimensionMismatchError, match="embedded with 'other'"):
        hand_index.add(make_set("dora", HAND, embedder="other"))
    assert "dora" not in hand_index and len(hand_index) == 1
    with pytest.raises(UnknownUserError):
        PersonaIndex().retrieve("alice", TARGET)


def random_sets(rng, n_users: int, d: int, *, embed: bool = True) -> list[PersonaSet]:
    sets = []
    for u in range(n_users):
        n = int(rng.integers(1, 7))
        cents = rng.normal(size=(n, d)) * 0.3
        embs = [rng.normal(size=d) if embed and rng.random() < 0.7 else None for _ in range(n)]
        if embed and all(e is None for e in embs):
            embs[0] = rng.normal(size=d)
        sets.append(make_set(f"u{u:03d}", cents, embeddings=embs, chash=f"h{u}"))
    return sets


@pytest.mark.parametrize("use", ["centroid", "persona", "both"])
@pytest.mark.parametrize("k", [1, 3])
def test_retrieve_many_matches_single_requests(use, k):
    rng = np.random.default_rng(3)
    d = 7  # whatever the embedder gives; nothing assumes 384
    index = PersonaIndex(capacity=8)
    index.add_many(random_sets(rng, 40, d))
    users = [f"u{int(i):03d}" for i in rng.integers(0, 40, size=60)]
    targets = rng.normal(size=(60, d)).astype(np.float32)
    expected = [index.retrieve(u, t, k=k, use=use) for u, t in zip(users, targets, strict=True)]
    for chunk_bytes in (32 << 20, 1):  # one chunk, and one request per chunk
        got = index.retrieve_many(users, targets, k=k, use=use, chunk_bytes=chunk_bytes)
        assert len(got) == 60
        for g, e in zip(got, expected, strict=True):
            assert [(r.user_id, r.cluster, r.text, r.rank, r.version, r.matched) for r in g] == [
                (r.user_id, r.cluster, r.text, r.rank, r.version, r.matched) for r in e
            ]
            assert [r.score for r in g] == pytest.approx([r.score for r in e], abs=1e-5)


def test_retrieve_many_unknown_users_and_shapes(hand_index):
    targets = np.stack([TARGET, TARGET])
    with pytest.raises(UnknownUserError, match="'zed'"):
        hand_index.retrieve_many(["alice", "zed"], targets)
    got = hand_index.retrieve_many(["alice", "zed"], targets, on_unknown="skip")
    assert got[0][0].cluster == 30 and got[1] == []
    with pytest.raises(DimensionMismatchError):
        hand_index.retrieve_many(["alice"], targets)
    with pytest.raises(DimensionMismatchError):
        hand_index.retrieve_many(["alice"], np.ones((1, 3), np.float32))
    assert hand_index.retrieve_many([], np.zeros((0, 4), np.float32)) == []


def test_from_store_serves_current_sets_without_touching_the_store(tmp_path):
    rng = np.random.default_rng(11)
    store = PersonaStore(tmp_path / "p.sqlite")
    sets = random_sets(rng, 25, 6)
    for ps in sets:
        save_set(store, ps)
    save_set(store, make_set("u000", [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]))
    store.rollback("u001", 1)
    index = PersonaIndex.from_store(store)
    assert len(index) == 25 and index.n_personas == sum(len(s.personas) for s in sets[1:]) + 2
    assert index.version("u000") == 2 and index.version("u001") == 2
    targets = rng.normal(size=(25, 6)).astype(np.float32)
    users = [f"u{i:03d}" for i in range(25)]
    expected = [retrieve_from_store(store, u, t, k=2, use="both") for u, t in zip(users, targets, strict=True)]
    store.close()  # serving needs no database
    for u, t, e in zip(users, targets, expected, strict=True):
        got = index.retrieve(u, t, k=2, use="both")
        assert [(r.cluster, r.version, r.config_hash, r.matched) for r in got] == [
            (r.cluster, r.version, r.config_hash, r.matched) for r in e
        ]
        assert [r.score for r in got] == pytest.approx([r.score for r in e], abs=1e-5)
    with pytest.raises(UnknownUserError, match="persona store"):
        retrieve_from_store(PersonaStore(tmp_path / "empty.sqlite"), "u000", targets[0])


def test_refresh_follows_resaves_rollbacks_and_deletes(tmp_path):
    with PersonaStore(tmp_path / "p.sqlite") as store:
        save_set(store, make_set("alice", HAND))
        save_set(store, make_set("bob", HAND))
        index = PersonaIndex.from_store(store)
        new = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
        save_set(store, make_set("alice", new, version=2))
        assert index.retrieve("alice", TARGET)[0].version == 1  # stale until refreshed
        index.refresh("alice")
        (best,) = index.retrieve("alice", TARGET)
        assert (best.version, best.cluster, best.text) == (2, 20, "alice v2 persona 1")
        store.rollback("alice", 1)
        index.refresh("alice")
        assert index.retrieve("alice", TARGET)[0].cluster == 30 and index.version("alice") == 3
        store.delete_user("alice")
        assert index.refresh("alice") is None
        assert "alice" not in index and "bob" in index
        assert index.retrieve("bob", TARGET)[0].cluster == 30
    with pytest.raises(StoreError, match="no store"):
        PersonaIndex().refresh("bob")


def test_many_replacements_compact_and_stay_consistent():
    rng = np.random.default_rng(5)
    index = PersonaIndex(capacity=4)
    truth: dict[str, PersonaSet] = {}
    for step in range(300):
        user = f"u{int(rng.integers(0, 10))}"
        n = int(rng.integers(1, 6))
        ps = make_set(user, rng.normal(size=(n, 5)), version=step + 1)
        index.add(ps)
        truth[user] = ps
        if step % 37 == 0:
            index.remove(user)
            del truth[user]
    assert len(index) == len(truth) and index.n_personas == sum(len(p.personas) for p in truth.values())
    assert index._state.used <= 2 * index.n_personas + 4 + 30  # dead rows are reclaimed
    for user, ps in truth.items():
        t = rng.normal(size=5).astype(np.float32)
        got = index.retrieve(user, t, k=10)
        cents = ps.centroids()
        cos = cents @ t / np.linalg.norm(cents, axis=1) / np.linalg.norm(t)
        assert [r.text for r in got] == [ps.personas[i].text for i in np.argsort(-cos, kind="stable")]
        assert {r.version for r in got} == {ps.version}


def test_readers_see_one_consistent_version_while_a_writer_refreshes():
    d = 16
    rng = np.random.default_rng(9)
    index = PersonaIndex(capacity=2)
    index.add(make_set("hot", rng.normal(size=(3, d)), version=1))
    for u in range(20):
        index.add(make_set(f"cold{u}", rng.normal(size=(2, d))))
    stop = threading.Event()
    bad: list = []

    def reader() -> None:
        t = np.ones(d, np.float32)
        while not stop.is_set():
            for r in index.retrieve("hot", t, k=8):
                if not r.text.startswith(f"hot v{r.version} "):
                    bad.append(r)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for version in range(2, 400):
        index.add(make_set("hot", rng.normal(size=(int(rng.integers(1, 8)), d)), version=version))
    stop.set()
    for t in threads:
        t.join()
    assert not bad
    assert index.version("hot") == 399


def test_the_serving_path_never_reaches_an_llm():
    tree = ast.parse(Path(retrieval_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and (m.startswith("personalens.llm") or m.startswith("personalens.profiling")) for m in imported)
