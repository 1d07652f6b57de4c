"""Embeddings from any OpenAI-compatible ``/embeddings`` endpoint (vLLM, Ollama, llama.cpp server, hosted APIs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from personalens.embed.base import l2_normalise
from personalens.errors import LLMOutputError
from personalens.llm.openai_compat import HTTPClient


class OpenAICompatibleEmbedder:
    """Batches texts into ``POST {base_url}/embeddings``; the dimension is read from the first answer."""

    def __init__(self, http: HTTPClient, model: str, *, batch_size: int = 64) -> None:
        self.http = http
        self.model = model
        self.batch_size = batch_size
        self._dim: int | None = None

    @property
    def model_id(self) -> str:
        return f"openai-compatible:{self.http.base_url}:{self.model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            data, _ = self.http.post_json("/embeddings", {"model": self.model, "input": batch})
            try:
                items = sorted(data["data"], key=lambda d: d["index"])
                vectors = [list(map(float, d["embedding"])) for d in items]
            except (KeyError, TypeError, ValueError) as exc:
                raise LLMOutputError("the embeddings answer has no data[].embedding", raw=[str(data)[:500]]) from exc
            if len(vectors) != len(batch):
                raise LLMOutputError(f"asked for {len(batch)} embeddings, got {len(vectors)}", raw=[str(data)[:500]])
            rows.extend(vectors)
        if not rows:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        array = np.asarray(rows, dtype=np.float32)
        self._dim = int(array.shape[1])
        return l2_normalise(array)
