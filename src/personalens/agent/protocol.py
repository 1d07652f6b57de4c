"""The text action protocol: how a model without native tool calling asks for a tool or gives its answer.

One step of the model is either

    Thought: <a short reason>
    Action: <tool name>: <input>

or

    Final Answer: <answer>

Small local models drift from any format, so :func:`parse_step` accepts the usual variants: ``Action: tool[input]``,
``Action: tool(input)``, ``Action: tool`` followed by ``Action Input: input`` (LangChain's layout), a JSON object
``{"action": ..., "action_input": ...}`` or ``{"tool": ..., "input": ...}``, tool names in another case or with spaces
or hyphens, quoted inputs, Markdown bold around the keywords, and text the model invents after its action (an
``Observation:`` it made up is cut off). What it cannot read comes back as an :class:`InvalidStep` with the reason,
which the loop shows the model once more before giving up on the format.

The word that introduces a tool call is "Action" unless "action" is an allowed answer: then it is "Tool"
(:func:`tool_keyword`), so the transcript does not repeat an answer at every step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

STOP_SEQUENCES = ("\nObservation:", "\nObservation :", "Observation:")


@dataclass(frozen=True, slots=True)
class ActionStep:
    tool: str
    input: str
    thought: str = ""


@dataclass(frozen=True, slots=True)
class FinalStep:
    answer: str
    thought: str = ""
    answer_offset: int = 0  # where the answer starts in the raw text (for probability scoring of the answer)


@dataclass(frozen=True, slots=True)
class InvalidStep:
    reason: str
    text: str


Step = ActionStep | FinalStep | InvalidStep

_KEY = r"\**\s*{}\s*\**\s*:\s*\**"
_FINAL = re.compile(_KEY.format(r"final\s*answer"), re.IGNORECASE)
_THOUGHT = re.compile(_KEY.format(r"thought"), re.IGNORECASE)
_OBSERVATION = re.compile(r"^\s*\**\s*observation\s*\**\s*:", re.IGNORECASE | re.MULTILINE)


#: The words that can introduce a tool call, in order of preference. "Action" is ReAct's; another is used when
#: "action" is itself an allowed answer (LaMP-2M's tag), because the keyword the transcript repeats at every step pulls
#: a small model's answer towards the label it spells.
TOOL_KEYWORDS = ("Action", "Tool", "Call")


def tool_keyword(answers: Iterable[str] = ()) -> str:
    """The first of :data:`TOOL_KEYWORDS` that does not spell one of ``answers`` (case and spaces ignored)."""
    taken = {" ".join(str(a).lower().split()) for a in answers}
    for word in TOOL_KEYWORDS:
        if word.lower() not in taken:
            return word
    raise ValueError(f"every tool keyword {TOOL_KEYWORDS} is an allowed answer")


@lru_cache(maxsize=8)
def _keyword_patterns(keyword: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The tool-call and tool-input patterns for ``keyword``. ReAct's "Action" is read whatever the keyword is (a
    model may fall back on the layout it saw most); another keyword must stand as its own word."""
    if keyword.lower() == "action":
        words = r"action"
    else:
        words = rf"(?:(?<![\w-]){re.escape(keyword.lower())}|action)"
    return (
        re.compile(_KEY.format(words), re.IGNORECASE),
        re.compile(_KEY.format(words + r"\s*input"), re.IGNORECASE),
    )


def normalise_tool_name(name: str) -> str:
    """``Memory Search``, ``memory-search`` and ``"memory_search"`` all name ``memory_search``."""
    return re.sub(r"[\s\-]+", "_", name.strip().strip("`'\"*").strip()).lower()


def _strip_quotes(text: str) -> str:
    text = text.strip()
    for _ in range(2):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
            text = text[1:-1].strip()
    return text


def _thought(text: str, end: int) -> str:
    m = _THOUGHT.search(text, 0, end)
    return text[m.end() : end].strip() if m else text[:end].strip()


def _match_tool(name: str, tools: Sequence[str]) -> str | None:
    wanted = normalise_tool_name(name)
    by_norm = {normalise_tool_name(t): t for t in tools}
    if wanted in by_norm:
        return by_norm[wanted]
    # "search memory" for "memory_search", "wikipedia_search" for "wikipedia": one unambiguous containment
    hits = [t for n, t in by_norm.items() if n in wanted or wanted in n]
    return hits[0] if len(hits) == 1 else None


