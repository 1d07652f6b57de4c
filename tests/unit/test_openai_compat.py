import math
import threading

import numpy as np
import pytest
from _stub_server import StubServer, chat_body

from personalens._retry import RetryPolicy
from personalens.embed.openai_compat import OpenAICompatibleEmbedder
from personalens.errors import LLMError, LLMTransportError
from personalens.llm.base import ChatRequest
from personalens.llm.openai_compat import HTTPClient, OpenAICompatibleModel
from personalens.llm.scoring import score_rating

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=2.0)


def test_chat_sends_openai_body_and_reads_usage():
    with StubServer() as server:
        server.script.append((200, {}, chat_body("hello there", prompt_tokens=12, completion_tokens=2)))
        model = OpenAICompatibleModel(server.base_url, "m1", api_key="sk-secret", retry=FAST)
        result = model.chat(ChatRequest.of("hi", max_tokens=7, seed=3, prefill="Sure"))
        path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-secret"
    assert body["model"] == "m1" and body["max_tokens"] == 7 and body["seed"] == 3
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure"}
    assert result.text == "hello there"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.calls) == (12, 2, 1)
    assert "sk-secret" not in repr(model) and "sk-secret" not in repr(model.http)


def test_retry_after_is_honoured_then_success():
    slept: list[float] = []
    with StubServer() as server:
        server.script += [
            (429, {"Retry-After": "1.5"}, {"error": "slow down"}),
            (503, {}, {"error": "busy"}),
            (200, {}, chat_body("ok")),
        ]
        model = OpenAICompatibleModel(server.base_url, "m", retry=FAST, sleep=slept.append)
        assert model.chat(ChatRequest.of("x")).text == "ok"
        assert len(server.requests) == 3
    assert slept[0] == 1.5  # the server's Retry-After, not the backoff
    assert 0.005 <= slept[1] <= 0.02  # backoff for attempt 2: base 0.01 * 2 with jitter in [0.5, 1]


def test_retries_are_bounded_and_reported():
    with StubServer() as server:
        server.script += [(500, {}, {"error": "boom"})] * 3
        model = OpenAICompatibleModel(server.base_url, "m", api_key="sk-secret", retry=FAST, sleep=lambda s: None)
        with pytest.raises(LLMTransportError) as info:
            model.chat(ChatRequest.of("x"))
        assert len(server.requests) == 3
    assert info.value.attempts == 3 and info.value.status == 500
    assert "sk-secret" not in str(info.value)


def test_client_errors_are_not_retried():
    with StubServer() as server:
        server.script.append((400, {}, {"error": {"message": "bad schema"}}))
        model = OpenAICompatibleModel(server.base_url, "m", retry=FAST, sleep=lambda s: None)
        with pytest.raises(LLMTransportError, match="HTTP 400.*bad schema"):
            model.chat(ChatRequest.of("x"))
        assert len(server.requests) == 1


def test_unreachable_server_fails_after_bounded_attempts():
    model = OpenAICompatibleModel("http://127.0.0.1:9/v1", "m", retry=FAST, timeout=1.0, sleep=lambda s: None)
    with pytest.raises(LLMTransportError, match="after 3 attempts"):
        model.chat(ChatRequest.of("x"))


def test_shared_concurrency_limit_across_clients():
    limiter = threading.BoundedSemaphore(2)
    with StubServer(handler=lambda path, body: (200, {}, chat_body("ok")), delay=0.15) as server:
        models = [OpenAICompatibleModel(server.base_url, "m", limiter=limiter) for _ in range(2)]
        threads = [threading.Thread(target=models[i % 2].chat, args=(ChatRequest.of(f"q{i}"),)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(server.requests) == 8
        assert server.max_in_flight == 2


def test_missing_logprobs_is_an_error_not_a_silent_zero():
    with StubServer() as server:
        server.script.append((200, {}, chat_body("4")))
        model = OpenAICompatibleModel(server.base_url, "m", retry=FAST)
        with pytest.raises(LLMError, match="no logprobs"):
            model.chat(ChatRequest.of("x", top_logprobs=5))


def test_probability_scoring_over_http():
    top = {"4": math.log(0.6), "5": math.log(0.3), "3": math.log(0.1)}
    with StubServer(handler=lambda path, body: (200, {}, chat_body("4", top=top))) as server:
        model = OpenAICompatibleModel(server.base_url, "m", retry=FAST)
        scores = score_rating(model, "rate it", (1, 5, 1), prefill='{"rating": ')
        body = server.requests[0][2]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert scores.expectation == pytest.approx(4 * 0.6 + 5 * 0.3 + 3 * 0.1)


def test_embeddings_client_normalises_and_reads_dimension():
    def handler(path, body):
        data = [{"index": i, "embedding": [float(len(t)), 0.0, 3.0]} for i, t in enumerate(body["input"])]
        return 200, {}, {"data": list(reversed(data))}

    with StubServer(handler=handler) as server:
        embedder = OpenAICompatibleEmbedder(HTTPClient(server.base_url), "e", batch_size=2)
        vectors = embedder.embed(["abcd", "a", "abc"])
        assert len(server.requests) == 2
    assert embedder.dim == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(vectors[0], np.array([4.0, 0.0, 3.0]) / 5.0, rtol=1e-6)


def test_slow_server_times_out_and_is_retried():
    with StubServer(handler=lambda path, body: (200, {}, chat_body("late")), delay=0.5) as server:
        model = OpenAICompatibleModel(server.base_url, "m", timeout=0.1, retry=FAST, sleep=lambda s: None)
        with pytest.raises(LLMTransportError, match="Timeout"):
            model.chat(ChatRequest.of("x"))
        assert len(server.requests) == 3
