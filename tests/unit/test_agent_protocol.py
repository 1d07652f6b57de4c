"""The text action protocol parser: the canonical form and the variants a small model writes."""

from __future__ import annotations

import pytest

from personalens.agent.protocol import (
    ActionStep,
    FinalStep,
    InvalidStep,
    format_step,
    normalise_tool_name,
    parse_step,
    tool_keyword,
)

TOOLS = ["memory_search", "wikipedia"]


def test_canonical_action_and_final() -> None:
    step = parse_step("Thought: I need their past tags.\nAction: memory_search: sci-fi space", TOOLS)
    assert step == ActionStep("memory_search", "sci-fi space", "I need their past tags.")
    final = parse_step("Thought: done\nFinal Answer: comedy", TOOLS)
    assert isinstance(final, FinalStep) and final.answer == "comedy" and final.thought == "done"
    assert "Thought: done\nFinal Answer: comedy"[: final.answer_offset].endswith("Final Answer: ")


@pytest.mark.parametrize(
    "text,tool,arg",
    [
        ("Action: memory_search[space films]", "memory_search", "space films"),
        ("Action: memory_search(space films)", "memory_search", "space films"),
        ("Action: Memory Search: space films", "memory_search", "space films"),
        ("Action: memory-search - space films", "memory_search", "space films"),
        ('Action: wikipedia: "Blade Runner"', "wikipedia", "Blade Runner"),
        ("**Action:** wikipedia: Alien (film)", "wikipedia", "Alien (film)"),
        ("Action: memory_search\nAction Input: space films", "memory_search", "space films"),
        ('{"action": "wikipedia", "action_input": "Dune"}', "wikipedia", "Dune"),
        ('{"tool": "memory_search", "input": {"query": "dune"}}', "memory_search", "dune"),
        ("action: WIKIPEDIA: Dune", "wikipedia", "Dune"),
        ("Action: search_memory: dune", None, None),  # not contained either way: refused below
    ],
)
def test_action_variants(text: str, tool: str | None, arg: str | None) -> None:
    step = parse_step(text, TOOLS)
    if tool is None:
        assert isinstance(step, InvalidStep)
        assert "unknown tool" in step.reason
    else:
        assert step == ActionStep(tool, arg, step.thought)  # type: ignore[arg-type]


def test_invented_observation_is_cut_off() -> None:
    text = "Action: wikipedia: Dune\nObservation: Dune is a novel.\nFinal Answer: sci-fi"
    assert parse_step(text, TOOLS) == ActionStep("wikipedia", "Dune", "")


def test_first_of_action_and_final_wins() -> None:
    step = parse_step("Final Answer: 4\nAction: wikipedia: x", TOOLS)
    assert isinstance(step, FinalStep) and step.answer.startswith("4")
    step = parse_step("Action: wikipedia: x\nFinal Answer: 4", TOOLS)
    assert isinstance(step, ActionStep) and step.input == "x"


@pytest.mark.parametrize(
    "text,reason",
    [
        ("I think the answer is comedy.", "no 'Action:'"),
        ("Final Answer:   ", "empty"),
        ("Action: memory_search:", "no input"),
        ("Action: calculator: 2+2", "unknown tool"),
        ('{"action": "calculator", "action_input": "2"}', "unknown tool"),
        ("", "no 'Action:'"),
    ],
)
def test_malformed_steps_are_invalid_with_a_reason(text: str, reason: str) -> None:
    step = parse_step(text, TOOLS)
    assert isinstance(step, InvalidStep)
    assert reason in step.reason


def test_json_final_answer_and_tool_in_a_sentence() -> None:
    assert parse_step('{"final_answer": "romance"}', TOOLS) == FinalStep("romance")
    step = parse_step("Action: I will use wikipedia to read about Dune", TOOLS)
    assert step == ActionStep("wikipedia", "Dune", "")


def test_normalise_and_format_round_trip() -> None:
    assert normalise_tool_name(" `Memory-Search` ") == "memory_search"
    step = ActionStep("wikipedia", "Dune", "need facts")
    assert parse_step(format_step(step), TOOLS) == step
    final = parse_step(format_step(FinalStep("comedy", "sure")), TOOLS)
    assert isinstance(final, FinalStep) and final.answer == "comedy"


def test_tool_keyword_avoids_a_word_that_is_an_allowed_answer() -> None:
    assert tool_keyword(["1", "2", "3"]) == "Action"
    assert tool_keyword([]) == "Action"
    assert tool_keyword(["comedy", "Action", "sci-fi"]) == "Tool"
    assert tool_keyword(["action", " TOOL "]) == "Call"
    with pytest.raises(ValueError, match="every tool keyword"):
        tool_keyword(["action", "tool", "call"])


def test_another_keyword_introduces_tool_calls_and_action_is_still_read() -> None:
    step = parse_step("Thought: past tags\nTool: memory_search: space films", TOOLS, keyword="Tool")
    assert step == ActionStep("memory_search", "space films", "past tags")
    assert parse_step("Action: wikipedia: Dune", TOOLS, keyword="Tool") == ActionStep("wikipedia", "Dune")
    assert parse_step("Tool: memory_search\nTool Input: x", TOOLS, keyword="Tool") == ActionStep("memory_search", "x")
    # the keyword must stand as its own word; "Final Answer: action" is an answer, not a call
    assert isinstance(parse_step("Thought: the wikipedia-tool: no", TOOLS, keyword="Tool"), InvalidStep)
    final = parse_step("Final Answer: action", TOOLS, keyword="Tool")
    assert isinstance(final, FinalStep) and final.answer == "action"
    # with the default keyword "Tool:" is not a call (as before)
    assert isinstance(parse_step("Tool: wikipedia: Dune", TOOLS), InvalidStep)
    reason = parse_step("I think so", TOOLS, keyword="Tool")
    assert isinstance(reason, InvalidStep) and "'Tool:'" in reason.reason
    assert (
        format_step(ActionStep("wikipedia", "Dune", "look"), keyword="Tool") == "Thought: look\nTool: wikipedia: Dune"
    )
