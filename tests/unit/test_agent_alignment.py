"""Test-time alignment (Algorithm 1) with the scripted double, and the agent storing each step as a version."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalens.agent.agent import AgentConfig, PersonaAgent, render_persona
from personalens.agent.alignment import (
    RESTORED_HEADING,
    AlignmentConfig,
    AlignmentExample,
    align_persona,
    clean_persona,
    dropped_statements,
    truncate_words,
)
from personalens.agent.loop import AgentAnswer, AnswerSpace, LoopConfig
from personalens.embed.testing import HashEmbedder
from personalens.llm.base import ChatRequest, Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.store import PersonaStore
from personalens.store.models import MemoryRecord

BATCH = [
    AlignmentExample("a", "Q1", "comedy", 1.0),
    AlignmentExample("b", "Q2", "romance", 2.0),
    AlignmentExample("c", "Q3", "comedy", 3.0),
]
OLD = "- Enjoys light comedies with happy endings.\n- Dislikes graphic horror films intensely."


def _role(request: ChatRequest) -> str:
    head = request.messages[0].content
    if head.startswith("You review"):
        return "feedback"
    if head.startswith("You maintain"):
        return "update"
    return "other"


def test_one_iteration_asks_feedback_per_triple_then_rewrites() -> None:
    seen: list[tuple[str, str]] = []

    def simulate(ex: AlignmentExample, persona: str) -> AgentAnswer:
        seen.append((ex.memory_id, persona))
        return AgentAnswer("comedy", [], Usage(calls=1))

    answers = ["fb one", "fb two", "fb three", OLD + "\n- Also likes romantic comedies set in cities."]
    model = ScriptedChatModel(answers)
    result = align_persona(model, OLD, BATCH, simulate, config=AlignmentConfig(max_words=100))
    assert [r for r, _ in seen] == ["a", "b", "c"] and all(p == OLD for _, p in seen)
    assert [_role(c) for c in model.calls] == ["feedback"] * 3 + ["update"]
    fb_prompt = model.calls[1].messages[1].content
    assert "Q2" in fb_prompt and "romance" in fb_prompt and "comedy" in fb_prompt and OLD in fb_prompt
    update_prompt = model.calls[3].messages[1].content
    assert "1. fb one" in update_prompt and "3. fb three" in update_prompt
    step = result.steps[0]
    assert step.feedback == ["fb one", "fb two", "fb three"]
    assert [s["correct"] for s in step.simulated] == [True, False, True]
    assert result.persona.endswith("romantic comedies set in cities.") and not step.dropped
    assert result.usage.calls == 4 + 3  # 4 LLM calls here + the simulated answers' usage


def test_iterations_use_the_updated_persona() -> None:
    personas: list[str] = []

    def simulate(ex: AlignmentExample, persona: str) -> AgentAnswer:
        personas.append(persona)
        return AgentAnswer("x", [], Usage())

    v1 = "- Prefers short films from the seventies era."
    v2 = "- Prefers short films from the seventies era.\n- Likes documentaries about music history."
    model = ScriptedChatModel(["f"] * 3 + [v1] + ["f"] * 3 + [v2])
    result = align_persona(model, OLD, BATCH, simulate, config=AlignmentConfig(iterations=2, keep_dropped="record"))
    assert personas[:3] == [OLD] * 3 and personas[3:] == [v1] * 3
    assert result.persona == v2 and len(result.steps) == 2
    assert result.steps[0].dropped == [
        "Enjoys light comedies with happy endings.",
        "Dislikes graphic horror films intensely.",
    ]
    assert result.steps[0].restored == []


def test_dropped_preferences_are_restored_within_the_word_budget() -> None:
    model = ScriptedChatModel(["f"] * 3 + ["New description: - Loves jazz documentaries and concert films."])
    result = align_persona(model, OLD, BATCH, lambda e, p: AgentAnswer("x", [], Usage()))
    step = result.steps[0]
    assert len(step.dropped) == 2 and step.restored == step.dropped
    assert result.persona.startswith("- Loves jazz") and RESTORED_HEADING in result.persona
    assert "Dislikes graphic horror films intensely." in result.persona


def test_length_bound_shortens_then_truncates() -> None:
    long = " ".join(f"Sentence number {i} about the user." for i in range(60))
    still_long = " ".join(f"Short {i}." for i in range(90))
    model = ScriptedChatModel(["f"] * 3 + [long, still_long])
    config = AlignmentConfig(max_words=40, keep_dropped="record")
    result = align_persona(model, OLD, BATCH, lambda e, p: AgentAnswer("x", [], Usage()), config=config)
    step = result.steps[0]
    assert step.shortened and step.truncated
    assert len(result.persona.split()) <= 40
    assert "shorten" in model.calls[4].messages[1].content.lower()


def test_failed_rewrite_keeps_the_persona_and_says_so() -> None:
    model = ScriptedChatModel(["f"] * 3 + ["", "```\n```"])
    result = align_persona(model, OLD, BATCH, lambda e, p: AgentAnswer("x", [], Usage()))
    assert result.persona == OLD and result.errors and "unchanged" in result.errors[0]
    assert model.calls[-1].sample == 1  # the retry asked for a fresh sample


def test_helpers() -> None:
    assert clean_persona("```text\nUpdated profile: likes tea\n```") == "likes tea"
    assert clean_persona("<<<\nlikes tea\n>>>") == "likes tea"
    assert truncate_words("One two three. Four five six. Seven.", 6) == "One two three. Four five six."
    assert truncate_words("a b c d e f g", 3) == "a b c"
    embedder = HashEmbedder()
    assert dropped_statements(OLD, OLD, embedder=embedder) == []
    assert dropped_statements(OLD, "- Enjoys light comedies with happy endings.") == [
        "Dislikes graphic horror films intensely."
    ]
    with pytest.raises(ValueError):
        align_persona(ScriptedChatModel([]), OLD, [], lambda e, p: AgentAnswer("x", [], Usage()))
    with pytest.raises(ValueError):
        AlignmentConfig(iterations=0)


# ---------------------------------------------------------------- the agent with a store


def _agent_model() -> ScriptedChatModel:
    def respond(request: ChatRequest) -> str:
        head = request.messages[0].content
        if head.startswith("You study"):
            return "- Tags most films as comedy.\n- Rarely picks horror for anything at all."
        if head.startswith("You review"):
            return "The user prefers comedy tags."
        if head.startswith("You maintain"):
            return "- Tags most films as comedy.\n- Rarely picks horror for anything at all.\n- Likes satire a lot."
        last = request.messages[-1].content
        if "Observation:" in last:
            return "Final Answer: comedy"
        return "Thought: look\nAction: memory_search: film"

    return ScriptedChatModel(respond)


def _agent(tmp_path: Path, model: ScriptedChatModel, **config: object) -> PersonaAgent:
    store = PersonaStore(tmp_path / "a.sqlite")
    agent = PersonaAgent(
        model,
        HashEmbedder(),
        store,
        "u1",
        config=AgentConfig(loop=LoopConfig(answer_scoring="text"), **config),  # type: ignore[arg-type]
        task="LaMP-2M",
    )
    agent.memory.add(
        [MemoryRecord(f"m{i}", f"film about topic {i}", "comedy" if i % 2 else "horror", float(i)) for i in range(6)]
    )
    return agent


def test_agent_initialise_align_and_answer_store_versions(tmp_path: Path) -> None:
    model = _agent_model()
    agent = _agent(tmp_path, model)
    assert agent.persona() is None
    init = agent.initialise()
    assert init.method == "agent-init" and "comedy" in init.profile
    assert agent.initialise() == init  # not redone
    space = AnswerSpace.of_labels(["comedy", "horror"])
    batch = [AlignmentExample(r.memory_id, f"Tag: {r.query}", r.response, r.timestamp) for r in agent.memory.latest(3)]
    result = agent.align(batch, space=space)
    assert result.persona.endswith("Likes satire a lot.")
    current = agent.persona()
    assert current is not None and current.method == "agent-align" and current.version == init.version + 1
    assert current.meta["feedback"] == ["The user prefers comedy tags."] * 3
    versions = agent.store.versions("u1")
    assert [v.method for v in versions][-2:] == ["agent-init", "agent-align"]
    assert versions[-1].parent_version == init.version and "simulated answers right" in versions[-1].note
    # simulated answers never saw their own interaction, nor anything after it
    searches = [c for c in model.calls if c.messages[0].content.startswith(render_persona(init.profile)[:40])]
    assert searches
    answer = agent.answer("Tag: a new film", space=space)
    assert answer.answer == "comedy" and answer.tools_used == ["memory_search"]
    assert render_persona(current.profile) in [m.content for m in model.calls[-1].messages][0]


def test_simulation_hides_the_interaction_being_simulated(tmp_path: Path) -> None:
    agent = _agent(tmp_path, _agent_model())
    seen: list[tuple[float | None, frozenset[str]]] = []
    original = agent.answer

    def spy(question: str, **kwargs: object) -> AgentAnswer:
        seen.append((kwargs.get("before"), frozenset(kwargs.get("exclude", ()))))  # type: ignore[arg-type]
        return original(question, **kwargs)  # type: ignore[arg-type]

    agent.answer = spy  # type: ignore[method-assign]
    batch = [AlignmentExample("m5", "Tag: x", "comedy", 5.0)]
    agent.align(batch, space=AnswerSpace.of_labels(["comedy", "horror"]))
    assert seen == [(5.0, frozenset({"m5"}))]


def test_variants_keep_separate_persona_chains_and_do_not_replace_a_personax_set(tmp_path: Path) -> None:
    model = _agent_model()
    agent = _agent(tmp_path, model)
    agent.initialise()
    other = PersonaAgent(model, agent.embedder, agent.store, "u1", variant="no-memory")
    assert other.persona() is None
    assert agent.store.current("u1").method == "agent-init"  # no other persona: the agent's becomes current


def test_ablation_switches(tmp_path: Path) -> None:
    agent = _agent(tmp_path, _agent_model(), use_persona=False)
    assert agent.system_prompt() == "You are a helpful assistant."
    assert agent.with_config(use_actions=False).toolbox().names == []
    assert agent.with_config(use_memory=False).toolbox().names == []
    assert agent.toolbox().names == ["memory_search"]


def test_budget_caps_stop_alignment_and_say_so(tmp_path: Path) -> None:
    model = _agent_model()
    agent = _agent(tmp_path, model, alignment=AlignmentConfig(batch_size=3, iterations=2, max_calls=5))
    init = agent.initialise()
    calls_before = len(model.calls)
    batch = [AlignmentExample(r.memory_id, f"Tag: {r.query}", r.response, r.timestamp) for r in agent.memory.latest(3)]
    result = agent.align(batch, space=AnswerSpace.of_labels(["comedy", "horror"]))
    assert len(model.calls) - calls_before <= 5  # simulations, feedback and rewrites all counted
    assert result.steps[0].error is not None and result.steps[0].error.startswith("budget:")
    assert len(result.steps) == 1 and result.persona == init.profile
    assert agent.persona() == init  # nothing stored for the unfinished iteration
