"""A service data directory for the explorer tests, made with the deterministic doubles: tenant ``acme`` has
``alice`` (a three-cluster PersonaX build, then a manual edit: two versions) and ``bob`` (a DeePer refinement: an
initial persona and two rounds, each with its errors before and after); tenant ``beta`` has nothing. Also a small
reports directory with a Markdown report, a PNG and an SVG."""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path
from typing import Any

from _service_helpers import auth, behaviours, build_user, make_keys, responder, wait_for_job
from fastapi.testclient import TestClient

from personalens.embed.testing import HashEmbedder
from personalens.llm.testing import ScriptedChatModel
from personalens.service import ServiceConfig, create_app
from personalens.store import Persona, PersonaStore

EDIT_OLD = "stories"
EDIT_NEW = "sagas"
EDIT_SUFFIX = " Recently drawn to slow, moody epics."


def explorer_model() -> ScriptedChatModel:
    """The service tests' responder, numbered per call (so refinement rounds write different texts), and rating
    probabilities that depend on the persona text (so the refinement errors move)."""
    counter = itertools.count(1)

    def answer(request: Any) -> str:
        return responder(request) + f"Note {next(counter)}: enjoys pacing and twists."

    def next_tokens(request: Any) -> dict[str, float]:
        text = " ".join(m.content for m in request.messages)
        shift = (len(text) % 7) / 20
        return {"5": 0.3 + shift, "4": 0.4 - shift / 2, "3": 0.2 - shift / 2, "2": 0.1}

    return ScriptedChatModel(answer, next_tokens=next_tokens)


def make_explorer_app(data_dir: Path, reports_dir: Path | None = None, **config: Any) -> Any:
    return create_app(
        ServiceConfig(data_dir, reports_dir=reports_dir, **config), model=explorer_model(), embedder=HashEmbedder(32)
    )


def manual_edit(data_dir: Path, tenant: str = "acme", user: str = "alice") -> int:
    """A hand-edited copy of the user's current personas saved as a new current version; returns its number."""
    with PersonaStore(data_dir / tenant / "personas.sqlite") as store:
        current = store.current(user)
        assert current is not None
        edited = [
            Persona(
                cluster=p.cluster,
                text=p.text.replace(EDIT_OLD, EDIT_NEW, 1) + (EDIT_SUFFIX if p.cluster == 0 else ""),
                centroid=p.centroid,
                selected_item_ids=p.selected_item_ids,
                cluster_size=p.cluster_size,
                budget=p.budget,
                embedding=p.embedding,
                meta=p.meta,
            )
            for p in current.personas
        ]
        saved = store.save(
            user,
            edited,
            creator="manual-edit",
            method=current.method,
            config=current.config,
            config_hash=current.config_hash,
            embedder_id=current.embedder_id,
            parent_version="current",
            note="hand edit: sharper wording",
        )
        return saved.version


def populate(data_dir: Path) -> dict[str, str]:
    """Builds the tenants' data through the service's own API (in-process) and returns the API keys."""
    keys = make_keys(data_dir)
    with TestClient(make_explorer_app(data_dir)) as client:
        assert build_user(client, keys["acme"], "alice")["status"] == "done"
        r = client.post("/v1/users/bob/behaviours", json={"behaviours": behaviours("bob")}, headers=auth(keys["acme"]))
        assert r.status_code == 200, r.text
        r = client.post(
            "/v1/jobs",
            json={"kind": "refine", "users": ["bob"], "options": {"window": 5, "min_words": 5, "max_words": 80}},
            headers=auth(keys["acme"]),
        )
        assert r.status_code == 202, r.text
        job = wait_for_job(client, r.json()["id"], keys["acme"])
        assert job["status"] == "done" and job["users"][0]["status"] == "refined", job
    assert manual_edit(data_dir) == 2
    return keys


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid one-colour PNG, written by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


REPORT_MD = """# Toy evaluation, 3 users

Command: `personalens eval run toy.toml` — *a made-up report* for the tests; <script>alert(1)</script> stays text.

## Table 2: sampler comparison

| Method | Ratio | MRR@10 |
|:---|---:|---:|
| Random | 0.1 | 31.56 |
| PersonaX | 0.1 | **33.10** |

- **Users:** 3
- **Metrics:** MRR@10

![fig3_ratio.png](fig3_ratio.png)

![outside](../secret.png)
"""


def make_reports(root: Path) -> Path:
    """``root/toy`` (a report with a PNG it shows and an SVG it does not), ``root/nested/deeper`` (a report.md), a
    hidden folder and a file outside the report folders that must never be served."""
    toy = root / "toy"
    toy.mkdir(parents=True)
    (toy / "results.md").write_text(REPORT_MD, encoding="utf-8")
    (toy / "fig3_ratio.png").write_bytes(_png(40, 20, (36, 87, 197)))
    (toy / "extra.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="#2ca02c"/>'
        "</svg>",
        encoding="utf-8",
    )
    (toy / "rows.jsonl").write_text('{"secret": true}\n', encoding="utf-8")
    nested = root / "nested" / "deeper"
    nested.mkdir(parents=True)
    (nested / "report.md").write_text("# Nested report\n\nText.\n", encoding="utf-8")
    hidden = root / ".hidden"
    hidden.mkdir()
    (hidden / "report.md").write_text("# Hidden\n", encoding="utf-8")
    (root / "secret.png").write_bytes(_png(2, 2, (255, 0, 0)))
    return root


def aligned_agent_user(data_dir: Path, tenant: str = "acme", user: str = "carol") -> int:
    """A PersonaAgent user: episodic memories, the initial persona from semantic memory and one test-time alignment
    step (scripted model), written by the real agent code into the tenant's store; returns the aligned version."""
    from personalens.agent.agent import AgentConfig, PersonaAgent
    from personalens.agent.alignment import AlignmentExample
    from personalens.agent.loop import AnswerSpace, LoopConfig
    from personalens.store.models import MemoryRecord

    def respond(request: Any) -> str:
        head = request.messages[0].content
        if head.startswith("You study"):
            return "- Tags most space films as sci-fi.\n- Rarely calls anything a romance, even love stories."
        if head.startswith("You review"):
            return "The user tags heist films as comedy when they are light; say so in the description."
        if head.startswith("You maintain"):
            return "- Tags most space films as sci-fi.\n- Light heist films count as comedy for this user."
        if any(m.role == "user" and m.content.startswith("Observation:") for m in request.messages):
            return "Final Answer: sci-fi"
        return "Thought: look it up\nAction: memory_search: heist"

    films = [("A crew robs a casino with jokes", "comedy"), ("Rebels fight an empire in space", "sci-fi")]
    with PersonaStore(data_dir / tenant / "personas.sqlite") as store:
        agent = PersonaAgent(
            ScriptedChatModel(respond),
            HashEmbedder(32),
            store,
            user,
            config=AgentConfig(loop=LoopConfig(answer_scoring="text")),
            task="movie tagging",
        )
        agent.memory.add(
            [MemoryRecord(f"m{i}", f"Tag: {q} (part {i})", a, 1000.0 + i) for i, (q, a) in enumerate(films * 3)]
        )
        agent.initialise()
        batch = [AlignmentExample(r.memory_id, r.query, r.response, r.timestamp) for r in agent.memory.latest(3)]
        agent.align(batch, space=AnswerSpace.of_labels(["comedy", "sci-fi"]))
        current = agent.persona()
        assert current is not None and current.method == "agent-align"
        return current.version
