"""Would parallel slots speed up the embedded model? k greedy generations one after another on a one-slot server
(what ``LlamaCppModel`` runs) against the same k requests at once on a k-slot server, where llama.cpp decodes them in
one batch. On a machine whose decoding is limited by memory bandwidth the batch wins nearly k-fold; where it is
limited by compute it gains little and is not worth giving up the one slot's prefix-cache reuse.

    .venv/bin/python benchmarks/bench_parallel_decode.py [--k 2 4] [--tokens 160]

Both set-ups run in this process, side by side, on the pinned embedded weights; nothing goes through a cache.
Batched greedy decoding may stop at a different token than single decoding (different kernels, different rounding),
so the figure to compare is tokens per second, not the token counts.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from pathlib import Path
from typing import Any

from personalens.llm.weights import ensure_weights


def _server(model: Path, slots: int, threads: int) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.n_ctx = 4096 * slots  # llama.cpp splits the context between the slots
    params.n_batch = 512
    params.n_parallel = slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.warmup = False
    params.verbosity = -1
    return xllamacpp.Server(params)


def _request(i: int, tokens: int) -> dict[str, Any]:
    prompt = f"Describe reader number {i} in about 250 words: the films, hobbies and food this person enjoys."
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0.0,
        "cache_prompt": False,
    }


def _run(server: Any, ids: list[int], tokens: int) -> tuple[int, float]:
    """Send the requests at once (one thread each); return generated tokens and wall seconds."""
    made: dict[int, int] = {}

    def one(i: int) -> None:
        made[i] = int(server.handle_chat_completions(_request(i, tokens))["usage"]["completion_tokens"])

    started = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in ids]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(made.values()), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4], help="requests per comparison")
    ap.add_argument("--tokens", type=int, default=160, help="generated tokens per request at most")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = ensure_weights()
    print(f"model {model.name}, {args.threads} threads, up to {args.tokens} tokens per request")
    print(f"{'k':>3} {'one slot, in turn':>20} {'k slots, at once':>18} {'ratio':>6}")
    for k in args.k:
        single = _server(model, 1, args.threads)
        _run(single, [10_000], 8)  # warm-up
        toks, secs = 0, 0.0
        for i in range(k):
            t, s = _run(single, [i], args.tokens)
            toks, secs = toks + t, secs + s
        in_turn = toks / secs
        del single
        gc.collect()
        batched = _server(model, k, args.threads)
        _run(batched, [10_000], 8)
        t, s = _run(batched, list(range(k)), args.tokens)
        at_once = t / s
        del batched
        gc.collect()
        print(f"{k:>3} {in_turn:>14.1f} tok/s {at_once:>12.1f} tok/s {at_once / in_turn:>6.2f}")


if __name__ == "__main__":
    main()
