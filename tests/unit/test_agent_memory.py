"""Episodic memory on the persona store: embedding on add, top-K retrieval, visibility limits, semantic memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personalens.agent.memory import EpisodicMemory, memory_text, summarise_memory
from personalens.agent.tools import MemorySearchTool, ToolContext
from personalens.embed.testing import HashEmbedder
from personalens.llm.testing import ScriptedChatModel
from personalens.store import PersonaStore
from personalens.store.models import MemoryRecord

DAY = 86400.0


def _records() -> list[MemoryRecord]:
    return [
        MemoryRecord("m1", "space ship alien invasion war", "sci-fi", 10 * DAY),
        MemoryRecord("m2", "romantic wedding love story paris", "romance", 20 * DAY),
        MemoryRecord("m3", "alien robots space battle", "sci-fi", 30 * DAY),
        MemoryRecord("m4", "haunted house ghost night", "horror", 40 * DAY),
        MemoryRecord("m5", "love letters wedding summer", "romance", None),
    ]


@pytest.fixture()
def memory(tmp_path: Path) -> EpisodicMemory:
    store = PersonaStore(tmp_path / "s.sqlite")
    mem = EpisodicMemory(store, HashEmbedder(), "u1")
    assert mem.add(_records()) == 5
    return mem


def test_add_embeds_and_is_idempotent(memory: EpisodicMemory) -> None:
    stored = memory.all()
    assert {r.memory_id for r in stored} == {"m1", "m2", "m3", "m4", "m5"}
    assert all(r.embedder_id == "hash-64" or r.embedder_id for r in stored)
    expected = HashEmbedder().embed([memory_text(_records()[0])])[0]
    m1 = next(r for r in stored if r.memory_id == "m1")
    assert m1.embedding is not None and np.allclose(m1.embedding, expected)
    assert memory.add(_records()) == 0
    assert len(memory) == 5


def test_search_ranks_by_similarity(memory: EpisodicMemory) -> None:
    hits = memory.search("alien space battle", k=2)
    assert [h.record.memory_id for h in hits] == ["m3", "m1"]
    assert hits[0].score >= hits[1].score
    assert len(memory.search("anything", k=10)) == 5
    assert memory.search("x", k=0) == []


def test_search_respects_before_and_exclude(memory: EpisodicMemory) -> None:
    hits = memory.search("alien space battle", k=4, before=30 * DAY)
    ids = [h.record.memory_id for h in hits]
    assert "m3" not in ids and "m4" not in ids and "m5" not in ids  # at/after the moment, or undated
    assert ids[0] == "m1"
    hits = memory.search("alien space battle", k=4, exclude={"m3"})
    assert "m3" not in [h.record.memory_id for h in hits]


def test_records_from_another_embedder_are_re_embedded_for_search(tmp_path: Path) -> None:
    store = PersonaStore(tmp_path / "s.sqlite")
    EpisodicMemory(store, HashEmbedder(dim=32), "u").add(_records())
    other = EpisodicMemory(store, HashEmbedder(dim=64), "u")
    hits = other.search("alien space battle", k=1)
    assert hits[0].record.memory_id == "m3"
    assert store.memories("u")[0].embedding.shape == (32,)  # stored vectors untouched


def test_new_records_are_seen_by_a_later_search(memory: EpisodicMemory) -> None:
    assert memory.search("cooking pasta kitchen", k=1)[0].record.memory_id != "m6"
    memory.add([MemoryRecord("m6", "cooking pasta kitchen recipe", "food", 50 * DAY)])
    assert memory.search("cooking pasta kitchen", k=1)[0].record.memory_id == "m6"


def test_latest_and_tool_output(memory: EpisodicMemory) -> None:
    assert [r.memory_id for r in memory.latest(2)] == ["m3", "m4"]
    assert [r.memory_id for r in memory.latest(2, before=30 * DAY)] == ["m1", "m2"]
    obs = MemorySearchTool(memory, k=2).run("alien robots space battle", ToolContext())
    lines = obs.text.splitlines()
    assert len(lines) == 2 and lines[0] == "- [1970-01-31] alien robots space battle => the user's answer: sci-fi"
    assert obs.data[0].record.memory_id == "m3"
    assert MemorySearchTool(memory, k=2).run("alien", ToolContext(before=1.0)).text == "No matching memories."


def test_memories_are_deleted_with_the_user(memory: EpisodicMemory) -> None:
    memory.store.delete_user("u1")
    assert len(memory) == 0 and memory.search("alien", k=3) == []


def test_semantic_memory_summarises_recent_events() -> None:
    model = ScriptedChatModel(["Likes science fiction; avoids horror."])
    records = [MemoryRecord(f"m{i}", f"query {i} " + "word " * 100, "ans", float(i)) for i in range(50)]
    semantic = summarise_memory(model, records, task="LaMP-2M", max_words=80, max_events=10, event_chars=50)
    assert semantic.text == "Likes science fiction; avoids horror." and semantic.n_events == 10
    prompt = model.calls[0].messages[-1].content
    assert "query 49" in prompt and "query 39" not in prompt and "query 40" in prompt
    assert "at most 80 words" in prompt and "LaMP-2M" in prompt
    assert max(len(line) for line in prompt.splitlines() if line.startswith("1.")) < 80
    empty = summarise_memory(ScriptedChatModel([]), [])
    assert empty.n_events == 0 and empty.usage.calls == 0
