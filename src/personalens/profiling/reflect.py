"""Reflection profiling (AgentCF style): learn a profile from pairwise choices, updating it when it predicts wrong.

For each selected liked item (oldest first) the profile is asked to choose between it and a disliked or unseen item;
the choice is read from the probabilities of the letters A and B, with the two items placed in a seeded random order
so position bias cannot pass for taste. When the profile picks the wrong item, or still holds no information, the
model rewrites it to explain the real choice; the pair is checked again, up to ``max_tries`` rewrites per pair.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from personalens.data.records import Item
from personalens.errors import LLMOutputError
from personalens.llm.base import ChatModel, ChatRequest, Usage
from personalens.llm.scoring import score_choices
from personalens.profiling import prompts
from personalens.profiling.summarize import Persona, bound_words, clean_persona_text, find_leaked_titles


@dataclass(slots=True)
class ReflectionStep:
    positive: str
    negative: str
    p_positive_before: float
    rewrites: int
    p_positive_after: float


@dataclass(slots=True)
class ReflectionTrace:
    steps: list[ReflectionStep] = field(default_factory=list)

    @property
    def accuracy_before(self) -> float:
        """Share of pairs the profile already got right before any rewrite for that pair."""
        return sum(s.p_positive_before > 0.5 for s in self.steps) / len(self.steps) if self.steps else 0.0


def choose(
    model: ChatModel, profile: str, positive: str, negative: str, *, rng: random.Random, domain: str
) -> tuple[float, Usage]:
    """Probability that ``profile`` picks ``positive`` over ``negative`` (positions shuffled by ``rng``)."""
    positive_first = rng.random() < 0.5
    first, second = (positive, negative) if positive_first else (negative, positive)
    messages, prefill = prompts.pairwise_choice(profile, first, second, domain=domain)
    scores = score_choices(model, messages, ["A", "B"], prefill=prefill)
    p_first = scores.as_dict()["A"]
    return (p_first if positive_first else 1.0 - p_first), scores.usage


def reflect_profile(
    model: ChatModel,
    positives: Sequence[Item],
    negatives: Sequence[Item],
    *,
    initial: str = prompts.UNKNOWN_PROFILE,
    domain: str = "movies",
    max_words: int = 120,
    max_tries: int = 2,
    item_fields: Sequence[str] | None = None,
    seed: int = 0,
    history_titles: Sequence[str] = (),
) -> tuple[Persona, ReflectionTrace]:
    """Learn a profile from (positive, negative) pairs, one pair per positive (negatives are cycled).

    Returns the persona and a trace of every pair (the choice probability before and after the rewrites).
    """
    if not positives:
        raise ValueError("reflection needs at least one liked item")
    if not negatives:
        raise ValueError("reflection needs at least one disliked or unseen item to contrast with")
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    rng = random.Random(seed)
    profile = initial
    usage = Usage()
    trace = ReflectionTrace()
    truncated = False
    for index, positive_item in enumerate(positives):
        negative_item = negatives[index % len(negatives)]
        positive = positive_item.text(item_fields, max_chars=200)
        negative = negative_item.text(item_fields, max_chars=200)
        p_before, used = choose(model, profile, positive, negative, rng=rng, domain=domain)
        usage = usage + used
        p_now, rewrites = p_before, 0
        while (p_now <= 0.5 or profile == initial) and rewrites < max_tries:
            request = ChatRequest.of(
                prompts.reflect_on_choice(
                    profile, positive, negative, predicted_wrong=p_now <= 0.5, domain=domain, max_words=max_words
                ),
                max_tokens=int(max_words * 2) + 32,
            )
            result = model.chat(request)
            usage = usage + result.usage
            text = clean_persona_text(result.text)
            if len(text.split()) < 5:
                raise LLMOutputError(f"the reflected profile is empty or too short: {result.text!r}", raw=[result.text])
            profile, cut = bound_words(text, max_words)
            truncated = truncated or cut
            rewrites += 1
            p_now, used = choose(model, profile, positive, negative, rng=rng, domain=domain)
            usage = usage + used
        trace.steps.append(ReflectionStep(positive_item.item_id, negative_item.item_id, p_before, rewrites, p_now))
    titles = list(history_titles) or [i.title for i in (*positives, *negatives) if i.title]
    persona = Persona(
        profile,
        usage,
        tuple(i.item_id for i in positives),
        find_leaked_titles(profile, titles),
        truncated,
    )
    return persona, trace


def sample_negatives(
    liked: Sequence[str],
    disliked: Sequence[str],
    catalogue: Mapping[str, Item],
    seen: set[str],
    count: int,
    *,
    seed: int = 0,
) -> list[str]:
    """Negatives for reflection: the user's own disliked items first (most informative), then seeded random items
    from the catalogue the user never interacted with. Deterministic for a given seed, so runs are comparable."""
    rng = random.Random(seed)
    chosen = list(disliked)
    rng.shuffle(chosen)
    chosen = chosen[:count]
    if len(chosen) < count:
        pool = sorted(i for i in catalogue if i not in seen)
        extra = rng.sample(pool, min(count - len(chosen), len(pool)))
        chosen += extra
    return chosen
