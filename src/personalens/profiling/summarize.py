"""Summarisation profiling: distil the items a user liked and disliked into a bounded-length persona."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from personalens.data.records import Interaction, Item
from personalens.errors import LLMOutputError
from personalens.llm.base import ChatModel, ChatRequest, Usage
from personalens.profiling import prompts


@dataclass(slots=True)
class Persona:
    """A persona text and how it was made. ``leaked_titles`` lists history titles the text names (they should not
    appear; they are reported, not hidden). ``truncated`` is True when the text was cut to the word bound."""

    text: str
    usage: Usage
    source_items: tuple[str, ...]
    leaked_titles: tuple[str, ...] = ()
    truncated: bool = False


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def bound_words(text: str, max_words: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_words`` words, at the last full sentence when there is one."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words), False
    clipped = " ".join(words[:max_words])
    sentences = _SENTENCE_END.split(clipped)
    if len(sentences) > 1:
        clipped = " ".join(sentences[:-1])
    return clipped.strip(), True


def repeated_trigram_share(text: str, *, after: str = "") -> float:
    """The share of ``text``'s word trigrams (lower-cased) that already occurred, earlier in ``text`` or anywhere in
    ``after``: 0 for all-new wording, near 1 for a copy. A text with fewer than three words gives 0.

    ``after`` is what ``text`` continues, so a continuation that restates it scores high. First answers of the 1.5B
    model repeat 1-33% of their own trigrams (median 9%); its greedy continuations of a short profile 41-99%."""
    seen = set(_trigrams(after))
    grams = _trigrams(text)
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else 0.0


def _trigrams(text: str) -> list[tuple[str, str, str]]:
    words = re.findall(r"\w+", text.lower())
    return [(words[i], words[i + 1], words[i + 2]) for i in range(len(words) - 2)]


# A line that announces the rewritten profile: a Markdown heading, a bold line or a short "...:" line naming a revised,
# updated, corrected ... profile or persona. What follows it on the same line (after a colon) is part of the profile.
_REVISION_MARK = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\*\*\s*)?(?:(?:the|your|my|a|an|here\s+is\s+the)\s+)?"
    r"(?:revised|updated|corrected|refined|improved|rewritten|new|final)\b[^\n:*]{0,40}?"
    r"\b(?:profile|persona)\b[^\n:*]{0,50}?(?:\*\*)?\s*:?\s*(?:\*\*)?\s*:?(?P<rest>.*)$",
    re.IGNORECASE,
)
# Sections a model appends after the profile to explain it
_AFTERWORD = re.compile(
    r"^\s*(?:#{1,6}\s*|\*\*\s*)(?:explanation|changes|summary of changes|rationale|justification|notes?|"
    r"what changed|key changes|why (?:this|the)\b)",
    re.IGNORECASE,
)
# A plain line (no "#" or "**") counts only when it is a label such as "Rewritten profile:" or "Here is the revised
# profile of this person:", not a sentence about the profile ("The updated profile reflects these changes:").
_PLAIN_MARK = re.compile(
    r"^\s*(?:(?:the|your|my|a|an|here\s+is\s+(?:the|my|a|an))\s+)?"
    r"(?:revised|updated|corrected|refined|improved|rewritten|new|final)\b[^\n:]{0,40}?\b(?:profile|persona)\b"
    r"(?:\s+(?:of|for|in)\b[^\n:]{0,60})?\s*:",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")
_QUOTED_RATINGS = re.compile(r"\bpredicted\b\W*(?:rating\W*)?\d[\d.]*.*\bactual\b", re.IGNORECASE)
MIN_REVISED_WORDS = 25  # a shorter section after the heading is not taken for the profile


def _is_heading(line: str) -> bool:
    stripped = line.strip()
    if stripped.startswith("#"):
        return True
    if stripped.startswith("**") and stripped.rstrip(":").endswith("**"):
        return True
    return stripped.endswith(":") and len(stripped.split()) <= 12


def revised_section(text: str) -> tuple[str, bool]:
    """The profile part of an answer that first works through the old profile and the errors and then gives the
    rewritten profile under a heading ("### Revised Profile", "**Updated persona:**", ...), and whether it was cut.

    The 1.5B model answers a refinement this way in some answers (first answers to the Refine prompt in the response
    cache, benchmarks/deeper/persona_answers.py: greedy 7 of 67, sampled at T 1, top-p 0.4 78 of 306, the
    iteration-1 adapter greedy 81 of 91), and what precedes the heading restates the old profile or quotes items
    with their predicted and actual ratings, which a profile must not hold. The text under the last such heading
    with at least ``MIN_REVISED_WORDS`` words under it (up to the next heading of its kind) is kept, without its
    leading titles, rules and lead-in lines ("Here is the corrected profile:"), without an explanation section after
    it and without lines that quote a predicted and an actual rating. An answer with no such heading, or with too
    few words under every one, is returned unchanged. The flag says whether content was left out: a
    revision heading on top of an answer that is all profile is only a title (removed, but nothing was cut)."""
    lines = text.splitlines()
    marks = []
    for i, line in enumerate(lines):
        match = _REVISION_MARK.match(line)
        rest = match.group("rest").strip() if match else ""
        if not match:
            continue
        styled = line.strip().startswith(("#", "**"))
        if (styled and (_is_heading(line) or rest)) or (not styled and _is_heading(line) and _PLAIN_MARK.match(line)):
            marks.append((i, rest.strip("*").strip()))
    if not marks:
        return text, False
    ends = [i for i, _ in marks[1:]] + [len(lines)]
    for (start, first), end in reversed(list(zip(marks, ends, strict=True))):  # the last heading a profile follows
        body = [first, *lines[start + 1 : end]] if first else lines[start + 1 : end]
        while body and (not body[0].strip() or _RULE.match(body[0]) or _is_heading(body[0])):
            body.pop(0)
        for i, line in enumerate(body):
            if _AFTERWORD.match(line):
                body = body[:i]
                break
        body = [line for line in body if not _QUOTED_RATINGS.search(line)]
        section = "\n".join(body).strip()
        if len(section.split()) >= MIN_REVISED_WORDS:
            # cut: some content (not a title, rule or blank line) is left out; a heading on top of an answer that
            # is all profile is only a title
            def content(xs: list[str]) -> int:
                return sum(bool(x.strip()) and not _is_heading(x) and not _RULE.match(x) for x in xs)

            answered = content([*lines[:start], first, *lines[start + 1 :]])
            return section, answered > content(body)
    return text, False


def clean_persona_text(text: str) -> str:
    """Strip quotes, a leading "Profile:"/"Persona:" label and extra whitespace from a model's persona answer."""
    text = text.strip().strip('"').strip()
    text = re.sub(r"^(?:\*\*)?(?:profile|persona)(?:\*\*)?\s*:\s*", "", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def summarize_history(
    model: ChatModel,
    interactions: Sequence[Interaction],
    items: Mapping[str, Item],
    *,
    domain: str = "movies",
    max_words: int = 120,
    max_items: int = 40,
    like_threshold: float | None = None,
    item_fields: Sequence[str] | None = None,
) -> Persona:
    """Write a persona from ``interactions`` (the most recent ``max_items`` are used).

    An interaction counts as liked when its ``label`` is True, or, without a label, when its rating is above
    ``like_threshold`` (default: the middle of the ratings seen). Raises :class:`LLMOutputError` on an empty answer.
    """
    chosen = list(interactions)[-max_items:]
    if not chosen:
        raise ValueError("cannot write a persona from an empty history")
    ratings = [x.rating for x in chosen if x.rating is not None]
    threshold = like_threshold
    if threshold is None and ratings:
        threshold = (min(ratings) + max(ratings)) / 2
    liked: list[str] = []
    disliked: list[str] = []
    titles: list[str] = []
    for x in chosen:
        item = items.get(x.item_id) or Item(x.item_id)
        line = item.text(item_fields, max_chars=160)
        titles.append(item.title or item.item_id)
        is_liked = x.label if x.label is not None else (x.rating is None or x.rating > (threshold or 0))
        (liked if is_liked else disliked).append(line)
    request = ChatRequest.of(
        prompts.persona_from_history(liked, disliked, domain=domain, max_words=max_words),
        max_tokens=int(max_words * 2) + 32,
        temperature=0.0,
    )
    result = model.chat(request)
    text = clean_persona_text(result.text)
    if len(text.split()) < 5:
        raise LLMOutputError(f"the persona answer is empty or too short: {result.text!r}", raw=[result.text])
    text, truncated = bound_words(text, max_words)
    leaked = find_leaked_titles(text, titles)
    return Persona(text, result.usage, tuple(x.item_id for x in chosen), leaked, truncated)


def find_leaked_titles(text: str, titles: Sequence[str]) -> tuple[str, ...]:
    """The titles (without their year) that ``text`` names; a persona should describe tastes, not list items. A title
    of one word counts only as written in the title ("Heat", not "turn up the heat"); food.com's recipe names are
    all lower case, so there a one-word name ("guacamole") matches the plain word."""
    return tuple(title for title, pattern in _title_patterns(titles) if pattern.search(text))


def drop_naming_sentences(text: str, titles: Sequence[str]) -> tuple[str, int]:
    """``text`` without the sentences that name one of ``titles`` (as :func:`find_leaked_titles` finds them), and how
    many were dropped. Lines are kept apart (a list item is its own sentence), so a raw answer loses the item of a
    list that names a title, not the whole list. A persona should describe tastes; a sentence that names a rated item
    also hands the rating predictor that item's answer."""
    patterns = [pattern for _, pattern in _title_patterns(titles)]
    if not patterns:
        return text, 0
    dropped = 0
    kept: list[str | None] = []  # per line: what is left of it, None when every sentence of it was dropped
    for line in text.splitlines():
        body = line.strip()
        if not body:
            kept.append("")
            continue
        # sentence spans of the line; a title is found on the whole line, so one with a full stop or "!" in it
        # ("Dr. Dolittle", "Ah! My Goddess") drops every sentence it runs through
        cuts = [m.end() for m in _SENTENCE_END.finditer(body)]
        spans = list(zip([0, *cuts], [*cuts, len(body)], strict=True))
        named = [(m.start(), m.end()) for p in patterns for m in p.finditer(body)]
        left = [body[a:b].strip() for a, b in spans if not any(s < b and e > a for s, e in named)]
        dropped += len(spans) - len(left)
        kept.append(None if not left else line[: len(line) - len(line.lstrip())] + " ".join(left))
    for i, rest in enumerate(kept):
        if rest is not None and rest.rstrip().endswith(":") and _all_dropped(_items_under(kept, i)):
            kept[i] = None  # a lead-in ("rated these:") whose every item was dropped
    out = "\n".join(x for x in kept if x is not None)
    return re.sub(r"\n{3,}", "\n\n", out).strip(), dropped


def _items_under(lines: Sequence[str | None], i: int) -> list[str | None]:
    """The run of non-blank lines after line ``i`` (after one blank line when the run starts there)."""
    j = i + 1
    if j < len(lines) and lines[j] == "":
        j += 1
    run: list[str | None] = []
    while j < len(lines) and lines[j] != "":
        run.append(lines[j])
        j += 1
    return run


def _all_dropped(lines: Sequence[str | None]) -> bool:
    return bool(lines) and all(x is None for x in lines)


def _title_patterns(titles: Sequence[str]) -> list[tuple[str, re.Pattern[str]]]:
    """(title, pattern finding it in a text) for each distinct title long enough to check (see :func:`_bare_title`)."""
    out = []
    for title in dict.fromkeys(titles):
        bare = _bare_title(title)
        if not bare:
            continue
        if len(bare.split()) == 1:  # as written in the title, e.g. "Heat"
            shown = _bare_title_as_written(title)
            out.append((title, re.compile(r"(?<!\w)" + re.escape(shown) + r"(?!\w)")))
        else:
            out.append((title, re.compile(r"(?<!\w)" + re.escape(bare) + r"(?!\w)", re.IGNORECASE)))
    return out


def _bare_title_as_written(title: str) -> str:
    """:func:`_bare_title` without the lower-casing."""
    bare = re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()
    return re.sub(r",\s*(The|A|An)$", "", bare).strip()


def _bare_title(title: str) -> str:
    """A title without a trailing year or article suffix, lower-cased; empty for titles too short to check."""
    bare = _bare_title_as_written(title).lower()
    return bare if len(bare) >= 4 else ""
