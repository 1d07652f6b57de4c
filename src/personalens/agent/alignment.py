"""Test-time user-preference alignment (PersonaAgent Algorithm 1, Eq. 5).

For each of ``E`` iterations: take the user's latest ``n`` interactions, let the agent answer each with the current
persona (a *simulation*: it only sees memories from before that interaction, and never the interaction itself), ask
the model for textual feedback on every (question, simulated answer, true answer) triple (the "loss gradient"),
join the feedback and rewrite the persona with it (the "gradient update").

Beyond the paper, two guards for small models:

* the persona stays within ``max_words`` (one request to shorten, then a cut at a sentence boundary);
* earlier preferences are not lost silently: statements of the old persona that have no close counterpart in the
  new one are found (embedding similarity, or word overlap without an embedder), recorded with the step, and by
  default written back under a short heading while the word budget allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from personalens.agent.loop import AgentAnswer
from personalens.embed.base import Embedder
from personalens.errors import BudgetExceeded, LLMOutputError
from personalens.llm.base import ChatModel, ChatRequest, Usage, system, user


@dataclass(frozen=True, slots=True)
class AlignmentExample:
    """One recent interaction: the question as the task asks it, the user's true answer, and where it sits."""

    memory_id: str
    question: str
    truth: str
    timestamp: float | None = None
    search_query: str | None = None


@dataclass(frozen=True, slots=True)
class AlignmentConfig:
    """``batch_size`` is the paper's n (3), ``iterations`` its E (1 by default; 1–3 helps, more plateaus)."""

    batch_size: int = 3
    iterations: int = 1
    max_words: int = 250
    feedback_max_tokens: int = 160
    update_max_tokens: int = 480
    keep_dropped: Literal["restore", "record"] = "restore"
    retention_threshold: float = 0.6
    temperature: float = 0.1
    seed: int = 0
    max_calls: int | None = None  # caps for one alignment run (simulations included); None = no cap
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("alignment batch_size (n) must be at least 1")
        if not 1 <= self.iterations <= 10:
            raise ValueError("alignment iterations (E) must be between 1 and 10")
        if self.max_words < 30:
            raise ValueError("alignment max_words must be at least 30")


@dataclass(slots=True)
class AlignmentStep:
    """One iteration: the simulated answers, the feedback per triple, the rewrite, and what the guards did."""

    iteration: int
    persona_before: str
    persona_after: str
    simulated: list[dict[str, Any]]
    feedback: list[str]
    dropped: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    shortened: bool = False
    truncated: bool = False
    error: str | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def changed(self) -> bool:
        return self.error is None and self.persona_after != self.persona_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "simulated": self.simulated,
            "feedback": self.feedback,
            "dropped": self.dropped,
            "restored": self.restored,
            "shortened": self.shortened,
            "truncated": self.truncated,
            "error": self.error,
            "words_before": word_count(self.persona_before),
            "words_after": word_count(self.persona_after),
            "usage": self.usage.to_dict(),
        }


@dataclass(slots=True)
class AlignmentResult:
    persona: str
    steps: list[AlignmentStep]
    usage: Usage

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.steps if s.error]


FEEDBACK_SYSTEM = (
    "You review the answers of a personal assistant that acts for one specific user, and you say how its "
    "description of the user should change so that it answers the way this user would."
)

FEEDBACK_PROMPT = """The assistant works from this description of the user:
<<<
{persona}
>>>

Question: {question}
The user's actual answer: {truth}
The assistant's answer: {simulated}

In at most {max_words} words, give feedback on the description, not on this single question:
- what about the user's tastes or habits does the mismatch (or the match) reveal?
- which preference should the description state, strengthen, correct or drop?
- which search words would find the most useful past interactions of this user?
Write only the feedback."""

UPDATE_SYSTEM = "You maintain the description of one user that a personal assistant uses as its instructions."

UPDATE_PROMPT = """Current description of the user:
<<<
{persona}
>>>

Feedback from recent interactions where the assistant tried to answer as the user:
{feedback}

Rewrite the description so the assistant answers more like this user. Keep every earlier preference that the \
feedback does not contradict; add what the feedback reveals; state preferences in general terms that carry over to \
new questions, not as answers to the questions above. Use short bullet points or short sentences, at most \
{max_words} words in total. Write only the new description."""

SHORTEN_PROMPT = """Shorten this description of a user to at most {max_words} words. Keep every distinct \
preference; drop repetition and filler. Write only the shortened description.

{persona}"""