def _from_json(text: str, tools: Sequence[str]) -> Step | None:
    start = text.find("{")
    end = text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).lower().replace(" ", "_"): v for k, v in obj.items()}
    for key in ("final_answer", "answer"):
        if key in lowered and "action" not in lowered and "tool" not in lowered:
            return FinalStep(str(lowered[key]).strip())
    name = lowered.get("action", lowered.get("tool", lowered.get("name")))
    if not isinstance(name, str):
        return None
    if normalise_tool_name(name) in ("final_answer", "finish", "answer"):
        value = lowered.get("action_input", lowered.get("input", lowered.get("answer", "")))
        return FinalStep(str(value).strip())
    tool = _match_tool(name, tools)
    if tool is None:
        return InvalidStep(f"unknown tool {name!r}; the tools are: {', '.join(tools)}", text)
    value = lowered.get("action_input", lowered.get("input", lowered.get("query", lowered.get("arguments", ""))))
    if isinstance(value, dict):
        value = next(iter(value.values()), "") if len(value) == 1 else json.dumps(value)
    return ActionStep(tool, _strip_quotes(str(value)))


def parse_step(text: str, tools: Sequence[str], *, keyword: str = "Action") -> Step:
    """Read one model step. ``tools`` are the tool names the model may call; ``keyword`` is the word the protocol
    told it to introduce a tool call with (see :func:`tool_keyword`)."""
    action_re, input_re = _keyword_patterns(keyword)
    text = text.replace("\r\n", "\n")
    cut = _OBSERVATION.search(text)
    if cut is not None:  # the model went on to invent the tool's answer: everything from there on is not its step
        text = text[: cut.start()]
    action = action_re.search(text)
    while action is not None and input_re.match(text, action.start()):
        action = action_re.search(text, action.end())
    final = _FINAL.search(text)
    if final is not None and (action is None or final.start() < action.start()):
        answer = text[final.end() :].strip()
        if not answer:
            return InvalidStep("the final answer is empty", text)
        offset = final.end() + (len(text[final.end() :]) - len(text[final.end() :].lstrip()))
        return FinalStep(answer, _thought(text, final.start()), offset)
    if action is None:
        parsed = _from_json(text, tools)
        if parsed is not None:
            return parsed
        return InvalidStep(f"no '{keyword}:' line and no 'Final Answer:' line", text)
    rest = text[action.end() :]
    line, _, after = rest.partition("\n")
    line = line.strip()
    thought = _thought(text, action.start())
    if line.startswith("{"):
        parsed = _from_json(line + "\n" + after, tools)
        if parsed is not None:
            return parsed
    name, arg = line, ""
    bracket = re.match(r"^\s*([^\[\(:]+?)\s*[\[\(](.*)[\]\)]\s*$", line)
    if bracket:
        name, arg = bracket.group(1), bracket.group(2)
    elif ":" in line:
        name, arg = line.split(":", 1)
    elif " - " in line:
        name, arg = line.split(" - ", 1)
    tool = _match_tool(name, tools)
    if tool is not None and not arg.strip() and normalise_tool_name(name) != normalise_tool_name(tool):
        tool = None  # a sentence that mentions a tool, handled below
    if tool is None:
        # "Action: I will use wikipedia to read about Dune" — the tool named inside a sentence; its input is the rest
        words = [t for t in tools if normalise_tool_name(t) in normalise_tool_name(line)]
        if len(words) != 1:
            return InvalidStep(f"unknown tool {name.strip()!r}; the tools are: {', '.join(tools)}", text)
        tool = words[0]
        m = re.search(re.escape(tool).replace("_", "[ _-]"), line, re.IGNORECASE)
        arg = line[m.end() :].strip(" :-") if m else line
        arg = re.sub(r"^(?:to|for|about|on)\s+(?:(?:read|look|search|find)\s+(?:up\s+)?(?:about|for)?\s*)?", "", arg)
    if not arg.strip():
        m = input_re.search(after)
        if m is not None:
            arg = after[m.end() :].strip().split("\n", 1)[0]
    arg = _strip_quotes(arg)
    if not arg:
        return InvalidStep(f"the action {tool!r} has no input", text)
    return ActionStep(tool, arg, thought)


def format_step(step: ActionStep | FinalStep, *, keyword: str = "Action") -> str:
    """How a step is written in the protocol (the transcript the model sees, demonstrations)."""
    if isinstance(step, ActionStep):
        head = f"Thought: {step.thought}\n" if step.thought else ""
        return f"{head}{keyword}: {step.tool}: {step.input}"
    head = f"Thought: {step.thought}\n" if step.thought else ""
    return f"{head}Final Answer: {step.answer}"
