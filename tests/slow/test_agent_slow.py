"""PersonaAgent with the real embedded model: the text action protocol, memory search, a probability-read answer
and one test-time alignment step, end to end on a tiny tagging history."""

from __future__ import annotations

import pytest

from personalens.agent.agent import AgentConfig, PersonaAgent
from personalens.agent.alignment import AlignmentConfig, AlignmentExample
from personalens.agent.loop import AnswerSpace, LoopConfig
from personalens.embed.minilm import MiniLMEmbedder
from personalens.store import PersonaStore
from personalens.store.models import MemoryRecord

pytestmark = pytest.mark.slow

HISTORY = [
    ("A crew of astronauts travels through a wormhole to find a new planet.", "sci-fi"),
    ("Robots rise against humanity in a future ruled by machines.", "sci-fi"),
    ("Two strangers fall in love during a summer in Paris.", "romance"),
    ("An alien ship lands and a linguist learns to talk to its crew.", "sci-fi"),
    ("A stand-up comic's family chaos at a wedding weekend.", "comedy"),
]
TAGS = AnswerSpace.of_labels(["sci-fi", "romance", "comedy"])


def test_agent_acts_searches_memory_answers_and_aligns(local_llm, tmp_path):
    store = PersonaStore(tmp_path / "agent.sqlite")
    config = AgentConfig(
        loop=LoopConfig(max_steps=3, step_max_tokens=96),
        alignment=AlignmentConfig(
            batch_size=2, iterations=1, max_words=120, feedback_max_tokens=64, update_max_tokens=200
        ),
        semantic_max_words=60,
    )
    agent = PersonaAgent(local_llm, MiniLMEmbedder(), store, "u1", config=config, task="movie tagging")
    agent.memory.add([MemoryRecord(f"m{i}", f"Tag this movie: {q}", a, 1000.0 + i) for i, (q, a) in enumerate(HISTORY)])
    question = "Which tag fits this movie: sci-fi, romance or comedy? description: Space marines fight aliens on Mars."
    answer = agent.answer(question, space=TAGS, search_query="Space marines fight aliens on Mars.")
    assert "memory_search" in answer.tools_used  # by the model or forced: required either way
    assert answer.parsed and answer.answer in TAGS.labels and answer.scores is not None
    assert answer.answer == "sci-fi"
    assert answer.usage.calls >= 2
    init = agent.initialise()
    assert len(init.profile.split()) >= 10
    batch = [
        AlignmentExample(r.memory_id, f"Which tag fits this movie? {r.query}", r.response, r.timestamp, r.query)
        for r in agent.memory.latest(2)
    ]
    result = agent.align(batch, space=TAGS)
    step = result.steps[0]
    assert len(step.feedback) == 2 and all(f.strip() for f in step.feedback)
    assert step.error is None and len(result.persona.split()) <= 120
    current = agent.persona()
    assert current is not None and current.method == "agent-align" and current.meta["feedback"] == step.feedback
    store.close()


def test_labels_are_read_after_the_cue_without_its_trailing_space(local_llm):
    """The measured reason for the label reading: the model writes " action" with its space, so after "Answer:" the 15
    LaMP-2M tags get most of its probability; after "Answer: " much of it goes to digits and other words."""
    from personalens.agent.baselines import GENERIC_SYSTEM
    from personalens.agent.loop import answer_directly
    from personalens.evaluation.lamp_tasks import LAMP2M_TAGS
    from personalens.llm.base import system, user
    from personalens.llm.scoring import score_choices

    space = AnswerSpace.of_labels(LAMP2M_TAGS)
    question = (
        "Which tag fits this movie? Star Wars (1977): a farm boy joins a rebellion against a galactic empire, "
        "with starships, laser swords and a planet-destroying space station.\n" + space.instruction()
    )
    messages = [system(GENERIC_SYSTEM), user(question)]
    answer = answer_directly(local_llm, messages, space)
    assert answer.parsed and answer.answer in ("sci-fi", "action", "fantasy"), answer.scores
    without = score_choices(local_llm, messages, list(LAMP2M_TAGS), prefill="Answer:")
    with_space = score_choices(local_llm, messages, list(LAMP2M_TAGS), prefill="Answer: ", min_mass=0.0)
    assert without.mass > 0.5 and without.mass > with_space.mass, (without.mass, with_space.mass)
    # " science" + " fiction" and " Action" count too once the task's spellings are read
    spelled = score_choices(local_llm, messages, list(LAMP2M_TAGS), prefill="Answer:", aliases=space.label_aliases())
    assert spelled.mass > without.mass + 0.05 and spelled.as_dict()["sci-fi"] > without.as_dict()["sci-fi"]
