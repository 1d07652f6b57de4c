"""Probability scoring: the distribution a model puts on a closed set of answers, read from its token probabilities.

Small local models give near-constant answers when asked to *generate* a rating, yet the probabilities they put on
the digits 1–5 separate liked from disliked items well. :func:`score_choices` asks for the top next-token
log-probabilities after the prompt (and an optional pre-filled answer start) and credits each token to the answer it
spells. Answers that take several tokens ("4.5", "Sci-Fi") are followed down token by token, one short request per
branch worth following; with a shared prompt these requests reuse the server's prompt cache, so they are cheap.

Put what is shared (the persona, the instructions) first and what varies (the item) last: llama.cpp then reuses the
cached prefix across items and scoring N items costs far less than N full prompts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from personalens.errors import LLMOutputError
from personalens.llm.base import ChatModel, ChatRequest, Message, Usage


@dataclass(slots=True)
class ChoiceScores:
    """``probs[i]`` is the probability of ``choices[i]`` renormalised over the choices; ``mass`` is how much of the
    model's probability the choices had before renormalising (near 1 means the model answered within the set)."""

    choices: tuple[str, ...]
    probs: tuple[float, ...]
    mass: float
    values: tuple[float, ...] | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def expectation(self) -> float | None:
        """Σ p_i · v_i, the expected value when the choices have numeric values (e.g. an expected rating)."""
        if self.values is None:
            return None
        return float(sum(p * v for p, v in zip(self.probs, self.values, strict=True)))

    @property
    def best(self) -> str:
        return self.choices[max(range(len(self.probs)), key=self.probs.__getitem__)]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.choices, self.probs, strict=True))


