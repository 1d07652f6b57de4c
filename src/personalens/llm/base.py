"""The calling contract every chat backend follows.

A backend turns one :class:`ChatRequest` into one :class:`ChatResult`. Requests are plain data, so the same request
can go to the embedded llama.cpp model, to any OpenAI-compatible server, or to the scripted test double, and can be
hashed whole for the response cache. Every result carries its token usage and wall time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from personalens.errors import LLMError, LLMOutputError


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A native tool call the model asked for: the server's call id, the function name and its raw JSON arguments."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``tool_calls`` (on an assistant message) and ``tool_call_id`` (on a ``tool`` message) carry
    native tool calling; plain conversations leave them empty."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def canonical(self) -> list[Any]:
        if not self.tool_calls and self.tool_call_id is None:
            return [self.role, self.content]  # the keys of plain requests stay what they were before tools existed
        return [
            self.role,
            self.content,
            {"tool_calls": [[c.id, c.name, c.arguments] for c in self.tool_calls], "tool_call_id": self.tool_call_id},
        ]

    def to_openai(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        return d


def user(content: str) -> Message:
    return Message("user", content)


def system(content: str) -> Message:
    return Message("system", content)


def assistant(content: str, tool_calls: Sequence[ToolCall] = ()) -> Message:
    return Message("assistant", content, tuple(tool_calls))


def tool_message(call_id: str, content: str) -> Message:
    """The result of one native tool call, answered back to the model."""
    return Message("tool", content, (), call_id)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call.

    ``prefill`` is text the assistant's answer must start with; the model continues it (llama.cpp and vLLM support
    this; the prefill is not repeated in :attr:`ChatResult.text`). ``json_schema`` asks for schema-constrained output
    where the backend supports it. ``top_logprobs`` > 0 asks for that many alternatives per generated token.
    ``sample`` distinguishes otherwise identical requests in the response cache: bump it to force a fresh sample.
    ``cache_prompt`` lets a llama.cpp backend reuse the KV cache of a shared prompt prefix.
    ``repetition_penalty`` (> 1 discourages repeats; DeePer samples with 1.1) is passed to servers that know it.
    ``tools`` are OpenAI function specs (``{"type": "function", "function": {"name", "description", "parameters"}}``)
    for backends with native tool calling; the answer's :attr:`ChatResult.tool_calls` holds what the model called.
    """

    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: Mapping[str, Any] | None = None
    top_logprobs: int = 0
    prefill: str = ""
    sample: int = 0
    cache_prompt: bool = True
    repetition_penalty: float | None = None
    tools: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a chat request needs at least one message")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError("top_logprobs must be between 0 and 20 (the OpenAI API limit)")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0 (1.0 means none)")

    @classmethod
    def of(cls, messages: str | Message | Sequence[Message], **kwargs: Any) -> ChatRequest:
        """Build a request from a prompt string, one message or a list of messages."""
        if isinstance(messages, str):
            msgs: tuple[Message, ...] = (user(messages),)
        elif isinstance(messages, Message):
            msgs = (messages,)
        else:
            msgs = tuple(messages)
        return cls(messages=msgs, **kwargs)

    def canonical(self) -> dict[str, Any]:
        """A JSON-ready dict of every field that can change the answer (the cache key is its hash)."""
        d = asdict(self)
        d["messages"] = [m.canonical() for m in self.messages]
        d["stop"] = list(self.stop)
        if self.tools:
            d["tools"] = [dict(t) for t in self.tools]
        else:
            d.pop("tools")  # keeps the keys of requests made before tools existed
        d.pop("cache_prompt")  # a speed setting: the same answer either way
        if d["repetition_penalty"] is None:
            d.pop("repetition_penalty")  # keeps the keys of requests made before the field existed
        return d

    def cache_key(self, model_id: str) -> str:
        payload = json.dumps({"model": model_id, "request": self.canonical()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_openai(self, model: str | None) -> dict[str, Any]:
        """The body of an OpenAI ``/chat/completions`` request."""
        messages = [m.to_openai() for m in self.messages]
        if self.prefill:
            messages.append({"role": "assistant", "content": self.prefill})
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if model:
            body["model"] = model
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.seed is not None:
            body["seed"] = self.seed
        if self.repetition_penalty is not None:
            # not an OpenAI field: vLLM reads "repetition_penalty", llama.cpp's server "repeat_penalty"; sent only
            # when asked for, so hosted OpenAI endpoints (which reject unknown fields) never see them
            body["repetition_penalty"] = self.repetition_penalty
            body["repeat_penalty"] = self.repetition_penalty
        if self.stop:
            body["stop"] = list(self.stop)
        if self.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(self.json_schema), "strict": True},
            }
        if self.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if self.tools:
            body["tools"] = [dict(t) for t in self.tools]
        return body


