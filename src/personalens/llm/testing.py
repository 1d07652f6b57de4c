"""A deterministic chat model for tests: scripted answers, scripted token probabilities, and a record of every call."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from personalens.errors import LLMError
from personalens.llm.base import ChatRequest, ChatResult, TokenLogprobs, Usage

Responder = Callable[[ChatRequest], "str | ChatResult"]
TokenDistribution = Callable[[ChatRequest], Mapping[str, float]]


class ScriptedChatModel:
    """Answers from a script.

    ``answers`` is either a sequence (answered in order; running out raises :class:`LLMError`) or a function of the
    request. ``next_tokens``, when given, is a function of the request returning next-token *probabilities* at the
    answer position (after any prefill); a request that asks for logprobs is then answered from it alone (the most
    likely token as text, the distribution as ``top_logprobs``) without using up a scripted answer.
    Token counts are whitespace word counts, so usage is deterministic.
    """

    def __init__(
        self,
        answers: Sequence[str | ChatResult] | Responder = (),
        *,
        next_tokens: TokenDistribution | None = None,
        model_id: str = "scripted",
    ) -> None:
        self._answers: list[str | ChatResult] | None = None if callable(answers) else list(answers)
        self._responder: Responder | None = answers if callable(answers) else None
        self._next_tokens = next_tokens
        self._model_id = model_id
        self.calls: list[ChatRequest] = []
        self.closed = False

    @property
    def model_id(self) -> str:
        return self._model_id

    def chat(self, request: ChatRequest) -> ChatResult:
        self.calls.append(request)
        prompt_tokens = sum(len(m.content.split()) for m in request.messages) + len(request.prefill.split())
        if request.top_logprobs and self._next_tokens is not None:
            dist = dict(self._next_tokens(request))
            ranked = sorted(dist.items(), key=lambda kv: -kv[1])[: request.top_logprobs]
            top = {tok: math.log(p) for tok, p in ranked if p > 0}
            first = ranked[0][0] if ranked else ""
            logprobs = [TokenLogprobs(first, top.get(first, 0.0), top)]
            return ChatResult(first, Usage(prompt_tokens, 1, calls=1), "length", logprobs, self._model_id)
        if self._responder is not None:
            answer = self._responder(request)
        elif self._answers:
            answer = self._answers.pop(0)
        else:
            raise LLMError(f"ScriptedChatModel ran out of answers after {len(self.calls) - 1} calls")
        if isinstance(answer, ChatResult):
            return answer
        usage = Usage(prompt_tokens, len(answer.split()), calls=1)
        return ChatResult(answer, usage, "stop", None, self._model_id)

    def close(self) -> None:
        self.closed = True
