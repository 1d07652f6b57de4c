"""Foundation benchmark: the embedded LLM's speed, what the shared-prefix prompt cache saves, the embedder's
throughput, and whether probability scoring separates liked from disliked items for real MovieLens users.

    .venv/bin/python benchmarks/bench_foundation.py [--data ../shared/data/movielens-latest-small] [--users 5]

Every figure is measured in this run, side by side; results are printed and written to bench-results/foundation.json.
Nothing here goes through the response cache, so every call really runs the model.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from personalens.data import load_movielens
from personalens.data.records import Dataset, Interaction, Item
from personalens.embed.minilm import MiniLMEmbedder
from personalens.evaluation.metrics import roc_auc
from personalens.llm.base import ChatRequest
from personalens.llm.embedded import LlamaCppModel
from personalens.llm.weights import QWEN25_CODER_1_5B, ensure_weights
from personalens.prediction import predict_ratings
from personalens.profiling import summarize_history

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-latest-small"
NO_PERSONA = "Nothing is known about this person's taste."


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pick_users(dataset: Dataset, n_users: int, n_each: int, min_history: int, seed: int):
    """Users whose ratings after some cutoff hold ≥ n_each liked (≥ 4) and ≥ n_each disliked (≤ 2) items, with at
    least ``min_history`` ratings before the cutoff. Held out: the n_each most recent of each kind after it."""
    chosen = []
    for history in dataset.histories(min_length=min_history + 2 * n_each):
        rows = list(history.interactions)
        liked_idx = [i for i, x in enumerate(rows) if x.rating is not None and x.rating >= 4]
        disliked_idx = [i for i, x in enumerate(rows) if x.rating is not None and x.rating <= 2]
        if len(liked_idx) < n_each or len(disliked_idx) < n_each:
            continue
        cutoff = min(liked_idx[-n_each], disliked_idx[-n_each])
        if cutoff < min_history:
            continue
        held = sorted(liked_idx[-n_each:] + disliked_idx[-n_each:])
        chosen.append((history.user_id, rows[:cutoff], [rows[i] for i in held]))
    random.Random(seed).shuffle(chosen)
    return chosen[:n_users]


def speed(model: LlamaCppModel) -> dict[str, float]:
    long_prompt = "Summarise the following list of films in one sentence.\n" + "\n".join(
        f"- Film number {i}: a story about a {w} in the city" for i, w in enumerate(["detective", "robot", "chef"] * 25)
    )
    pp = model.chat(ChatRequest.of(long_prompt, max_tokens=1, cache_prompt=False))
    tg = model.chat(
        ChatRequest.of("Write a 200-word story about a lighthouse keeper.", max_tokens=160, cache_prompt=False)
    )
    pp_t, tg_t = pp.timings or {}, tg.timings or {}
    return {
        "prompt_tokens": pp.usage.prompt_tokens,
        "prompt_tokens_per_s": round(pp_t.get("prompt_per_second", pp.usage.prompt_tokens / pp.usage.seconds), 1),
        "generated_tokens": tg.usage.completion_tokens,
        "generation_tokens_per_s": round(tg_t.get("predicted_per_second", 0.0), 1),
    }


def scoring_cost(model: LlamaCppModel, persona: str, items: list[Item], repeats: int) -> dict[str, float]:
    """Seconds per scored item with the shared persona prefix reused, and with the prompt cache off, interleaved."""
    with_cache, without = [], []
    for _ in range(repeats):
        for flag, bucket in ((True, with_cache), (False, without)):
            started = time.perf_counter()
            predict_ratings(model, persona, items, cache_prompt=flag)
            bucket.append((time.perf_counter() - started) / len(items))
    a, b = statistics.median(with_cache), statistics.median(without)
    return {
        "s_per_item_shared_prefix": round(a, 3),
        "s_per_item_no_prompt_cache": round(b, 3),
        "speedup": round(b / a, 2),
    }


def embedder_speed(dataset: Dataset, n: int) -> dict[str, float]:
    texts = [item.text(["genres"]) for item in list(dataset.items.values())[:n]]
    embedder = MiniLMEmbedder()
    started = time.perf_counter()
    dim = embedder.dim
    load = time.perf_counter() - started
    embedder.embed(texts[:64])  # warm-up
    started = time.perf_counter()
    embedder.embed(texts)
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "dim": dim,
        "load_s": round(load, 2),
        "texts_per_s": round(len(texts) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--held-out", type=int, default=10, help="liked and disliked items held out per user (each)")
    parser.add_argument("--max-history", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/foundation.json"))
    parser.add_argument(
        "--speed-only", action="store_true", help="only the speed figures (scoring cost on the first user's items)"
    )
    args = parser.parse_args()

    results: dict[str, object] = {"command": " ".join(sys.argv)}
    started = time.perf_counter()
    path = ensure_weights(QWEN25_CODER_1_5B)
    results["weights_verify_s"] = round(time.perf_counter() - started, 2)
    model = LlamaCppModel()
    model.load()
    results["model_load_s"] = round(model.load_seconds or 0.0, 2)
    log(f"model {path.name} loaded in {results['model_load_s']} s")
    results["speed"] = speed(model)
    log(f"speed: {results['speed']}")

    dataset = load_movielens(args.data)
    results["embedder"] = embedder_speed(dataset, 2000)
    log(f"embedder: {results['embedder']}")

    users = pick_users(dataset, args.users, args.held_out, min_history=20, seed=args.seed)
    if len(users) < args.users:
        raise SystemExit(f"only {len(users)} users qualify")
    if args.speed_only:
        users = users[:1]
    per_user, personas = [], {}
    for n, (user_id, history, held) in enumerate(users, 1):
        labelled = [
            Interaction(x.user_id, x.item_id, x.rating, x.rating > 3, x.timestamp)
            for x in history
            if x.rating is not None and x.rating != 3
        ]
        persona = summarize_history(model, labelled, dataset.items, max_items=args.max_history, item_fields=["genres"])
        personas[user_id] = persona.text
        log(
            f"[{n}/{len(users)}] user {user_id}: persona in {persona.usage.seconds:.1f} s "
            f"({persona.usage.completion_tokens} tokens)"
        )
        per_user.append((user_id, held, persona, len(history)))
    results["persona_seconds_median"] = round(statistics.median(p.usage.seconds for _, _, p, _ in per_user), 1)

    rows: list[dict[str, object]] = []
    if args.speed_only:
        per_user_for_auc = []
    else:
        per_user_for_auc = per_user
    all_labels, all_own, all_other, all_none = [], [], [], []
    for i, (user_id, held, persona, history_len) in enumerate(per_user_for_auc):
        other = per_user[(i + 1) % len(per_user)][2]
        items = [dataset.item(x.item_id) for x in held]
        labels = [x.rating >= 4 for x in held]
        own, _ = predict_ratings(model, persona.text, items, item_fields=["genres"])
        swapped, _ = predict_ratings(model, other.text, items, item_fields=["genres"])
        blank, _ = predict_ratings(model, NO_PERSONA, items, item_fields=["genres"])
        row = {
            "user": user_id,
            "history_before_cutoff": history_len,
            "held_out": len(held),
            "auc_own_persona": round(roc_auc(labels, [p.expected for p in own]), 3),
            "auc_other_users_persona": round(roc_auc(labels, [p.expected for p in swapped]), 3),
            "auc_no_persona": round(roc_auc(labels, [p.expected for p in blank]), 3),
            # what the persona adds over the model's prior about the item: E[r | persona] - E[r | no persona]
            "auc_persona_lift": round(
                roc_auc(labels, [p.expected - b.expected for p, b in zip(own, blank, strict=True)]), 3
            ),
            "mean_mass": round(float(np.mean([p.scores.mass for p in own])), 3),
        }
        rows.append(row)
        all_labels += labels
        all_own += [p.expected for p in own]
        all_other += [p.expected for p in swapped]
        all_none += [p.expected for p in blank]
        log(f"user {user_id}: {row}")
    if rows:
        results["auc_per_user"] = rows
        results["auc_mean"] = {
            k: round(float(np.mean([r[k] for r in rows])), 3)  # type: ignore[arg-type]
            for k in ("auc_own_persona", "auc_other_users_persona", "auc_no_persona", "auc_persona_lift")
        }
        results["auc_pooled_own_persona"] = round(roc_auc(all_labels, all_own), 3)

    first_items = [dataset.item(x.item_id) for x in per_user[0][1][:8]]
    results["scoring_cost"] = scoring_cost(model, per_user[0][2].text, first_items, repeats=2)
    results["personas"] = personas
    model.close()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "personas"}, indent=2))


if __name__ == "__main__":
    main()
