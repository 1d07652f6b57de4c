"""Predicting a user's ratings from a persona with probability scoring (used by the demo, DeePer and evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from personalens.data.records import Item
from personalens.llm.base import ChatModel, Usage
from personalens.llm.scoring import ChoiceScores, score_rating
from personalens.profiling import prompts


@dataclass(slots=True)
class RatingPrediction:
    item_id: str
    expected: float
    scores: ChoiceScores


def predict_ratings(
    model: ChatModel,
    persona: str,
    items: Sequence[Item],
    *,
    scale: tuple[float, float, float] = (1, 5, 1),
    domain: str = "movies",
    item_fields: Sequence[str] | None = None,
    cache_prompt: bool = True,
    on_item: Callable[[int, RatingPrediction], None] | None = None,
) -> tuple[list[RatingPrediction], Usage]:
    """Expected rating of each item for the persona, read from the probabilities of the scale's values.

    Items are scored one after another with the same persona prefix, so llama.cpp reuses the cached prefix.
    ``cache_prompt=False`` turns that reuse off (for measuring what it saves).
    """
    out: list[RatingPrediction] = []
    usage = Usage()
    for index, item in enumerate(items):
        messages, prefill = prompts.rating_question(
            persona,
            item.text(item_fields, max_chars=300),
            item.title or item.item_id,
            scale=scale,
            domain=domain,
        )
        scores = score_rating(model, messages, scale, prefill=prefill, cache_prompt=cache_prompt)
        usage = usage + scores.usage
        prediction = RatingPrediction(item.item_id, float(scores.expectation or 0.0), scores)
        out.append(prediction)
        if on_item is not None:
            on_item(index, prediction)
    return out, usage