def score_choices(
    model: ChatModel,
    messages: str | Message | Sequence[Message],
    choices: Sequence[str],
    *,
    prefill: str = "",
    values: Sequence[float] | None = None,
    aliases: Mapping[str, str] | None = None,
    top_logprobs: int = 20,
    min_mass: float = 0.05,
    min_branch: float = 0.002,
    max_depth: int = 4,
    cache_prompt: bool = True,
) -> ChoiceScores:
    """Score ``choices`` as answers to ``messages``.

    ``aliases`` maps other spellings to a choice (``{"4.0": "4"}``). A token that spells a choice and then a
    delimiter ("4," or "4\\n") counts for that choice. Branches below ``min_branch`` probability are not followed.
    Raises :class:`~personalens.errors.LLMOutputError` when the choices get less than ``min_mass`` of the probability
    (the model was answering something else), with the top tokens it preferred. ``cache_prompt=False`` stops a
    llama.cpp backend from reusing the cached prompt prefix (only useful to measure what the reuse saves).
    """
    if not choices:
        raise ValueError("score_choices needs at least one choice")
    if len(set(choices)) != len(choices):
        raise ValueError("choices must be distinct")
    if values is not None and len(values) != len(choices):
        raise ValueError("values must match choices one to one")
    canonical = {c: c for c in choices}
    canonical.update(aliases or {})
    for alias, target in canonical.items():
        if target not in choices:
            raise ValueError(f"alias {alias!r} points to {target!r}, which is not a choice")
    surfaces = list(canonical)
    base = ChatRequest.of(messages, max_tokens=1, temperature=0.0, top_logprobs=top_logprobs, prefill=prefill)
    if cache_prompt is False:
        base = replace(base, cache_prompt=False)
    credit = dict.fromkeys(choices, 0.0)
    usage = Usage()
    seen_top: list[str] = []

    # After a prefill that ends in a word or punctuation ("Answer:"), the model's first token carries the space before
    # the answer (" comedy") and is sent on as it is; a whitespace-only first token (" " before a digit) is followed
    # once. After a prefill that already ends in whitespace (or none), a first token's leading space is dropped.
    keep_space = bool(prefill) and not prefill[-1].isspace()

    def next_tokens(sent: str) -> Mapping[str, float]:
        nonlocal usage
        request = replace(base, prefill=prefill + sent)
        result = model.chat(request)
        usage = usage + result.usage
        if not result.logprobs:
            raise LLMOutputError(f"{model.model_id} returned no token log-probabilities", raw=[result.text])
        return result.logprobs[0].top

    def terminal_match(text: str) -> str | None:
        """The longest surface that ``text`` starts with, followed by a non-alphanumeric delimiter."""
        best = None
        for s in surfaces:
            if text.startswith(s) and len(text) > len(s) and not text[len(s)].isalnum():
                if best is None or len(s) > len(best):
                    best = s
        return best

    def explore(sent: str, text: str, weight: float, depth: int) -> None:
        """``sent``: what follows the prefill in the request; ``text``: the answer it spells (no leading space)."""
        top = next_tokens(sent)
        if depth == 0:
            seen_top.extend(f"{tok!r}:{math.exp(lp):.3f}" for tok, lp in list(top.items())[:5])
        for token, logprob in top.items():
            p = weight * math.exp(logprob)
            piece = token.lstrip() if not text else token
            if not piece:
                if keep_space and not sent and token and p >= min_branch:
                    explore(token, "", p, depth)  # the space before the answer, then the answer
                continue
            extended = text + piece
            longer = [s for s in surfaces if s.startswith(extended) and s != extended]
            if longer and depth + 1 < max_depth and p >= min_branch:
                explore_with_stop(sent + (token if keep_space or text else piece), extended, p, depth + 1)
            elif extended in canonical:
                credit[canonical[extended]] += p
            else:
                match = terminal_match(extended)
                if match is not None:
                    credit[canonical[match]] += p

    def explore_with_stop(sent: str, text: str, p: float, depth: int) -> None:
        """Follow ``text`` one more token; if ``text`` is itself a choice, tokens that end the answer count for it."""
        if text not in canonical:
            explore(sent, text, p, depth)
            return
        top = next_tokens(sent)
        for token, logprob in top.items():
            q = p * math.exp(logprob)
            extended = text + token
            if any(s.startswith(extended) and s != text for s in surfaces):
                if extended in canonical and not any(s.startswith(extended) and s != extended for s in surfaces):
                    credit[canonical[extended]] += q
                elif depth + 1 < max_depth and q >= min_branch:
                    explore_with_stop(sent + token, extended, q, depth + 1)
            elif not token or not token[0].isalnum():
                credit[canonical[text]] += q

    explore("", "", 1.0, 0)
    mass = sum(credit.values())
    if mass < min_mass:
        raise LLMOutputError(
            f"the choices {list(choices)[:6]} got only {mass:.3f} of the probability; "
            f"the model's top next tokens were {', '.join(seen_top)}",
            raw=seen_top,
        )
    probs = tuple(credit[c] / mass for c in choices)
    return ChoiceScores(tuple(choices), probs, mass, None if values is None else tuple(values), usage)


def rating_choices(low: float, high: float, step: float) -> tuple[list[str], list[float], dict[str, str]]:
    """Answer strings, their numeric values and aliases for a rating scale, e.g. (0.5, 5, 0.5) gives
    "0.5", "1", "1.5", … "5" with aliases "1.0" → "1". Whole-number scales get no aliases ("4.0" still counts for
    "4" as a delimited match), so scoring them takes a single request."""
    if step <= 0 or high < low:
        raise ValueError(f"bad rating scale ({low}, {high}, {step})")
    count = int(round((high - low) / step)) + 1
    values = [round(low + i * step, 6) for i in range(count)]
    fractional = not float(step).is_integer() or not float(low).is_integer()
    choices, aliases = [], {}
    for v in values:
        text = str(int(v)) if float(v).is_integer() else f"{v:g}"
        choices.append(text)
        if fractional and float(v).is_integer():
            aliases[f"{int(v)}.0"] = text
    return choices, values, aliases


def score_rating(
    model: ChatModel,
    messages: str | Message | Sequence[Message],
    scale: tuple[float, float, float] = (1, 5, 1),
    *,
    prefill: str = "",
    **kwargs: object,
) -> ChoiceScores:
    """The distribution over a rating scale and its expectation (:attr:`ChoiceScores.expectation`)."""
    choices, values, aliases = rating_choices(*scale)
    return score_choices(model, messages, choices, prefill=prefill, values=values, aliases=aliases, **kwargs)  # type: ignore[arg-type]
