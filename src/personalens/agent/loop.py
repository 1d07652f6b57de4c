"""The action loop (PersonaAgent Eq. 4): at each step the model, conditioned on the persona and everything so far,
either calls a tool or answers. Works two ways:

* **text protocol** (:mod:`personalens.agent.protocol`) for models without native tool calling, like the embedded
  1.5B model: robust parsing, one reminder of the format after a malformed step, a step limit;
* **native tool calls** when the backend offers them (``supports_tools``): OpenAI ``tools`` in the request and
  ``tool_calls`` in the answer.

Personal memory search is required at least once per answer: if the model answers before searching, the loop runs
the search with the question itself, shows the result and asks again (the step is traced as *forced*).

For a closed answer space (labels, a rating scale) the answer is read from the model's probabilities over the
allowed answers at the point where it gives its final answer (:func:`personalens.llm.scoring.score_choices`), which
is far more reliable for a small model than parsing what it generates; with ``answer_scoring="text"`` the generated
answer is matched to the allowed ones instead.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from personalens.agent.protocol import (
    STOP_SEQUENCES,
    ActionStep,
    FinalStep,
    InvalidStep,
    format_step,
    parse_step,
    tool_keyword,
)
from personalens.agent.tools import MEMORY_TOOL, Observation, ToolBox, ToolContext
from personalens.errors import LLMOutputError
from personalens.llm.base import (
    ChatModel,
    ChatRequest,
    ChatResult,
    Message,
    Usage,
    assistant,
    supports_native_tools,
    system,
    tool_message,
    user,
)
from personalens.llm.scoring import ChoiceScores, rating_choices, score_choices


@dataclass(frozen=True, slots=True)
class AnswerSpace:
    """What an answer may be: one of ``labels``, a number on ``scale`` (low, high, step), or free text.
    ``synonyms`` are other spellings that name a label (``("science fiction", "sci-fi")``); labels and synonyms are
    read without regard to case, in generated text and in token probabilities alike."""

    kind: Literal["labels", "rating", "free"] = "free"
    labels: tuple[str, ...] = ()
    scale: tuple[float, float, float] | None = None
    synonyms: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of_labels(cls, labels: Sequence[str], synonyms: Mapping[str, str] | None = None) -> AnswerSpace:
        """``synonyms`` whose label is not among ``labels`` are left out (a question may allow only some)."""
        labels = tuple(dict.fromkeys(str(x) for x in labels))
        if len(labels) < 2:
            raise ValueError("a label answer space needs at least two labels")
        lowered = {x.lower() for x in labels}
        kept = tuple(
            (str(k), str(v)) for k, v in (synonyms or {}).items() if v in labels and str(k).lower() not in lowered
        )
        return cls("labels", labels, synonyms=kept)

    def label_aliases(self) -> dict[str, str]:
        """Every other way of writing a label that counts for it, for probability scoring: the labels and their
        synonyms in lower case, Capitalised and Title Case (never a spelling that is itself a label)."""
        out: dict[str, str] = {}
        for written, label in (*((x, x) for x in self.labels), *self.synonyms):
            for form in (written, written.lower(), written.capitalize(), written.title()):
                if form not in self.labels:
                    out.setdefault(form, label)
        return out

    def answer_words(self) -> tuple[str, ...]:
        """Every spelling that counts as an answer: the choices and the labels' synonyms."""
        return (*self.choices, *(written for written, _ in self.synonyms))

    @classmethod
    def of_rating(cls, low: float = 1, high: float = 5, step: float = 1) -> AnswerSpace:
        rating_choices(low, high, step)  # validates
        return cls("rating", (), (float(low), float(high), float(step)))

    @property
    def choices(self) -> tuple[str, ...]:
        if self.kind == "labels":
            return self.labels
        if self.kind == "rating" and self.scale is not None:
            return tuple(rating_choices(*self.scale)[0])
        return ()

    def instruction(self) -> str:
        if self.kind == "labels":
            return "The final answer must be exactly one of: " + ", ".join(self.labels) + "."
        if self.kind == "rating" and self.scale is not None:
            return "The final answer must be one number from: " + ", ".join(self.choices) + "."
        return ""

    def match(self, text: str) -> str | None:
        """The allowed answer a generated text names (exact, then contained, longest first); None if none."""
        if self.kind == "free":
            return text.strip() or None
        cleaned = text.strip().strip(".\"'`*").strip().lower()
        if self.kind == "rating":
            m = re.search(r"-?\d+(?:\.\d+)?", cleaned)
            if m is None:
                return None
            value = float(m.group())
            choices, values, _ = rating_choices(*self.scale)  # type: ignore[misc]
            best = min(range(len(values)), key=lambda i: abs(values[i] - value))
            return choices[best] if abs(values[best] - value) <= (self.scale[2] if self.scale else 1) else None
        names = [(x, x) for x in self.labels] + list(self.synonyms)
        for written, label in names:
            if cleaned == written.lower():
                return label
        for written, label in sorted(names, key=lambda n: len(n[0]), reverse=True):
            if re.search(r"(?<![\w-])" + re.escape(written.lower()) + r"(?![\w-])", cleaned):
                return label
        return None


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """``max_steps`` bounds model calls in the loop (tool steps + the answer); ``max_invalid`` is how many
    malformed steps in a row are answered with a format reminder before the loop asks for the answer directly."""

    max_steps: int = 4
    max_invalid: int = 1
    step_max_tokens: int = 128
    answer_max_tokens: int = 64
    temperature: float = 0.1
    seed: int = 0
    require_memory_search: bool = True
    tool_protocol: Literal["auto", "text", "native"] = "auto"
    answer_scoring: Literal["probability", "text"] = "probability"

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.max_invalid < 0:
            raise ValueError("max_invalid must be >= 0")


