"""A chat backend for any OpenAI-compatible server: vLLM, Ollama, llama.cpp's server, LM Studio, hosted APIs.

The API key comes from the caller (settings or environment); it is sent only in the Authorization header and never
appears in reprs, errors, logs or cache keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from personalens._retry import Retryable, RetryPolicy, call_with_retries, parse_retry_after
from personalens.errors import LLMError, LLMOutputError, LLMTransportError
from personalens.llm.base import ChatRequest, ChatResult, parse_openai_chat_response

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class HTTPClient:
    """POSTs JSON to an OpenAI-style API with bounded retries and a concurrency limit shared by its users.

    ``limiter`` may be shared between clients (e.g. the chat and embedding clients of one server) so the total number
    of requests in flight never exceeds it, however many threads call.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        limiter: threading.BoundedSemaphore | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or threading.BoundedSemaphore(max_concurrency)
        self._sleep = sleep
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, transport=transport)

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"HTTPClient({self.base_url!r}, api_key={key})"

    def post_json(self, path: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """POST ``body`` to ``base_url + path``; returns the decoded JSON and the number of attempts it took."""
        url = f"{self.base_url}/{path.lstrip('/')}"

        def attempt() -> dict[str, Any]:
            with self.limiter:
                try:
                    response = self._client.post(url, json=body)
                except httpx.RequestError as exc:  # timeouts, transport errors, a body that fails to decode
                    raise Retryable(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code in RETRY_STATUSES:
                raise Retryable(
                    f"HTTP {response.status_code}: {_short(response.text)}",
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                    status=response.status_code,
                )
            if response.status_code >= 400:
                raise LLMTransportError(
                    f"POST {url} failed with HTTP {response.status_code}: {_short(response.text)}",
                    status=response.status_code,
                )
            try:
                data = response.json()
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                # a cut-off or garbled body is a transport fault (a proxy or server dropped it mid-way): try again
                raise Retryable(
                    f"HTTP {response.status_code} with a body that is not JSON ({exc}): {_short(response.text)}",
                    status=response.status_code,
                ) from exc
            if not isinstance(data, dict):
                raise LLMOutputError(f"POST {url} returned JSON that is not an object", raw=[response.text])
            return data

        try:
            return call_with_retries(attempt, self.retry, sleep=self._sleep)
        except Retryable as exc:
            raise LLMTransportError(
                f"POST {url} failed after {self.retry.max_attempts} attempts: {exc}",
                status=exc.status,
                attempts=self.retry.max_attempts,
            ) from exc

    def close(self) -> None:
        self._client.close()


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class OpenAICompatibleModel:
    """Chat through ``POST {base_url}/chat/completions``.

    ``extra_body`` is merged into every request for server-specific switches, e.g. for vLLM prefills:
    ``{"continue_final_message": True, "add_generation_prompt": False}``.
    ``native_tools`` says the server understands OpenAI ``tools``/``tool_calls`` (vLLM with a tool parser, Ollama,
    llama.cpp's server with ``--jinja``, hosted APIs); the agent then calls tools natively instead of through its
    text protocol.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        limiter: threading.BoundedSemaphore | None = None,
        extra_body: Mapping[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        native_tools: bool = False,
    ) -> None:
        self.model = model
        self.supports_tools = native_tools
        self.extra_body = dict(extra_body or {})
        self.http = HTTPClient(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retry=retry,
            max_concurrency=max_concurrency,
            limiter=limiter,
            transport=transport,
            sleep=sleep,
        )

    @property
    def model_id(self) -> str:
        return f"openai-compatible:{self.http.base_url}:{self.model}"

    def __repr__(self) -> str:
        return f"OpenAICompatibleModel({self.http.base_url!r}, {self.model!r})"

    def chat(self, request: ChatRequest) -> ChatResult:
        body = request.to_openai(self.model)
        body.update(self.extra_body)
        started = time.perf_counter()
        data, _attempts = self.http.post_json("/chat/completions", body)
        result = parse_openai_chat_response(data, seconds=time.perf_counter() - started)
        if request.top_logprobs and result.logprobs is None:
            raise LLMError(
                f"{self.model_id} returned no logprobs although they were asked for; "
                "probability scoring needs a server that supports `logprobs`/`top_logprobs`"
            )
        return result

    def close(self) -> None:
        self.http.close()
