import numpy as np

from personalens.embed import CachedEmbedder, HashEmbedder, l2_normalise


def test_hash_embedder_is_deterministic_normalised_and_word_sensitive():
    e = HashEmbedder(dim=32)
    a = e.embed(["space opera adventure", "space opera adventure", "romantic comedy"])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert np.allclose(a[0], a[1])
    b = e.embed(["space opera saga"])
    assert float(a[0] @ b[0]) > float(a[2] @ b[0])


def test_l2_normalise_keeps_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_cached_embedder_only_embeds_new_texts(tmp_path):
    inner = HashEmbedder(dim=16)
    cached = CachedEmbedder(inner, tmp_path / "e.sqlite")
    first = cached.embed(["a b", "c d", "a b"])
    assert inner.calls == [["a b", "c d"]]  # duplicates embedded once
    second = cached.embed(["c d", "e f"])
    assert inner.calls[-1] == ["e f"]
    np.testing.assert_array_equal(first[1], second[0])
    cached.close()
    reopened = CachedEmbedder(HashEmbedder(dim=16), tmp_path / "e.sqlite")
    np.testing.assert_array_equal(reopened.embed(["a b"])[0], first[0])
    assert reopened.inner.calls == []  # type: ignore[attr-defined]
    assert reopened.embed([]).shape == (0, 16)


def test_cache_is_keyed_by_model(tmp_path):
    path = tmp_path / "e.sqlite"
    CachedEmbedder(HashEmbedder(dim=8), path).embed(["x"])
    other = HashEmbedder(dim=12)
    assert CachedEmbedder(other, path).embed(["x"]).shape == (1, 12)
    assert other.calls == [["x"]]