@dataclass(slots=True)
class TraceStep:
    """One traced step. ``kind``: action, final, invalid, forced (a memory search the loop ran itself), duplicate,
    limit (the loop asked for the answer), answer (how the answer was read)."""

    kind: str
    text: str = ""
    tool: str | None = None
    input: str | None = None
    observation: str | None = None
    ok: bool = True
    seconds: float = 0.0
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}
        return {k: v for k, v in d.items() if v is not None and v != ""}


@dataclass(slots=True)
class AgentAnswer:
    """The answer, how it was read (``scores`` over the allowed answers when scored), and the trace."""

    answer: str
    steps: list[TraceStep]
    usage: Usage
    scores: dict[str, float] | None = None
    expectation: float | None = None
    parsed: bool = True  # False when a closed-space answer could not be read (the raw text is in ``answer``)
    memory_hits: list[Any] = field(default_factory=list)

    @property
    def tools_used(self) -> list[str]:
        return [s.tool for s in self.steps if s.tool and s.kind in ("action", "forced")]

    @property
    def forced_memory_search(self) -> bool:
        return any(s.kind == "forced" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "parsed": self.parsed,
            "scores": self.scores,
            "expectation": self.expectation,
            "tools_used": self.tools_used,
            "forced_memory_search": self.forced_memory_search,
            "usage": self.usage.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
        }


FREE_TEXT = AnswerSpace()
DEFAULT_LOOP = LoopConfig()

TEXT_PROTOCOL = """You can use these tools:
{tools}

Work one step at a time. Each reply is EITHER a tool call in exactly this form:
Thought: <one short sentence on what you need>
{keyword}: <tool name>: <input>
OR, once you know enough, the answer in exactly this form:
Thought: <one short sentence>
Final Answer: <the answer only>
After a tool call, wait: its result comes back as "Observation: ...". Never write an Observation yourself."""

NATIVE_PROTOCOL = """You can call tools. When you know enough, reply with the answer only."""

QUESTION = """{question}
{instruction}"""

FORMAT_REMINDER = (
    "Observation: your reply did not follow the format ({reason}). Reply with either\n"
    "{keyword}: <tool name>: <input>\nor\nFinal Answer: <the answer only>"
)
FORCED_SEARCH = (
    "Observation: before answering you must search the user's memory. I searched it for the question:\n{result}\n"
    "Now continue: another {keyword}, or the Final Answer."
)
DUPLICATE = "Observation: you already ran {tool} with this input; the result is above. Use it, or try another input."
STEP_LIMIT = "Observation: no more tool calls are allowed. Answer the question now.\n{question}"
REPEATED = (
    "Observation: you repeated a search you already made, so the search is over. Answer the question now.\n{question}"
)
#: Bumped whenever the wording the model sees changes (prompts, tool output format), so evaluation rows made with
#: another wording are told apart.
PROTOCOL_VERSION = 2
#: How a label answer is read, versioned apart from the wording: 3 also credits a label's other cases and the task's
#: synonyms ("Action", "science fiction"), 2 read labels after the answer cue without its trailing space
#: ("Answer:"), 1 after "Answer: ". Rating answers are read as before (see ``_answer``).
LABEL_READING_VERSION = 3
OBSERVATION = "Observation: {text}"