@dataclass(slots=True)
class Usage:
    """Tokens and time. Adding two usages sums them; ``calls`` counts backend calls (cache hits are not calls)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_prompt_tokens + other.cached_prompt_tokens,
            self.calls + other.calls,
            self.cache_hits + other.cache_hits,
            self.seconds + other.seconds,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens - other.prompt_tokens,
            self.completion_tokens - other.completion_tokens,
            self.cached_prompt_tokens - other.cached_prompt_tokens,
            self.calls - other.calls,
            self.cache_hits - other.cache_hits,
            self.seconds - other.seconds,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        """The inverse of :meth:`to_dict`; derived keys (``total_tokens``) and unknown ones are ignored, and
        anything that is not a mapping (a record written without usage) gives an empty usage."""
        if not isinstance(data, Mapping):
            return cls()
        names = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "calls", "cache_hits", "seconds")
        return cls(**{k: data[k] for k in names if k in data})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_tokens"] = self.total_tokens
        d["seconds"] = round(self.seconds, 3)
        return d

    def describe(self) -> str:
        return (
            f"{self.calls} calls ({self.cache_hits} cached), {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion tokens, {self.seconds:.1f} s"
        )


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """One generated token, its log-probability, and the top alternatives at that position (token -> logprob)."""

    token: str
    logprob: float
    top: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class ChatResult:
    text: str
    usage: Usage
    finish_reason: str = "stop"
    logprobs: list[TokenLogprobs] | None = None
    model: str = ""
    from_cache: bool = False
    timings: Mapping[str, float] | None = None  # server-side speed figures when the server reports them (llama.cpp)
    tool_calls: tuple[ToolCall, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": asdict(self.usage),
            "finish_reason": self.finish_reason,
            "logprobs": None
            if self.logprobs is None
            else [{"token": t.token, "logprob": t.logprob, "top": dict(t.top)} for t in self.logprobs],
            "model": self.model,
            **({"tool_calls": [[c.id, c.name, c.arguments] for c in self.tool_calls]} if self.tool_calls else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatResult:
        lps = data.get("logprobs")
        return cls(
            text=data["text"],
            usage=Usage(**data["usage"]),
            finish_reason=data.get("finish_reason", "stop"),
            logprobs=None if lps is None else [TokenLogprobs(t["token"], t["logprob"], dict(t["top"])) for t in lps],
            model=data.get("model", ""),
            tool_calls=tuple(ToolCall(str(i), str(n), str(a)) for i, n, a in data.get("tool_calls") or ()),
        )


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers chat requests. ``model_id`` names the exact model (and weights hash) for cache keys."""

    @property
    def model_id(self) -> str: ...

    def chat(self, request: ChatRequest) -> ChatResult: ...

    def close(self) -> None: ...


def parse_openai_chat_response(data: Mapping[str, Any], *, seconds: float) -> ChatResult:
    """Turn an OpenAI-style chat completion body (as llama.cpp, vLLM, Ollama and hosted APIs return it) into a result.

    With a prefill, llama.cpp and vLLM return only the continuation, which is what ``text`` holds.
    """
    if "error" in data and "choices" not in data:
        raise LLMError(f"the server returned an error: {json.dumps(data['error'])[:500]}")
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            text = choice.get("text", "")
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMOutputError(f"not a chat completion: {json.dumps(data)[:300]}", raw=[json.dumps(data)]) from exc
    usage_d = data.get("usage") or {}
    details = usage_d.get("prompt_tokens_details") or {}
    usage = Usage(
        prompt_tokens=int(usage_d.get("prompt_tokens") or 0),
        completion_tokens=int(usage_d.get("completion_tokens") or 0),
        cached_prompt_tokens=int(details.get("cached_tokens") or 0),
        calls=1,
        seconds=seconds,
    )
    logprobs = None
    lp = choice.get("logprobs")
    if isinstance(lp, Mapping) and lp.get("content") is not None:
        logprobs = [
            TokenLogprobs(
                token=entry.get("token", ""),
                logprob=float(entry.get("logprob", 0.0)),
                top={alt["token"]: float(alt["logprob"]) for alt in entry.get("top_logprobs") or []},
            )
            for entry in lp["content"]
        ]
    timings = data.get("timings")
    tool_calls = _tool_calls(message.get("tool_calls"), data)
    return ChatResult(
        text=text or "",
        usage=usage,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        logprobs=logprobs,
        model=str(data.get("model", "")),
        timings={k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}
        if isinstance(timings, Mapping)
        else None,
        tool_calls=tool_calls,
    )


def _tool_calls(raw: Any, data: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    """The native tool calls of an OpenAI-style message; arguments stay the raw JSON string (the caller parses it)."""
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise LLMOutputError(f"tool_calls is not a list: {json.dumps(data)[:300]}", raw=[json.dumps(data)])
    calls = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise LLMOutputError(
                f"tool call {i} has no function name: {json.dumps(call)[:300]}", raw=[json.dumps(data)]
            )
        args = fn.get("arguments", "")
        if not isinstance(args, str):  # some servers send an object instead of its JSON text
            args = json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(str(call.get("id") or f"call_{i}"), fn["name"], args))
    return tuple(calls)


def supports_native_tools(model: object) -> bool:
    """Whether ``model`` (or the backend a cache/meter wraps) takes OpenAI ``tools`` and answers ``tool_calls``."""
    seen = 0
    while model is not None and seen < 8:
        flag = getattr(model, "supports_tools", None)
        if flag is not None:
            return bool(flag)
        model = getattr(model, "inner", None)
        seen += 1
    return False
