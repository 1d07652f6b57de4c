import json
import math
from dataclasses import replace

import pytest

from personalens._retry import Retryable, RetryPolicy, call_with_retries, parse_retry_after
from personalens.errors import BudgetExceeded, LLMError, LLMOutputError
from personalens.llm import (
    Budget,
    CachedChatModel,
    ChatRequest,
    ResponseCache,
    ScriptedChatModel,
    UsageMeter,
    user,
)
from personalens.llm.base import parse_openai_chat_response


def test_cache_key_covers_every_answer_changing_field():
    base = ChatRequest.of("hello", max_tokens=10)
    variants = [
        replace(base, messages=(user("hello!"),)),
        replace(base, max_tokens=11),
        replace(base, temperature=0.7),
        replace(base, top_p=0.9),
        replace(base, seed=1),
        replace(base, stop=("\n",)),
        replace(base, json_schema={"type": "object"}),
        replace(base, top_logprobs=5),
        replace(base, prefill="{"),
        replace(base, sample=1),
        replace(base, repetition_penalty=1.1),
    ]
    keys = {base.cache_key("m")} | {v.cache_key("m") for v in variants}
    assert len(keys) == len(variants) + 1
    assert base.cache_key("m") != base.cache_key("other-model")
    # the prompt-cache switch is a speed setting and must not split the response cache
    assert replace(base, cache_prompt=False).cache_key("m") == base.cache_key("m")
    # a field added later leaves the keys of requests that do not use it unchanged (old cache entries stay valid)
    assert "repetition_penalty" not in base.canonical()


def test_repetition_penalty_reaches_servers_only_when_asked_for():
    plain = ChatRequest.of("hi").to_openai("m")
    assert "repetition_penalty" not in plain and "repeat_penalty" not in plain
    body = ChatRequest.of("hi", repetition_penalty=1.1).to_openai("m")
    assert body["repetition_penalty"] == body["repeat_penalty"] == 1.1
    with pytest.raises(ValueError):
        ChatRequest.of("hi", repetition_penalty=0.0)


def test_request_validation():
    with pytest.raises(ValueError):
        ChatRequest(messages=())
    with pytest.raises(ValueError):
        ChatRequest.of("x", top_logprobs=21)


def test_openai_body_with_schema_and_logprobs():
    body = ChatRequest.of("q", json_schema={"type": "object"}, top_logprobs=3, stop=("END",)).to_openai("m")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["stop"] == ["END"]


def test_parse_response_reports_server_errors_and_garbage():
    with pytest.raises(LLMError, match="server returned an error"):
        parse_openai_chat_response({"error": {"message": "ctx too small"}}, seconds=0.1)
    with pytest.raises(LLMOutputError) as info:
        parse_openai_chat_response({"choices": []}, seconds=0.1)
    assert info.value.raw


def test_response_cache_hits_persist_and_refresh(tmp_path):
    path = tmp_path / "responses.sqlite"
    inner = ScriptedChatModel(["first", "second", "third"])
    model = CachedChatModel(inner, ResponseCache(path))
    request = ChatRequest.of("q", max_tokens=5)
    assert model.chat(request).text == "first"
    hit = model.chat(request)
    assert hit.text == "first" and hit.from_cache and hit.usage.cache_hits == 1 and hit.usage.calls == 0
    assert len(inner.calls) == 1
    # a new sample number draws a new answer and keeps the old one
    assert model.chat(replace(request, sample=1)).text == "second"
    model.cache.close()
    # survives reopening; refresh mode ignores and overwrites what is stored
    reopened = CachedChatModel(inner, ResponseCache(path), refresh=True)
    assert reopened.chat(request).text == "third"
    again = CachedChatModel(ScriptedChatModel([]), ResponseCache(path))
    assert again.chat(request).text == "third"
    # stored as JSON, readable without PersonaLens
    import sqlite3

    row = sqlite3.connect(path).execute("SELECT response FROM responses").fetchone()
    assert "text" in json.loads(row[0])


def test_usage_meter_sums_and_caps_before_the_call():
    inner = ScriptedChatModel(["one two", "three four", "five"])
    meter = UsageMeter(inner, Budget(max_calls=2))
    meter.chat(ChatRequest.of("a b c"))
    meter.chat(ChatRequest.of("d"))
    assert meter.total.calls == 2 and meter.total.prompt_tokens == 4 and meter.total.completion_tokens == 4
    with pytest.raises(BudgetExceeded, match="call cap"):
        meter.chat(ChatRequest.of("e"))
    assert len(inner.calls) == 2  # the capped call never reached the backend

    tokens = UsageMeter(ScriptedChatModel(["x"] * 5), Budget(max_tokens=30))
    tokens.chat(ChatRequest.of("a", max_tokens=10))
    with pytest.raises(BudgetExceeded, match="token cap"):
        tokens.chat(ChatRequest.of("a", max_tokens=29))
    assert tokens.reset().calls == 1 and tokens.total.calls == 0


def test_cache_hits_do_not_count_against_the_budget(tmp_path):
    cached = CachedChatModel(ScriptedChatModel(["a"]), ResponseCache(tmp_path / "c.sqlite"))
    meter = UsageMeter(cached, Budget(max_calls=1))
    request = ChatRequest.of("q")
    for _ in range(3):
        meter.chat(request)
    assert meter.total.calls == 1 and meter.total.cache_hits == 2


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_retries_stop_at_the_bound_and_pass_other_errors():
    attempts = []

    def flaky():
        attempts.append(1)
        raise Retryable("nope")

    with pytest.raises(Retryable):
        call_with_retries(flaky, RetryPolicy(max_attempts=4), sleep=lambda s: None)
    assert len(attempts) == 4

    def broken():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        call_with_retries(broken, RetryPolicy(max_attempts=4), sleep=lambda s: None)


def test_backoff_grows_and_is_capped():
    import random

    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=5.0)
    rng = random.Random(0)
    delays = [policy.delay(k, None, rng) for k in range(1, 8)]
    caps = [min(5.0, 2 ** (k - 1)) for k in range(1, 8)]
    assert all(0.5 * cap <= d <= cap for cap, d in zip(caps, delays, strict=True))
    assert policy.delay(1, 99.0, rng) == 5.0  # a Retry-After is capped too


def test_scripted_model_runs_out_loudly():
    model = ScriptedChatModel(["only"])
    model.chat(ChatRequest.of("a"))
    with pytest.raises(LLMError, match="ran out"):
        model.chat(ChatRequest.of("b"))


def test_scripted_next_tokens_are_probabilities():
    model = ScriptedChatModel(next_tokens=lambda r: {"A": 0.75, "B": 0.25})
    result = model.chat(ChatRequest.of("pick", top_logprobs=5))
    assert result.text == "A"
    assert math.exp(result.logprobs[0].top["B"]) == pytest.approx(0.25)