def system_prompt(persona: str | None, tools: ToolBox, *, native: bool, keyword: str = "Action") -> str:
    """The system prompt: the persona (when there is one) followed by the tool protocol (when there are tools);
    ``keyword`` introduces a tool call in the text protocol."""
    parts = [persona.strip()] if persona and persona.strip() else ["You are a helpful assistant."]
    if len(tools):
        parts.append(NATIVE_PROTOCOL if native else TEXT_PROTOCOL.format(tools=tools.describe(), keyword=keyword))
    return "\n\n".join(parts)


class _Run:
    def __init__(self, model: ChatModel, config: LoopConfig, question: str = "", keyword: str = "Action") -> None:
        self.model = model
        self.keyword = keyword  # the word that introduces a tool call in the text protocol
        self.question = question  # the question and its answer instruction, restated when the answer is asked for
        self.config = config
        self.usage = Usage()
        self.steps: list[TraceStep] = []
        self.hits: list[Any] = []

    def chat(self, request: ChatRequest) -> ChatResult:
        result = self.model.chat(request)
        self.usage = self.usage + result.usage
        return result

    def run_tool(self, tools: ToolBox, name: str, query: str, context: ToolContext, kind: str) -> Observation:
        started = time.perf_counter()
        obs = tools.get(name).run(query, context)
        if name == MEMORY_TOOL and isinstance(obs.data, list):
            self.hits.extend(obs.data)
        self.steps.append(
            TraceStep(
                kind, tool=name, input=query, observation=obs.text, ok=obs.ok, seconds=time.perf_counter() - started
            )
        )
        return obs


def run_agent(
    model: ChatModel,
    question: str,
    *,
    persona: str | None,
    tools: ToolBox,
    space: AnswerSpace = FREE_TEXT,
    context: ToolContext | None = None,
    config: LoopConfig = DEFAULT_LOOP,
    search_query: str | None = None,
) -> AgentAnswer:
    """Answer ``question`` as the agent with ``persona`` as its system prompt and ``tools`` to act with.

    ``search_query`` is what a forced memory search looks for (default: the question). With no tools the model
    answers directly (the "w/o action" ablation); with tools the loop runs until the model answers or
    ``config.max_steps`` is used up.
    """
    native = len(tools) > 0 and (
        config.tool_protocol == "native" or (config.tool_protocol == "auto" and supports_native_tools(model))
    )
    context = context or ToolContext()
    instruction = space.instruction()
    keyword = tool_keyword(space.answer_words())
    run = _Run(model, config, QUESTION.format(question=question, instruction=instruction).strip(), keyword)
    sys_text = system_prompt(persona, tools, native=native, keyword=keyword)
    messages: list[Message] = [system(sys_text), user(QUESTION.format(question=question, instruction=instruction))]
    require_search = config.require_memory_search and MEMORY_TOOL in tools
    if not len(tools):
        return _answer(run, messages, "Final Answer: " if space.kind != "free" else "", space, from_text=None)
    if native:
        return _native_loop(run, messages, tools, space, context, require_search, search_query or question)
    return _text_loop(run, messages, tools, space, context, require_search, search_query or question)


