"""The persona update strategies of dynamic persona modelling, behind one writer.

* ``refine`` — DeePer: old persona + predicted-versus-actual ratings of the new window.
* ``slide_regen`` — a new persona from the latest window only.
* ``full_regen`` — a new persona from every window so far.
* ``inc_update`` — old persona + the new window's ratings (no predictions).
* ``hier_merge`` — a short-term persona from the new window, merged into the long-term one (two calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from personalens.errors import LLMOutputError
from personalens.llm.base import ChatModel, ChatRequest, Message, Usage, user
from personalens.profiling.summarize import (
    bound_words,
    clean_persona_text,
    drop_naming_sentences,
    find_leaked_titles,
    repeated_trigram_share,
    revised_section,
)
from personalens.refinement import prompts
from personalens.refinement.prompts import RatedItem

Strategy = Literal["refine", "slide_regen", "full_regen", "inc_update", "hier_merge"]
STRATEGIES: tuple[str, ...] = ("refine", "slide_regen", "full_regen", "inc_update", "hier_merge")
# the strategies whose answer rewrites the old persona (so it can copy it back; the regenerations never see it)
UPDATES_OLD_PERSONA: tuple[str, ...] = ("refine", "inc_update", "hier_merge")


class _SamplingKw(TypedDict):
    temperature: float
    sample: int
    top_p: float | None
    repetition_penalty: float | None


class _RatedKw(TypedDict):
    domain: str
    scale: tuple[float, float, float]
    min_words: int
    max_words: int


@dataclass(slots=True)
class WrittenPersona:
    """A persona text with what it cost and what was noticed: ``short`` when it stayed under the minimum length
    after the bounded re-ask, ``leaked`` the item texts it names (it should name none), ``unchanged`` when an update
    gave back the persona it was asked to update, word for word, after the bounded re-ask;
    ``repetitive_extensions`` counts continuations of a short answer that were refused for restating it;
    ``cut_to_revision`` counts the answers behind the kept text (one, or a short one and its continuation) of which
    only the part under a "revised profile" heading was kept; ``dropped_sentences`` the sentences removed from them
    because they named an item."""

    text: str
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
    short: bool = False
    leaked: tuple[str, ...] = ()
    unchanged: bool = False
    repetitive_extensions: int = 0  # continuations refused because they restated the profile
    cut_to_revision: int = 0  # answers cut to the profile under their "revised profile" heading
    dropped_sentences: int = 0  # sentences dropped because they named an item


@dataclass(frozen=True, slots=True)
class ReaskSampling:
    """How the re-ask after a copied-back persona samples. A greedy re-ask of the 1.5B model mostly copies again
    (it revised 1 of 20 copies in the dynamic benchmark); replaying re-asks at T = 0.7 with top-p 0.95 and
    repetition penalty 1.1 revised 3 of 4. The seed is the request's ``sample``, so the re-ask is reproducible and
    cached like any other request. A caller already sampling hotter than ``temperature`` keeps its own setting."""

    temperature: float = 0.7
    top_p: float = 0.95
    repetition_penalty: float = 1.1

    def to_dict(self) -> dict[str, float]:
        return {"temperature": self.temperature, "top_p": self.top_p, "repetition_penalty": self.repetition_penalty}


class PersonaWriter:
    """Writes and updates personas with one model. ``temperature``/``sample`` select fresh samples (the verified
    mode asks for several candidates of one update). A small model asked to update a persona often copies it back
    unchanged; ``reask_unchanged`` then asks once more (within ``max_attempts``) for a revision, sampled as
    ``reask_sampling`` says (``None``: with the caller's own settings). Self-sampling for training turns the re-ask
    off, so the candidates are the model's own answers.

    An answer under ``min_words`` gets a follow-up within ``max_attempts``: with ``short_answers="extend"`` (the
    default) the model is asked for the missing paragraphs only and they are appended; ``"rewrite"`` asks for the
    whole profile again, so every answer is a single reply of the model (what self-sampling for training wants).
    ``repetition_penalty`` applies to every request that does not name its own (greedy answers of the 1.5B model
    loop: its greedy Refine answers repeat a median 53% of their own word trigrams).
    A continuation is asked for with a repetition penalty (``extend_repetition_penalty``), and one that mostly
    restates the profile (more than ``extend_max_repeated`` of its word trigrams already there) is refused: the short
    answer is kept, flagged ``short``, rather than padded with a copy of itself. A further continuation, when
    ``max_attempts`` allows one, is sampled per ``reask_sampling``.
    With ``revised_only`` (the default) an answer that works through the old profile and the errors before giving the
    rewritten profile under a heading keeps only the rewritten profile
    (:func:`~personalens.profiling.summarize.revised_section`); what came before restates the old profile or quotes
    items with their ratings. With ``drop_naming`` (the default) a sentence that names an item the prompt showed is
    dropped before the answer is judged (a profile must not name items; one that does also hands the rating
    predictor those items' answers); without it such names are only reported (``leaked``)."""

    def __init__(
        self,
        model: ChatModel,
        *,
        domain: str,
        scale: tuple[float, float, float],
        min_words: int = 200,
        max_words: int = 320,
        max_attempts: int = 2,
        reask_unchanged: bool = True,
        reask_sampling: ReaskSampling | None = ReaskSampling(),
        short_answers: Literal["extend", "rewrite"] = "extend",
        extend_repetition_penalty: float = 1.3,
        extend_max_repeated: float = 0.4,
        repetition_penalty: float | None = None,
        revised_only: bool = True,
        drop_naming: bool = True,
    ) -> None:
        if not 0 < min_words <= max_words:
            raise ValueError("need 0 < min_words <= max_words")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if short_answers not in ("extend", "rewrite"):
            raise ValueError(f"short_answers must be 'extend' or 'rewrite', not {short_answers!r}")
        if extend_repetition_penalty < 1:
            raise ValueError("extend_repetition_penalty must be >= 1 (1: none)")
        if not 0 < extend_max_repeated <= 1:
            raise ValueError("extend_max_repeated must be in (0, 1]")
        if repetition_penalty is not None and repetition_penalty < 1:
            raise ValueError("repetition_penalty must be >= 1 or None")
        self.model = model
        self.domain = domain
        self.scale = scale
        self.min_words = min_words
        self.max_words = max_words
        self.max_attempts = max_attempts
        self.reask_unchanged = reask_unchanged
        self.reask_sampling = reask_sampling
        self.short_answers = short_answers
        self.extend_repetition_penalty = extend_repetition_penalty
        self.extend_max_repeated = extend_max_repeated
        self.repetition_penalty = repetition_penalty
        self.revised_only = revised_only
        self.drop_naming = drop_naming

    def config(self) -> dict[str, object]:
        """The settings that shape what this writer stores (part of a run's configuration digest)."""
        return {
            "model": self.model.model_id,
            "min_words": self.min_words,
            "max_words": self.max_words,
            "max_attempts": self.max_attempts,
            "reask_unchanged": self.reask_unchanged,
            "reask_sampling": None if self.reask_sampling is None else self.reask_sampling.to_dict(),
            "short_answers": self.short_answers,
            "extend": self.extend_config(),
            # only when set, so the settings recorded before it existed still match
            **({} if self.repetition_penalty is None else {"repetition_penalty": self.repetition_penalty}),
            **({"revised_only": True} if self.revised_only else {}),
            **({"drop_naming": True} if self.drop_naming else {}),
        }

    def extend_config(self) -> dict[str, float] | None:
        """The continuation settings, or None when short answers are rewritten (they never apply then)."""
        if self.short_answers != "extend":
            return None
        return {"repetition_penalty": self.extend_repetition_penalty, "max_repeated": self.extend_max_repeated}

    def write(
        self,
        messages: list[Message],
        items: Sequence[RatedItem],
        *,
        temperature: float = 0.0,
        sample: int = 0,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        replaces: str | None = None,
    ) -> WrittenPersona:
        """One persona answer, cleaned and bounded. An answer under ``min_words`` gets a follow-up (see the class),
        up to ``max_attempts`` calls in all, and is then kept and flagged ``short``. An answer that is ``replaces``
        (the persona being updated) word for word is re-asked for a revision, sampled per ``reask_sampling``, then
        kept and flagged ``unchanged``. The longest answer that is not a copy wins. An empty answer after every
        attempt raises :class:`LLMOutputError` with the raw answers."""
        usage = Usage()
        settings = (temperature, top_p, self.repetition_penalty if repetition_penalty is None else repetition_penalty)
        raws: list[str] = []
        convo = list(messages)
        best = ""
        extending = ""  # the short profile the pending request continues
        refused = 0  # continuations refused for restating the profile
        # (answers cut to their revised section, sentences dropped for naming an item) behind a text: of the
        # best answer, and of the short profile the pending request extends
        best_cleanup = extending_cleanup = (0, 0)
        titles = [x.text for x in items]
        old = bound_words(replaces, self.max_words)[0] if replaces is not None and self.reask_unchanged else None
        for _ in range(self.max_attempts):
            request = ChatRequest.of(
                convo,
                max_tokens=int(self.max_words * 1.6) + 48,
                temperature=settings[0],
                top_p=settings[1],
                repetition_penalty=settings[2],
                seed=sample,
                sample=sample,
            )
            result = self.model.chat(request)
            usage = usage + result.usage
            raws.append(result.text)
            # judged as it would be stored: cut to max_words (an answer that is the old persona plus a tail that
            # the cut removes is still the old persona)
            raw, was_cut, n = result.text, False, 0
            if self.revised_only and not extending:  # a continuation is only the added part
                raw, was_cut = revised_section(raw)
            if self.drop_naming:
                raw, n = drop_naming_sentences(raw, titles)
            answer = clean_persona_text(raw)
            text, _ = bound_words(f"{extending} {answer}" if extending else answer, self.max_words)
            cleanup = (extending_cleanup[0] + was_cut, extending_cleanup[1] + n) if extending else (int(was_cut), n)
            if extending:
                added = " ".join(text.split()[len(extending.split()) :])
                if repeated_trigram_share(added, after=extending) > self.extend_max_repeated:
                    refused += 1
                    text, cleanup = extending, extending_cleanup
            echoed = old is not None and text == old
            if _better(text, echoed, best, old):
                best, best_cleanup = text, cleanup
            words = len(text.split())
            if words >= self.min_words and not echoed:
                break
            extending = ""
            if echoed:
                follow_up = (
                    "That is the current profile, unchanged. Revise it so that it accounts for the new ratings. "
                    "Write the complete profile again, following every rule."
                )
                if self.reask_sampling is not None and self.reask_sampling.temperature > settings[0]:
                    r = self.reask_sampling
                    settings = (r.temperature, r.top_p, max(r.repetition_penalty, settings[2] or 1.0))
            elif self.short_answers == "extend" and words >= max(1, self.min_words * _EXTEND_FROM_SHARE):
                follow_up = prompts.extend_profile(words, min_words=self.min_words, max_words=self.max_words)
                extending, extending_cleanup = text, cleanup
                temperature, top_p, penalty = settings
                if refused and self.reask_sampling is not None and self.reask_sampling.temperature > temperature:
                    # the same request again would give the same refused continuation
                    temperature, top_p = self.reask_sampling.temperature, self.reask_sampling.top_p
                penalty = max(penalty or 1.0, self.extend_repetition_penalty)
                settings = (temperature, top_p, None if penalty == 1.0 else penalty)
            else:
                follow_up = (
                    f"That profile has {words} words; it needs {self.min_words} to {self.max_words}. "
                    "Write the complete profile again, following every rule."
                )
            convo = [*messages, *([] if not text else [Message("assistant", text)]), user(follow_up)]
        if len(best.split()) < 5:
            raise LLMOutputError(f"persona answer empty or too short after {len(raws)} attempts", raw=raws)
        text = best
        return WrittenPersona(
            text,
            usage,
            attempts=len(raws),
            short=len(text.split()) < self.min_words,
            leaked=find_leaked_titles(text, titles),
            unchanged=old is not None and best == old,
            repetitive_extensions=refused,
            cut_to_revision=best_cleanup[0],
            dropped_sentences=best_cleanup[1],
        )

    def initial(self, window: Sequence[RatedItem]) -> WrittenPersona:
        return self.write(prompts.initial_persona(window, **self._rated_kw()), window)

    def _rated_kw(self) -> _RatedKw:
        return {"domain": self.domain, "scale": self.scale, "min_words": self.min_words, "max_words": self.max_words}

    def update(
        self,
        strategy: Strategy,
        persona: str,
        windows: Sequence[Sequence[RatedItem]],
        *,
        temperature: float = 0.0,
        sample: int = 0,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
    ) -> WrittenPersona:
        """Apply ``strategy``. ``windows`` are every window observed so far, oldest first; the last is the current
        one and, for ``refine``, must carry the old persona's predictions."""
        if not windows:
            raise ValueError("an update needs at least the current window")
        current = list(windows[-1])
        replaces: str | None = None  # the persona an update rewrites (a regeneration never sees it)
        kw = self._rated_kw()
        sampling: _SamplingKw = {
            "temperature": temperature,
            "sample": sample,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
        }
        if strategy == "refine":
            if any(x.predicted is None for x in current):
                raise ValueError("refine needs the old persona's prediction for every item of the current window")
            messages = prompts.refine_persona(persona, current, **kw)
            replaces = persona
        elif strategy == "slide_regen":
            messages = prompts.regenerate_persona(current, **kw)
        elif strategy == "full_regen":
            everything = [x for w in windows for x in w]
            messages = prompts.regenerate_persona(everything, **kw)
            current = everything
        elif strategy == "inc_update":
            messages = prompts.extend_persona(persona, current, **kw)
            replaces = persona
        elif strategy == "hier_merge":
            short = self.write(prompts.regenerate_persona(current, **kw), current, **sampling)
            merged = self.write(
                prompts.merge_personas(
                    persona, short.text, domain=self.domain, min_words=self.min_words, max_words=self.max_words
                ),
                current,
                **sampling,
                replaces=persona,
            )
            merged.usage = merged.usage + short.usage
            merged.attempts += short.attempts
            merged.repetitive_extensions += short.repetitive_extensions
            merged.cut_to_revision += short.cut_to_revision
            merged.dropped_sentences += short.dropped_sentences
            return merged
        else:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        return self.write(messages, current, **sampling, replaces=replaces)


# An answer under this share of min_words (an empty or one-line answer) is no start to extend: it is asked for
# again in full. Short answers of the 1.5B model ran from 68 to 196 words at min_words = 200; 1 of 50 greedy and 2
# of 6 sampled full re-asks passed 200. Greedy continuations passed 200 in 11 of 11 but restated the profile (41-99%
# of the kept addition's trigrams repeated); with repetition penalty 1.3, 6 of 11 stayed under 40% (5-29%).
_EXTEND_FROM_SHARE = 0.25


def _better(text: str, echoed: bool, best: str, old: str | None) -> bool:
    """Whether an attempt's answer beats the best so far: any revision beats a copy of the old persona, then the
    longer answer wins."""
    best_echoed = old is not None and best == old
    if best and echoed != best_echoed:
        return best_echoed
    return len(text.split()) > len(best.split())


__all__ = ["STRATEGIES", "UPDATES_OLD_PERSONA", "PersonaWriter", "ReaskSampling", "Strategy", "WrittenPersona"]
