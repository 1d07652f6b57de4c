"""Every prompt PersonaLens sends, as named functions in one place, versioned together.

Bump :data:`PROMPTS_VERSION` whenever any wording changes: it is part of the configuration hash of stored personas,
so personas written with old prompts are never mistaken for current ones. Prompts put what is shared across many
calls (the persona, the instructions) before what varies (the item), so llama.cpp's prompt cache can reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence

from personalens.llm.base import Message, user

PROMPTS_VERSION = "2"


def persona_from_history(
    liked: Sequence[str],
    disliked: Sequence[str],
    *,
    domain: str = "movies",
    max_words: int = 120,
) -> list[Message]:
    """Ask for a second-person-free, title-free description of a user's taste from items they liked and disliked.

    Small models follow a single user turn better than a role-play system prompt, so there is no system message.
    """
    lines = [
        f"Below are {domain} one person rated. Write a short profile of this person's taste in {domain}.",
        "",
        f"{domain.capitalize()} they enjoyed:",
        *(f"- {x}" for x in liked),
    ]
    if disliked:
        lines += ["", f"{domain.capitalize()} they did not enjoy:", *(f"- {x}" for x in disliked)]
    seek = (
        "- Describe the genres, themes, moods and styles they seek out and the ones they avoid."
        if disliked
        else "- Describe the genres, themes, moods and styles they seek out. You were shown only what they "
        "enjoyed, so do not guess what they avoid."
    )
    lines += [
        "",
        "Rules for the profile:",
        seek,
        "- Base every statement on the lists above; do not invent facts about the person's life.",
        "- Do not mention any title from the lists.",
        f"- Write in the third person, at most {max_words} words, as one paragraph of plain text.",
    ]
    return [user("\n".join(lines))]


def rating_question(
    persona: str,
    item_text: str,
    item_title: str,
    *,
    scale: tuple[float, float, float] = (1, 5, 1),
    domain: str = "movies",
) -> tuple[list[Message], str]:
    """A question whose answer is a rating, and the answer's pre-filled start.

    The answer is pre-filled up to the rating value (``{"item": "<title>", "rating": ``) so the next token is the
    rating itself and its probabilities can be read (see :mod:`personalens.llm.scoring`).
    """
    low, high, step = scale
    step_text = "" if float(step).is_integer() else f" in steps of {step:g}"
    text = (
        f"Profile of a person's taste in {domain}:\n{persona.strip()}\n\n"
        f"Predict how this person would rate an item on a scale from {low:g} (would dislike it) to {high:g} "
        f'(would love it){step_text}. Answer in JSON with the keys "item" and "rating".\n\n'
        f"Item: {item_text}"
    )
    title = item_title.replace('"', "'")
    return [user(text)], f'{{"item": "{title}", "rating": '


UNKNOWN_PROFILE = "Nothing is known about this person yet."


def pairwise_choice(profile: str, first: str, second: str, *, domain: str = "movies") -> tuple[list[Message], str]:
    """Ask which of two items the profiled person would pick; the answer is pre-filled up to the letter."""
    text = (
        f"Profile of a person's taste in {domain}:\n{profile.strip()}\n\n"
        "The person is offered two items and picks the one they would enjoy more. Judge only by the profile, "
        "not by which item is listed first or has the longer description.\n\n"
        f"A: {first}\nB: {second}\n\nWhich item does the person pick? Answer with A or B."
    )
    return [user(text)], "Answer: "


def reflect_on_choice(
    profile: str,
    chosen: str,
    rejected: str,
    *,
    predicted_wrong: bool,
    domain: str = "movies",
    max_words: int = 120,
) -> list[Message]:
    """Ask for an updated profile that explains a real choice the current profile did not (or could not) predict."""
    situation = (
        "The profile predicted the other item, so it is missing or misstating something."
        if predicted_wrong
        else "The profile did not contain enough to explain this choice."
    )
    text = (
        f"Current profile of a person's taste in {domain}:\n{profile.strip()}\n\n"
        f"Offered two items, the person picked:\n- {chosen}\nand passed over:\n- {rejected}\n"
        f"{situation}\n\n"
        "Rewrite the profile so that it explains this choice while keeping what earlier choices showed. "
        "Describe tastes (genres, themes, moods, styles), not individual titles, and do not name either item. "
        f"Write in the third person, at most {max_words} words, as one paragraph of plain text. "
        "Reply with the updated profile only."
    )
    return [user(text)]