def _text_loop(
    run: _Run,
    messages: list[Message],
    tools: ToolBox,
    space: AnswerSpace,
    context: ToolContext,
    require_search: bool,
    search_query: str,
) -> AgentAnswer:
    cfg = run.config
    searched = False
    invalid_in_row = 0
    done: set[tuple[str, str]] = set()
    for step_no in range(cfg.max_steps):
        if step_no == cfg.max_steps - 1:
            break  # the last call is the answer
        request = ChatRequest.of(
            messages,
            max_tokens=cfg.step_max_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            stop=STOP_SEQUENCES,
        )
        started = time.perf_counter()
        result = run.chat(request)
        raw = result.text.strip()
        step = parse_step(raw, tools.names, keyword=run.keyword)
        elapsed = time.perf_counter() - started
        tokens = result.usage.total_tokens
        if isinstance(step, InvalidStep):
            run.steps.append(
                TraceStep("invalid", raw, observation=step.reason, ok=False, seconds=elapsed, tokens=tokens)
            )
            invalid_in_row += 1
            if invalid_in_row > cfg.max_invalid:
                break
            messages += [assistant(raw), user(FORMAT_REMINDER.format(reason=step.reason, keyword=run.keyword))]
            continue
        invalid_in_row = 0
        if isinstance(step, FinalStep):
            if require_search and not searched:
                run.steps.append(TraceStep("final", raw, seconds=elapsed, tokens=tokens, ok=False))
                obs = run.run_tool(tools, MEMORY_TOOL, search_query, context, "forced")
                searched = True
                messages += [assistant(raw), user(FORCED_SEARCH.format(result=obs.text, keyword=run.keyword))]
                continue
            run.steps.append(TraceStep("final", raw, seconds=elapsed, tokens=tokens))
            return _answer(run, messages, raw[: step.answer_offset], space, from_text=step.answer)
        assert isinstance(step, ActionStep)
        key = (step.tool, " ".join(step.input.lower().split()))
        # the transcript keeps the step as the protocol writes it, without anything the model added after it
        clean = format_step(step, keyword=run.keyword)
        if key in done:
            # a small model that repeats a search has run out of ideas: asking again only repeats it (measured),
            # so the repeat ends the search and the question is put once more
            run.steps.append(
                TraceStep("duplicate", raw, tool=step.tool, input=step.input, seconds=elapsed, tokens=tokens)
            )
            messages += [assistant(clean), user(REPEATED.format(question=run.question))]
            return _answer(run, _merge_users(messages), "Final Answer: ", space, from_text=None)
        done.add(key)
        obs = run.run_tool(tools, step.tool, step.input, context, "action")
        run.steps[-1].text, run.steps[-1].tokens = raw, tokens
        run.steps[-1].seconds += elapsed
        searched = searched or step.tool == MEMORY_TOOL
        messages += [assistant(clean), user(OBSERVATION.format(text=obs.text))]
    return _at_limit(run, messages, tools, space, context, require_search and not searched, search_query)


def _at_limit(
    run: _Run,
    messages: list[Message],
    tools: ToolBox,
    space: AnswerSpace,
    context: ToolContext,
    search_first: bool,
    search_query: str,
) -> AgentAnswer:
    """The steps are used up: run the required memory search if the model never did, then ask for the answer with
    the question restated (either protocol)."""
    if search_first:
        obs = run.run_tool(tools, MEMORY_TOOL, search_query, context, "forced")
        messages.append(user(FORCED_SEARCH.format(result=obs.text, keyword=run.keyword).rsplit("\n", 1)[0]))
    run.steps.append(TraceStep("limit"))
    messages.append(user(STEP_LIMIT.format(question=run.question)))
    return _answer(run, _merge_users(messages), "Final Answer: ", space, from_text=None)


def _merge_users(messages: list[Message]) -> list[Message]:
    """Join consecutive user messages (chat templates expect user and assistant turns to alternate)."""
    out: list[Message] = []
    for m in messages:
        if out and m.role == "user" and out[-1].role == "user" and not out[-1].tool_call_id:
            out[-1] = user(out[-1].content + "\n" + m.content)
        else:
            out.append(m)
    return out


def _native_loop(
    run: _Run,
    messages: list[Message],
    tools: ToolBox,
    space: AnswerSpace,
    context: ToolContext,
    require_search: bool,
    search_query: str,
) -> AgentAnswer:
    cfg = run.config
    searched = False
    specs = tools.specs()
    for step_no in range(cfg.max_steps - 1):
        request = ChatRequest.of(
            messages, max_tokens=cfg.step_max_tokens, temperature=cfg.temperature, seed=cfg.seed, tools=specs
        )
        started = time.perf_counter()
        result = run.chat(request)
        elapsed = time.perf_counter() - started
        if not result.tool_calls:
            if require_search and not searched:
                run.steps.append(TraceStep("final", result.text.strip(), ok=False, seconds=elapsed))
                obs = run.run_tool(tools, MEMORY_TOOL, search_query, context, "forced")
                searched = True
                messages += [assistant(result.text), user(FORCED_SEARCH.format(result=obs.text, keyword=run.keyword))]
                continue
            run.steps.append(TraceStep("final", result.text.strip(), seconds=elapsed))
            return _answer(run, messages, "Final Answer: ", space, from_text=result.text.strip())
        messages.append(assistant(result.text, result.tool_calls))
        for call in result.tool_calls:
            query, problem = _call_query(call.arguments)
            if call.name not in tools or problem:
                reason = f"unknown tool {call.name!r}" if call.name not in tools else str(problem)
                run.steps.append(TraceStep("invalid", call.arguments, tool=call.name, observation=reason, ok=False))
                messages.append(tool_message(call.id, f"Error: {reason}"))
                continue
            obs = run.run_tool(tools, call.name, query, context, "action")
            searched = searched or call.name == MEMORY_TOOL
            messages.append(tool_message(call.id, obs.text))
        del step_no
    return _at_limit(run, messages, tools, space, context, require_search and not searched, search_query)


