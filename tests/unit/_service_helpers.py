"""Shared set-up for the service tests: two tenants with keys, the scripted LLM and the hashed embedder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from personalens.embed.testing import HashEmbedder
from personalens.llm.testing import ScriptedChatModel
from personalens.service import ServiceConfig, add_key, create_app

THEMES = {
    "space": ["space opera", "alien planet", "starship crew", "galaxy war", "orbit station"],
    "crime": ["heist crew", "detective noir", "mafia family", "bank robbery", "police chase"],
    "cook": ["baking show", "chef kitchen", "street food", "pastry class", "wine tasting"],
}


def responder(request: Any) -> str:
    first = request.messages[0]
    if first.role == "system" and "personal assistant of one specific user" in first.content:
        if "Action:" in first.content:  # the agent with tools: search memory once, then answer
            if any(m.role == "user" and m.content.startswith("Observation:") for m in request.messages):
                return "Final Answer: As your agent, I suggest a space opera."
            return "Thought: what did they like?\nAction: memory_search: space opera"
        return f"As your agent: {request.messages[-1].content[:40]}"
    prompt = request.messages[-1].content
    liked = [line for line in prompt.splitlines() if line.startswith("- ") and "genres:" in line]
    genre = liked[0].split("genres:")[1].strip() if liked else "varied"
    return f"Likes {genre} stories with tension and a clear plot. " * 2


def behaviours(prefix: str = "e") -> list[dict[str, Any]]:
    out = []
    t = 1_700_000_000
    for theme, titles in THEMES.items():
        for i, title in enumerate(titles):
            out.append(
                {
                    "event_id": f"{prefix}-{theme}-{i}",
                    "item_id": f"{theme}{i}",
                    "title": title.title(),
                    "fields": {"genres": theme},
                    "rating": 5.0 if i % 4 else 2.0,
                    "timestamp": t,
                }
            )
            t += 60
    return out


def make_keys(data_dir: Path) -> dict[str, str]:
    keys = data_dir / "keys.json"
    return {"acme": add_key(keys, "acme"), "beta": add_key(keys, "beta")}


def make_app(data_dir: Path, **config: Any) -> Any:
    model = ScriptedChatModel(responder)
    return create_app(ServiceConfig(data_dir, **config), model=model, embedder=HashEmbedder(32))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_job(client: Any, job_id: str, key: str, deadline: float = 120.0) -> dict[str, Any]:
    """Poll until the job leaves queued/running (a generous safety deadline, not a timing assertion)."""
    stop = time.monotonic() + deadline
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if job["status"] not in ("queued", "running"):
            return job
        if time.monotonic() > stop:
            raise AssertionError(f"job {job_id} did not finish: {job}")
        time.sleep(0.05)


def build_user(client: Any, key: str, user: str, clusters: int = 3) -> dict[str, Any]:
    r = client.post(f"/v1/users/{user}/behaviours", json={"behaviours": behaviours(user)}, headers=auth(key))
    assert r.status_code == 200, r.text
    r = client.post(
        "/v1/jobs",
        json={"kind": "build", "users": [user], "options": {"clusters": clusters, "max_words": 40}},
        headers=auth(key),
    )
    assert r.status_code == 202, r.text
    return wait_for_job(client, r.json()["id"], key)
