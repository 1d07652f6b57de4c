"""The action loop with the scripted double: tool calls, the required memory search, malformed steps, limits,
native tool calls, and how the answer is read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from personalens.agent.loop import AnswerSpace, LoopConfig, run_agent
from personalens.agent.tools import FunctionTool, Observation, ToolBox, ToolContext, WikipediaTool
from personalens.llm.base import ChatRequest, ChatResult, ToolCall, Usage
from personalens.llm.testing import ScriptedChatModel

LABELS = AnswerSpace.of_labels(["comedy", "romance", "horror"])
TEXT = LoopConfig(answer_scoring="text")


class RecordingMemory:
    """A memory_search stand-in that records what it was asked and with which context."""

    name = "memory_search"
    description = "search the user's memory"

    def __init__(self) -> None:
        self.calls: list[tuple[str, ToolContext]] = []

    def run(self, query: str, context: ToolContext) -> Observation:
        self.calls.append((query, context))
        return Observation(f"1. a film like {query} -> comedy")


def _last_user(request: ChatRequest) -> str:
    return [m.content for m in request.messages if m.role == "user"][-1]


def test_action_then_final_answer_runs_the_tool_and_traces_every_step() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(["Thought: check history\nAction: memory_search: space comedy", "Final Answer: comedy"])
    answer = run_agent(model, "Tag this film", persona="PERSONA", tools=ToolBox((memory,)), space=LABELS, config=TEXT)
    assert answer.answer == "comedy" and answer.parsed
    assert memory.calls[0][0] == "space comedy"
    assert [s.kind for s in answer.steps] == ["action", "final"]
    assert answer.steps[0].observation.startswith("1. a film like space comedy")
    assert model.calls[0].messages[0].content.startswith("PERSONA")
    assert "memory_search: search the user's memory" in model.calls[0].messages[0].content
    assert _last_user(model.calls[1]).startswith("Observation: 1. a film like space comedy")
    assert answer.usage.calls == 2 and answer.tools_used == ["memory_search"]
    assert not answer.forced_memory_search


def test_answer_before_memory_search_forces_one_search_with_the_question() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(["Final Answer: horror", "Final Answer: comedy"])
    answer = run_agent(
        model,
        "Tag this film",
        persona=None,
        tools=ToolBox((memory,)),
        space=LABELS,
        config=TEXT,
        search_query="the description",
    )
    assert memory.calls[0][0] == "the description"
    assert answer.forced_memory_search and answer.answer == "comedy"
    assert [s.kind for s in answer.steps] == ["final", "forced", "final"]
    assert "must search the user's memory" in _last_user(model.calls[1])


def test_memory_search_not_required_when_configured_off() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(["Final Answer: horror"])
    answer = run_agent(
        model,
        "q",
        persona=None,
        tools=ToolBox((memory,)),
        space=LABELS,
        config=LoopConfig(answer_scoring="text", require_memory_search=False),
    )
    assert answer.answer == "horror" and memory.calls == []


def test_malformed_step_gets_one_reminder_then_the_loop_goes_on() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(["I guess comedy?", "Action: memory_search: x", "Final Answer: comedy"])
    answer = run_agent(model, "q", persona=None, tools=ToolBox((memory,)), space=LABELS, config=TEXT)
    assert [s.kind for s in answer.steps] == ["invalid", "action", "final"]
    assert "did not follow the format" in _last_user(model.calls[1])
    assert answer.answer == "comedy"


def test_repeated_malformed_steps_end_the_loop_and_the_answer_is_asked_for_directly() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(["nonsense", "more nonsense", "comedy"])
    answer = run_agent(
        model, "q", persona=None, tools=ToolBox((memory,)), space=LABELS, config=LoopConfig(answer_scoring="text")
    )
    kinds = [s.kind for s in answer.steps]
    assert kinds == ["invalid", "invalid", "forced", "limit", "answer"]
    assert answer.answer == "comedy"
    last = model.calls[-1]
    assert last.prefill == "Final Answer: " and "no more tool calls" in _last_user(last)
    # user turns never follow each other in what is sent
    roles = [m.role for m in last.messages]
    assert all(not (a == b == "user") for a, b in zip(roles, roles[1:], strict=False))


def test_unreadable_answer_is_reported_not_dropped() -> None:
    model = ScriptedChatModel(["Action: memory_search: x", "Final Answer: a musical", "a musical"])
    answer = run_agent(model, "q", persona=None, tools=ToolBox((RecordingMemory(),)), space=LABELS, config=TEXT)
    assert not answer.parsed and answer.answer == "a musical"


def test_step_limit_restates_the_question() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(
        ["Action: memory_search: a", "Action: memory_search: b", "Action: memory_search: c", "horror"]
    )
    answer = run_agent(
        model,
        "Tag this film",
        persona=None,
        tools=ToolBox((memory,)),
        space=LABELS,
        config=LoopConfig(max_steps=4, answer_scoring="text"),
    )
    assert [c[0] for c in memory.calls] == ["a", "b", "c"]
    assert [s.kind for s in answer.steps] == ["action", "action", "action", "limit", "answer"]
    last = _last_user(model.calls[-1])
    assert "no more tool calls" in last and "Tag this film" in last and "exactly one of" in last
    assert answer.answer == "horror" and len(model.calls) == 4


def test_a_repeated_search_ends_the_search_and_asks_for_the_answer() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(["Action: memory_search: a", "Action: memory_search:  A ", "horror"])
    answer = run_agent(
        model,
        "Tag this film",
        persona=None,
        tools=ToolBox((memory,)),
        space=LABELS,
        config=LoopConfig(max_steps=6, answer_scoring="text"),
    )
    assert [c[0] for c in memory.calls] == ["a"]
    assert [s.kind for s in answer.steps] == ["action", "duplicate", "answer"]
    last = model.calls[-1]
    assert "repeated a search" in _last_user(last) and "Tag this film" in _last_user(last)
    assert last.prefill == "Final Answer: " and answer.answer == "horror"


def test_probability_answer_reads_the_allowed_answers_at_the_final_answer() -> None:
    dist = {"comedy": 0.2, "romance": 0.7, "horror": 0.1}
    model = ScriptedChatModel(
        ["Thought: ok\nAction: memory_search: x", "Thought: romance fits\nFinal Answer: comedy"],
        next_tokens=lambda request: dist,
    )
    answer = run_agent(model, "q", persona=None, tools=ToolBox((RecordingMemory(),)), space=LABELS)
    assert answer.answer == "romance"
    assert answer.scores is not None and answer.scores["romance"] == pytest.approx(0.7)
    scoring = model.calls[-1]
    # a label is read after the cue without its trailing space (the model writes " romance" as one token)
    assert scoring.top_logprobs > 0 and scoring.prefill == "Thought: romance fits\nFinal Answer:"


def test_rating_space_gives_an_expectation() -> None:
    dist = {"1": 0.1, "4": 0.3, "5": 0.6}
    model = ScriptedChatModel(["Action: memory_search: x", "Final Answer: 5"], next_tokens=lambda r: dist)
    answer = run_agent(
        model, "q", persona=None, tools=ToolBox((RecordingMemory(),)), space=AnswerSpace.of_rating(1, 5, 1)
    )
    assert answer.answer == "5"
    assert answer.expectation == pytest.approx(0.1 * 1 + 0.3 * 4 + 0.6 * 5)
    assert model.calls[-1].prefill == "Final Answer: "  # a digit is its own token after the space: the cue keeps it


def test_no_tools_answers_directly_with_the_persona() -> None:
    model = ScriptedChatModel(["romance"])
    answer = run_agent(model, "q", persona="P", tools=ToolBox(()), space=LABELS, config=TEXT)
    assert answer.answer == "romance" and answer.steps[-1].kind == "answer"
    assert model.calls[0].messages[0].content == "P" and model.calls[0].prefill == "Final Answer: "


def test_tool_failures_become_observations() -> None:
    class Broken:
        def summary(self, topic: str) -> Any:
            raise OSError("connection refused")

    def explode(_: str) -> str:
        raise RuntimeError("boom")

    tools = ToolBox((RecordingMemory(), WikipediaTool(Broken()), FunctionTool("calc", "calculator", explode)))
    model = ScriptedChatModel(
        ["Action: wikipedia: Dune", "Action: calc: 1+1", "Action: memory_search: dune", "Final Answer: comedy"]
    )
    answer = run_agent(
        model, "q", persona=None, tools=tools, space=LABELS, config=LoopConfig(max_steps=5, answer_scoring="text")
    )
    failed = [s for s in answer.steps if not s.ok]
    assert [s.tool for s in failed] == ["wikipedia", "calc"]
    assert "connection refused" in (failed[0].observation or "") and "boom" in (failed[1].observation or "")
    assert answer.answer == "comedy"


def _tool_result(calls: list[ToolCall]) -> ChatResult:
    return ChatResult("", Usage(10, 5, calls=1), "tool_calls", None, "scripted", tool_calls=tuple(calls))


def test_native_tool_calls() -> None:
    memory = RecordingMemory()
    model = ScriptedChatModel(
        [
            _tool_result([ToolCall("c1", "memory_search", '{"query": "space"}'), ToolCall("c2", "nope", "{}")]),
            _tool_result([ToolCall("c3", "memory_search", "not json")]),
            "romance",
        ]
    )
    answer = run_agent(
        model,
        "q",
        persona=None,
        tools=ToolBox((memory,)),
        space=LABELS,
        config=LoopConfig(tool_protocol="native", answer_scoring="text"),
    )
    assert [c[0] for c in memory.calls] == ["space"]
    first = model.calls[0]
    assert first.tools and first.tools[0]["function"]["name"] == "memory_search"
    body = model.calls[1].to_openai("m")
    assert body["messages"][2]["tool_calls"][0]["id"] == "c1"
    tool_msgs = [m for m in body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["c1", "c2"]
    assert tool_msgs[1]["content"].startswith("Error: unknown tool")
    assert [s.kind for s in answer.steps] == ["action", "invalid", "invalid", "final"]
    assert answer.answer == "romance"


def test_native_protocol_chosen_automatically_for_backends_that_support_it() -> None:
    class NativeModel(ScriptedChatModel):
        supports_tools = True

    model = NativeModel(["comedy"])
    run_agent(
        model,
        "q",
        persona=None,
        tools=ToolBox((RecordingMemory(),)),
        space=LABELS,
        config=LoopConfig(answer_scoring="text", require_memory_search=False),
    )
    assert model.calls[0].tools


def test_cache_keys_of_plain_requests_are_unchanged_by_tool_support() -> None:
    request = ChatRequest.of("hello")
    canonical: Mapping[str, Any] = request.canonical()
    assert "tools" not in canonical and canonical["messages"] == [["user", "hello"]]
    with_tools = ChatRequest.of("hello", tools=({"type": "function", "function": {"name": "x"}},))
    assert with_tools.cache_key("m") != request.cache_key("m")


def test_answer_space_matching() -> None:
    assert LABELS.match(" Comedy. ") == "comedy"
    assert LABELS.match("I would say romance here") == "romance"
    assert LABELS.match("a western") is None
    rating = AnswerSpace.of_rating(1, 5, 1)
    assert rating.match("4 stars") == "4" and rating.match("none") is None and rating.match("9") is None
    with pytest.raises(ValueError):
        AnswerSpace.of_labels(["only"])


def test_labels_are_read_in_any_case_and_by_the_tasks_synonyms() -> None:
    space = AnswerSpace.of_labels(
        ["sci-fi", "action", "dark comedy", "comedy"],
        {"science fiction": "sci-fi", "dystopian": "dystopia", "Action": "action"},  # the last two are left out
    )
    assert space.synonyms == (("science fiction", "sci-fi"),)
    assert space.match("Science Fiction.") == "sci-fi" and space.match("ACTION") == "action"
    assert space.match("a dark comedy, really") == "dark comedy" and space.match("dystopian") is None
    aliases = space.label_aliases()
    assert aliases["Action"] == "action" and aliases["Science Fiction"] == "sci-fi" and aliases["Dark Comedy"]
    assert "sci-fi" not in aliases and "action" not in aliases  # a label is never its own alias
    # the model writes " Action" and " science" + " fiction": both count, for the label they name
    table = {
        "Final Answer:": {" Action": 0.4, " science": 0.3, " comedy": 0.2, " weird": 0.1},
        "Final Answer: science": {" fiction": 0.9, " and": 0.1},
    }
    model = ScriptedChatModel(
        ["Action: memory_search: x", "Final Answer: sci-fi"], next_tokens=lambda r: table.get(r.prefill, {})
    )
    answer = run_agent(model, "q", persona=None, tools=ToolBox((RecordingMemory(),)), space=space)
    assert answer.scores is not None
    got = {k: v for k, v in answer.scores.items() if v}
    mass = 0.4 + 0.27 + 0.2
    assert got == pytest.approx({"action": 0.4 / mass, "sci-fi": 0.27 / mass, "comedy": 0.2 / mass})


def test_the_tool_keyword_is_not_an_allowed_answer() -> None:
    """The transcript repeats the keyword at every step, which pulls a small model towards the answer it spells
    ("action" was LaMP-2M's commonest answer under "Action:"), so a label space with "action" uses "Tool:"."""
    memory = RecordingMemory()
    tags = AnswerSpace.of_labels(["comedy", "action", "horror"])
    model = ScriptedChatModel(["Thought: look\nTool: memory_search: chases", "Final Answer: action"])
    answer = run_agent(model, "Tag this film", persona="P", tools=ToolBox((memory,)), space=tags, config=TEXT)
    assert answer.answer == "action" and memory.calls[0][0] == "chases"
    sent = "\n".join(m.content for m in model.calls[1].messages)
    assert "Tool: <tool name>: <input>" in sent and "Tool: memory_search: chases" in sent
    assert "Action" not in sent
    # other spaces keep ReAct's word, byte for byte (their cached requests and evaluation rows stay valid)
    model = ScriptedChatModel(["Action: memory_search: x", "Final Answer: comedy"])
    run_agent(model, "Tag this film", persona="P", tools=ToolBox((RecordingMemory(),)), space=LABELS, config=TEXT)
    system_text = model.calls[0].messages[0].content
    assert "Thought: <one short sentence on what you need>\nAction: <tool name>: <input>\n" in system_text
    assert model.calls[1].messages[2].content == "Action: memory_search: x"