def _call_query(arguments: str) -> tuple[str, str | None]:
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return "", f"the arguments are not JSON: {arguments[:100]!r}"
    if isinstance(args, str):
        return args, None
    if not isinstance(args, dict):
        return "", "the arguments must be an object with a 'query'"
    value = args.get("query", next(iter(args.values()), None) if len(args) == 1 else None)
    if not isinstance(value, str) or not value.strip():
        return "", "the arguments need a non-empty 'query' string"
    return value.strip(), None


def _answer(
    run: _Run, messages: list[Message], prefill: str, space: AnswerSpace, *, from_text: str | None
) -> AgentAnswer:
    """Read the answer at the point the model gives it: by probabilities over the allowed answers, or from text."""
    cfg = run.config
    started = time.perf_counter()
    if space.kind != "free" and cfg.answer_scoring == "probability":
        values = None
        aliases = None
        if space.kind == "rating":
            choices, values, aliases = rating_choices(*space.scale)  # type: ignore[misc]
        else:
            choices = list(space.labels)
            aliases = space.label_aliases()
            # A BPE model writes the space before a word inside the word's token (" comedy"); after a cue that
            # already ends in a space it puts its probability on a second space, digits and words that are not
            # labels instead (12 LaMP-2M-like questions, embedded Qwen2.5-1.5B: mass on the 15 tags 0.34 after
            # "Answer: ", 0.59 after "Answer:"; 3 against 1 unreadable). Digits are tokenised apart from the space
            # before them, so ratings keep it.
            prefill = prefill.rstrip()
        try:
            scores: ChoiceScores = score_choices(
                run.model, messages, choices, prefill=prefill, values=values, aliases=aliases
            )
        except LLMOutputError as exc:
            run.steps.append(TraceStep("answer", observation=f"scoring failed: {exc}", ok=False))
        else:
            run.usage = run.usage + scores.usage
            run.steps.append(
                TraceStep(
                    "answer",
                    scores.best,
                    observation=f"scored, mass {scores.mass:.2f}",
                    seconds=time.perf_counter() - started,
                )
            )
            return AgentAnswer(scores.best, run.steps, run.usage, scores.as_dict(), scores.expectation, True, run.hits)
    text = from_text
    if text is None or space.kind != "free" and space.match(text) is None:
        result = run.chat(
            ChatRequest.of(
                messages,
                max_tokens=cfg.answer_max_tokens,
                temperature=cfg.temperature,
                seed=cfg.seed,
                prefill=prefill,
                stop=("\n",) if space.kind != "free" else STOP_SEQUENCES,
            )
        )
        text = result.text.strip()
        run.steps.append(TraceStep("answer", text, observation="generated", tokens=result.usage.total_tokens))
    matched = space.match(text) if space.kind != "free" else text
    if matched is None:
        return AgentAnswer(text, run.steps, run.usage, None, None, False, run.hits)
    return AgentAnswer(matched, run.steps, run.usage, None, None, True, run.hits)


def answer_directly(
    model: ChatModel,
    messages: Sequence[Message],
    space: AnswerSpace,
    *,
    config: LoopConfig = DEFAULT_LOOP,
    prefill: str = "Answer: ",
) -> AgentAnswer:
    """One answer without tools (the workflow baselines): scored over the allowed answers, or generated."""
    run = _Run(model, config)
    return _answer(run, list(messages), prefill if space.kind != "free" else "", space, from_text=None)
