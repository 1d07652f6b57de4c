"""Replay cached persona requests of the DeePer runs under other decoding settings (benchmarks/deeper/README.md).

Reads the greedy requests that earlier runs left in the LLM response cache (``~/.cache/personalens/responses.sqlite``,
or ``--cache``), so it measures nothing on a machine that has not run ``eval dynamic`` or ``train`` before.

* ``extensions``: the follow-ups that ask a short persona for more paragraphs. For each, the share of the kept
  addition's word trigrams already in the persona (``repeated_trigram_share``), for the cached greedy answer and for
  a replay with ``--penalty``.
* ``penalties``: ``--n`` sampled single-turn greedy first-persona and Refine requests, replayed with repetition
  penalty 1.1, 1.3 and llama.cpp's DRY sampler; words and self-repeated trigram share per answer, then medians.

    .venv/bin/python benchmarks/deeper/replay_decoding.py extensions --penalty 1.3
    .venv/bin/python benchmarks/deeper/replay_decoding.py penalties --n 8

Replays go straight to the embedded llama.cpp model (no response cache), one request at a time; run nothing else
on the model meanwhile.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from personalens.factory import build_backend
from personalens.llm.base import ChatRequest, ChatResult, Message, parse_openai_chat_response
from personalens.profiling.summarize import bound_words, clean_persona_text, repeated_trigram_share
from personalens.settings import load_settings

EXTEND_MARK = "Do not repeat or rewrite it"
MAX_WORDS = 320
VARIANTS: dict[str, dict[str, Any]] = {
    "penalty 1.1": {"repeat_penalty": 1.1},
    "penalty 1.3": {"repeat_penalty": 1.3},
    "DRY 0.8": {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 4096},
}


def cached(cache: Path) -> list[tuple[dict[str, Any], str]]:
    db = sqlite3.connect(cache)
    out = []
    for request, response in db.execute("select request, response from responses order by created"):
        out.append((json.loads(request), json.loads(response).get("text", "")))
    return out


def greedy(request: dict[str, Any]) -> bool:
    return request.get("temperature") in (None, 0, 0.0) and not request.get("repetition_penalty")


def persona(text: str) -> str:
    return bound_words(clean_persona_text(text), MAX_WORDS)[0]


def kept_addition(existing: str, answer: str) -> str:
    return " ".join(persona(f"{existing} {clean_persona_text(answer)}").split()[len(existing.split()) :])


def replay(model: Any, request: dict[str, Any], extra: dict[str, Any]) -> ChatResult:
    """The cached request again at temperature 0 with llama.cpp sampler fields that ChatRequest does not carry,
    posted to the embedded model's loopback OpenAI-compatible server."""
    messages = tuple(Message(role, content) for role, content in request["messages"])
    body = ChatRequest(messages=messages, max_tokens=request["max_tokens"], temperature=0.0).to_openai(None)
    body.update(extra, cache_prompt=True)
    post = urllib.request.Request(
        f"{model.base_url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(post, timeout=600) as response:
        data = json.loads(response.read())
    return parse_openai_chat_response(data, seconds=time.perf_counter() - started)


def extensions(rows: list[tuple[dict[str, Any], str]], model: Any, penalty: float) -> None:
    found = [(r, t) for r, t in rows if greedy(r) and EXTEND_MARK in r["messages"][-1][1]]
    print(f"{len(found)} cached greedy extensions")
    shares = []
    for request, text in found:
        existing = request["messages"][-2][1]
        before = repeated_trigram_share(kept_addition(existing, text), after=existing)
        answer = replay(model, request, {"repeat_penalty": penalty}).text
        added = kept_addition(existing, answer)
        shares.append(repeated_trigram_share(added, after=existing))
        words = len(existing.split()) + len(added.split())
        print(
            f"{len(existing.split())} words: greedy repeated {before:.2f}; penalty {penalty}: {words} words, "
            f"repeated {shares[-1]:.2f}",
            flush=True,
        )
    listed = sorted(round(x, 2) for x in shares)
    print(f"penalty {penalty}: at most 0.4 in {sum(x <= 0.4 for x in shares)} of {len(shares)}; {listed}")


def penalties(rows: list[tuple[dict[str, Any], str]], model: Any, n: int) -> None:
    kinds: dict[str, list[tuple[dict[str, Any], str]]] = {"first persona": [], "refine": []}
    for request, text in rows:
        m = request["messages"]
        if not greedy(request) or len(m) != 1 or request.get("max_tokens", 0) < 200:
            continue
        if m[0][1].startswith("A person rated these"):
            kinds["first persona"].append((request, text))
        elif "predicted" in m[0][1] and "actual" in m[0][1]:
            kinds["refine"].append((request, text))
    rng = random.Random(0)
    for kind, found in kinds.items():
        sample = rng.sample(found, min(n, len(found)))
        results: dict[str, list[str]] = {"greedy (cached)": [persona(t) for _, t in sample]}
        for name, extra in VARIANTS.items():
            results[name] = [persona(replay(model, r, extra).text) for r, _ in sample]
        for name, texts in results.items():
            words = [len(t.split()) for t in texts]
            print(
                f"{kind:13s} {name:15s} median words {statistics.median(words):.0f}, >= 200: "
                f"{sum(w >= 200 for w in words)}/{len(texts)}, mean self-repeated trigrams "
                f"{statistics.fmean(repeated_trigram_share(t) for t in texts):.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["extensions", "penalties"])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/personalens/responses.sqlite")
    parser.add_argument("--penalty", type=float, default=1.3)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    rows = cached(args.cache)
    model = build_backend(load_settings())
    if args.what == "extensions":
        extensions(rows, model, args.penalty)
    else:
        penalties(rows, model, args.n)


if __name__ == "__main__":
    main()
