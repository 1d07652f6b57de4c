"""Prompts of the dynamic persona strategies (initialise, Refine, SlideRegen, FullRegen, IncUpdate, HierMerge).

Our own wording of the intents in DeePer §A. Ratings are shown as numbers with the domain's scale; personas must not
name items or quote scores, so they stay descriptions of taste. Bump :data:`REFINEMENT_PROMPTS_VERSION` on any
change: it enters the configuration of every stored persona version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from personalens.llm.base import Message, user

REFINEMENT_PROMPTS_VERSION = "2"  # 2: a short profile is extended, not rewritten (extend_profile)


@dataclass(frozen=True, slots=True)
class RatedItem:
    """One behaviour as the prompts show it: the item's text, the user's rating and, when known, the prediction."""

    text: str
    rating: float
    predicted: float | None = None


def _scale_text(scale: tuple[float, float, float]) -> str:
    low, high, step = scale
    halves = "" if float(step).is_integer() else f" in steps of {step:g}"
    return f"from {low:g} (worst) to {high:g} (best){halves}"


def _rated_lines(items: Sequence[RatedItem]) -> list[str]:
    return [f"- {x.text}: rated {x.rating:g}" for x in items]


def _rules(min_words: int, max_words: int, domain: str) -> list[str]:
    return [
        "",
        "Rules:",
        f"- Describe what this person values and dislikes in {domain}: genres, themes, qualities, style, price or "
        "practical concerns where they matter, and how demanding a rater they are.",
        "- Do not name any item and do not quote any rating.",
        "- Base every statement on the evidence given; do not invent facts about the person's life.",
        f"- Write in the third person, {min_words} to {max_words} words, plain text paragraphs, nothing else.",
    ]


def extend_profile(words: int, *, min_words: int, max_words: int) -> str:
    """The follow-up to a profile that came out shorter than ``min_words``: ask only for the missing part, which the
    writer appends. Asked to write the whole profile again, the 1.5B model returned one as short or shorter (49 of
    50 greedy re-asks in the dynamic benchmark stayed under 200 words); asked for more paragraphs it added them."""
    low = min_words - words + max(10, min_words // 5)  # aim past the minimum: the model tends to stop early
    high = max(low, max_words - words)
    return (
        f"That profile has {words} words; it needs at least {min_words}. Do not repeat or rewrite it. Write only "
        f"{low} to {high} more words: new paragraphs about sides of this person's taste that it does not cover "
        "yet, under the same rules."
    )


def initial_persona(
    items: Sequence[RatedItem], *, domain: str, scale: tuple[float, float, float], min_words: int, max_words: int
) -> list[Message]:
    """The first persona, from window 0."""
    lines = [
        f"A person rated these {domain} on a scale {_scale_text(scale)}:",
        *_rated_lines(items),
        "",
        f"Write a profile of this person's taste in {domain} that would let someone predict how they rate other "
        f"{domain}.",
        *_rules(min_words, max_words, domain),
    ]
    return [user("\n".join(lines))]


def refine_persona(
    persona: str,
    items: Sequence[RatedItem],
    *,
    domain: str,
    scale: tuple[float, float, float],
    min_words: int,
    max_words: int,
) -> list[Message]:
    """DeePer's Refine: the old persona and, per new item, the rating it predicted next to the actual one."""
    lines = [
        f"Current profile of a person's taste in {domain}:",
        persona.strip(),
        "",
        f"Using only this profile, ratings were predicted for {domain} the person then rated (scale "
        f"{_scale_text(scale)}):",
        *(f"- {x.text}: predicted {x.predicted:g}, actual {x.rating:g}" for x in items if x.predicted is not None),
        "",
        "Where the predictions were too high or too low, the profile misjudged the person. Work out what it got "
        "wrong or missed, and rewrite the profile so it keeps what held true and corrects what did not.",
        *_rules(min_words, max_words, domain),
    ]
    return [user("\n".join(lines))]


def regenerate_persona(
    items: Sequence[RatedItem], *, domain: str, scale: tuple[float, float, float], min_words: int, max_words: int
) -> list[Message]:
    """SlideRegen (latest window) and FullRegen (all windows so far): a new persona from ratings alone."""
    return initial_persona(items, domain=domain, scale=scale, min_words=min_words, max_words=max_words)


def extend_persona(
    persona: str,
    items: Sequence[RatedItem],
    *,
    domain: str,
    scale: tuple[float, float, float],
    min_words: int,
    max_words: int,
) -> list[Message]:
    """IncUpdate: the old persona plus the new ratings, no predictions."""
    lines = [
        f"Current profile of a person's taste in {domain}:",
        persona.strip(),
        "",
        f"Since then the person rated these {domain} (scale {_scale_text(scale)}):",
        *_rated_lines(items),
        "",
        "Update the profile with what these new ratings show, keeping what still holds.",
        *_rules(min_words, max_words, domain),
    ]
    return [user("\n".join(lines))]


def merge_personas(long_term: str, short_term: str, *, domain: str, min_words: int, max_words: int) -> list[Message]:
    """HierMerge, second step: fold the short-term profile (latest window) into the long-term one."""
    lines = [
        f"Long-term profile of a person's taste in {domain}, built from everything they rated before:",
        long_term.strip(),
        "",
        f"Short-term profile from the {domain} they rated most recently:",
        short_term.strip(),
        "",
        "Merge them into one long-term profile: keep the stable traits, add what is new, and where they conflict "
        "prefer the recent evidence but mention the change.",
        *_rules(min_words, max_words, domain),
    ]
    return [user("\n".join(lines))]


__all__ = [
    "REFINEMENT_PROMPTS_VERSION",
    "RatedItem",
    "extend_persona",
    "initial_persona",
    "merge_personas",
    "refine_persona",
    "regenerate_persona",
]