_PREFIXES = re.compile(
    r"^\s*(?:#+\s*)?(?:\**)?(?:new|updated|rewritten|shortened)?\s*(?:user\s*)?(?:description|profile|persona|system "
    r"prompt)(?: of the user)?\s*(?:\**)?\s*:\s*",
    re.IGNORECASE,
)
RESTORED_HEADING = "Earlier preferences still held:"


def word_count(text: str) -> int:
    return len(text.split())


def clean_persona(text: str) -> str:
    """The persona text in a rewrite answer: without code fences, a leading label, or the ``<<<``/``>>>`` markers."""
    text = text.strip()
    fence = re.match(r"^```[\w-]*\n(.*?)\n?```\s*$", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    text = text.replace("<<<", "").replace(">>>", "").strip()
    text = _PREFIXES.sub("", text, count=1).strip()
    return text


def truncate_words(text: str, max_words: int) -> str:
    """At most ``max_words`` words, cut after the last full sentence or line that fits (a hard cut otherwise)."""
    if word_count(text) <= max_words:
        return text
    pieces = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    kept: list[str] = []
    used = 0
    for piece in pieces:
        n = word_count(piece)
        if used + n > max_words:
            break
        kept.append(piece)
        used += n
    if kept:
        return "\n".join(kept) if "\n" in text else " ".join(kept)
    return " ".join(text.split()[:max_words])


def statements(text: str) -> list[str]:
    """The persona's statements: bullet lines, else sentences; fragments under four words are skipped."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip().lstrip("-*•0123456789.) ").strip()
        if not line or line == RESTORED_HEADING:
            continue
        parts = [line] if len(line.split()) <= 40 else re.split(r"(?<=[.!?])\s+", line)
        out.extend(p.strip() for p in parts if len(p.split()) >= 4)
    return out


def _jaccard(a: str, b: str) -> float:
    wa, wb = set(re.findall(r"[a-z0-9']+", a.lower())), set(re.findall(r"[a-z0-9']+", b.lower()))
    return len(wa & wb) / max(1, len(wa | wb))


def dropped_statements(old: str, new: str, *, embedder: Embedder | None = None, threshold: float = 0.6) -> list[str]:
    """Statements of ``old`` with no counterpart in ``new`` (best cosine, or word Jaccard without an embedder,
    below ``threshold``; the Jaccard threshold is scaled down to 0.6 × ``threshold``)."""
    olds, news = statements(old), statements(new)
    if not olds:
        return []
    if not news:
        return olds
    if embedder is not None:
        vecs = np.asarray(embedder.embed(olds + news), dtype=np.float32)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = vecs[: len(olds)] @ vecs[len(olds) :].T
        best = sims.max(axis=1)
        return [s for s, b in zip(olds, best, strict=True) if float(b) < threshold]
    return [s for s in olds if max(_jaccard(s, n) for n in news) < threshold * 0.6]


def align_persona(
    model: ChatModel,
    persona: str,
    batch: Sequence[AlignmentExample],
    simulate: Callable[[AlignmentExample, str], AgentAnswer],
    *,
    config: AlignmentConfig | None = None,
    embedder: Embedder | None = None,
    on_step: Callable[[AlignmentStep], None] | None = None,
) -> AlignmentResult:
    """Algorithm 1. ``simulate(example, persona)`` answers one past question as the agent would with ``persona``
    (without seeing that interaction). ``on_step`` is called after each iteration (e.g. to store a version).

    A rewrite the model fails to produce (empty after one retry) leaves the persona unchanged and is recorded as the
    step's ``error``; it is never dropped silently.
    """
    if not batch:
        raise ValueError("test-time alignment needs at least one recent interaction")
    config = config or AlignmentConfig()
    total = Usage()
    steps: list[AlignmentStep] = []
    current = persona
    for iteration in range(1, config.iterations + 1):
        try:
            step = _iteration(model, current, batch, simulate, config, embedder, iteration)
        except BudgetExceeded as exc:  # a cap ends the run; the persona stays as the last finished iteration left it
            step = AlignmentStep(iteration, current, current, [], [], error=f"budget: {exc}")
        total = total + step.usage
        steps.append(step)
        if on_step is not None:
            on_step(step)
        current = step.persona_after
        if step.error and step.error.startswith("budget:"):
            break
    return AlignmentResult(current, steps, total)


def _iteration(
    model: ChatModel,
    current: str,
    batch: Sequence[AlignmentExample],
    simulate: Callable[[AlignmentExample, str], AgentAnswer],
    config: AlignmentConfig,
    embedder: Embedder | None,
    iteration: int,
) -> AlignmentStep:
    usage = Usage()
    simulated: list[dict[str, Any]] = []
    feedback: list[str] = []
    for ex in batch:
        answer = simulate(ex, current)
        usage = usage + answer.usage
        simulated.append(
            {
                "memory_id": ex.memory_id,
                "truth": ex.truth,
                "simulated": answer.answer,
                "correct": answer.answer.strip().lower() == ex.truth.strip().lower(),
                "tools": answer.tools_used,
            }
        )
        prompt = FEEDBACK_PROMPT.format(
            persona=current,
            question=ex.question,
            truth=ex.truth,
            simulated=answer.answer,
            max_words=max(30, config.feedback_max_tokens * 2 // 3),
        )
        result = model.chat(
            ChatRequest.of(
                [system(FEEDBACK_SYSTEM), user(prompt)],
                max_tokens=config.feedback_max_tokens,
                temperature=config.temperature,
                seed=config.seed,
            )
        )
        usage = usage + result.usage
        feedback.append(result.text.strip())
    step = AlignmentStep(iteration, current, current, simulated, feedback)
    joined = "\n".join(f"{i}. {' '.join(f.split())}" for i, f in enumerate(feedback, 1) if f.strip())
    if not joined:
        step.error = "the model gave no feedback for any interaction"
    else:
        new, used = _rewrite(model, current, joined, config)
        usage = usage + used
        if not new:
            step.error = "the model returned an empty rewrite twice; the persona is unchanged"
        else:
            if word_count(new) > config.max_words:
                step.shortened = True
                shorter, used = _ask(model, SHORTEN_PROMPT.format(max_words=config.max_words, persona=new), config)
                usage = usage + used
                if shorter and word_count(shorter) < word_count(new):
                    new = shorter
                if word_count(new) > config.max_words:
                    step.truncated = True
                    new = truncate_words(new, config.max_words)
            step.dropped = dropped_statements(current, new, embedder=embedder, threshold=config.retention_threshold)
            if step.dropped and config.keep_dropped == "restore":
                new, step.restored = _restore(new, step.dropped, config.max_words)
            step.persona_after = new
    step.usage = usage
    return step


def _ask(model: ChatModel, prompt: str, config: AlignmentConfig, *, sample: int = 0) -> tuple[str, Usage]:
    result = model.chat(
        ChatRequest.of(
            [system(UPDATE_SYSTEM), user(prompt)],
            max_tokens=config.update_max_tokens,
            temperature=config.temperature,
            seed=config.seed,
            sample=sample,
        )
    )
    return clean_persona(result.text), result.usage


def _rewrite(model: ChatModel, persona: str, feedback: str, config: AlignmentConfig) -> tuple[str, Usage]:
    prompt = UPDATE_PROMPT.format(persona=persona, feedback=feedback, max_words=config.max_words)
    text, usage = _ask(model, prompt, config)
    if word_count(text) < 5:  # empty or a fragment: one retry with a fresh sample
        text, more = _ask(model, prompt, config, sample=1)
        usage = usage + more
    return (text if word_count(text) >= 5 else ""), usage


def _restore(text: str, dropped: Sequence[str], max_words: int) -> tuple[str, list[str]]:
    """Write dropped statements back under a heading while the word budget allows."""
    restored: list[str] = []
    heading = 0 if RESTORED_HEADING in text else word_count(RESTORED_HEADING)
    budget = max_words - word_count(text) - heading
    for s in dropped:
        if word_count(s) + 1 <= budget:
            restored.append(s)
            budget -= word_count(s) + 1
    if not restored:
        return text, []
    body = text.rstrip()
    bullets = "\n".join(f"- {s}" for s in restored)
    if RESTORED_HEADING in body:  # the rewrite kept the section: add to it
        return body + "\n" + bullets, restored
    return body + "\n" + RESTORED_HEADING + "\n" + bullets, restored


def raise_on_errors(result: AlignmentResult) -> None:
    """For callers that prefer an exception: raise :class:`LLMOutputError` naming every failed iteration."""
    if result.errors:
        raise LLMOutputError("test-time alignment failed: " + "; ".join(result.errors), raw=[])
