"""Would llama.cpp's speculative decoding speed up persona writing on the embedded model? The n-gram variants need no
draft model: they propose the continuation of an n-gram seen earlier in the context, which should pay for Refine,
whose answer restates much of the old profile it was given. Each variant gets its own one-slot server, loaded in
turn in this process, and writes the same persona requests: first personas and Refine rewrites built with the
refinement prompts from the small fixture below, greedy with repetition penalty 1.3 as ``three-domains.toml`` runs.

    .venv/bin/python benchmarks/bench_speculative.py [--repeats 2] [--variants none ngram-simple ngram-mod]

Prints, per variant, generated tokens per second (llama.cpp's own decode timing, prompt processing excluded), the
drafted and accepted token counts, and how many answers differ from the variant without speculation: verifying a
draft is a batch, and batched kernels round differently, so a greedy answer may diverge.
"""

from __future__ import annotations

import argparse
import gc
import statistics
from typing import Any

from personalens.llm.base import ChatRequest
from personalens.llm.weights import ensure_weights
from personalens.refinement.prompts import RatedItem, initial_persona, refine_persona

SCALE = (1.0, 5.0, 1.0)
DOMAIN = "movies and TV"
WINDOW_A = [
    RatedItem("A slow Nordic crime series about a detective haunted by an unsolved case", 5, 3.6),
    RatedItem("A loud summer blockbuster in which robots fight over a city", 2, 3.9),
    RatedItem("A documentary following three chefs through one restaurant season", 4, 3.1),
    RatedItem("A romantic comedy set at a wedding on a Greek island", 2, 3.4),
    RatedItem("A black-and-white silent comedy restored with a new score", 5, 2.8),
    RatedItem("A teen superhero sequel with a cliffhanger ending", 1, 3.7),
    RatedItem("A British costume drama about a family estate in decline", 4, 3.9),
    RatedItem("A true-crime miniseries retelling a famous bank robbery", 4, 3.5),
    RatedItem("An animated fairy tale musical for young children", 3, 3.3),
    RatedItem("A courtroom drama built around one long cross-examination", 5, 3.8),
]
WINDOW_B = [
    RatedItem("A space opera trilogy box set with extended editions", 3, 4.1),
    RatedItem("A French film about two sisters sorting out their late mother's house", 5, 3.2),
    RatedItem("A workout video series with daily thirty-minute routines", 1, 2.9),
    RatedItem("A horror anthology of short stories set in one apartment block", 2, 3.0),
    RatedItem("A nature series filmed over four years in the Arctic", 5, 4.0),
    RatedItem("A stand-up comedy special recorded in a small club", 3, 3.6),
    RatedItem("A war film told from the point of view of a field nurse", 4, 3.4),
    RatedItem("A remake of a classic western with a star cast", 2, 3.9),
    RatedItem("A cooking competition show with celebrity judges", 2, 3.5),
    RatedItem("A political thriller series about a speechwriter", 4, 3.7),
]
PERSONA = (
    "This viewer is drawn to patient, character-driven storytelling and rewards films and series that take their "
    "time. Crime and courtroom stories appeal most when they are built on investigation, dialogue and moral "
    "ambiguity rather than chases or twists for their own sake. Documentaries about work, craft and real events "
    "rate well, especially when they follow people closely over a long stretch of time.\n\n"
    "Spectacle does little for this person. Effects-driven blockbusters, franchise sequels and stories that end on "
    "a hook for the next instalment are rated low, as are formula romantic comedies whose outcome is clear from the "
    "start. Period dramas and restored classics are welcome, and age or black-and-white photography is no obstacle; "
    "care in the making counts for more than novelty.\n\n"
    "As a rater this person is discriminating: high marks are kept for work that is both well made and "
    "thoughtful, and mass-market entertainment aimed at a broad family audience tends to land in the middle of the "
    "scale at best. They are not swayed by star power or budget, and they notice when a film talks down to its "
    "audience. A slow start is forgiven if the payoff is earned."
)
VARIANTS = {"none": "", "ngram-simple": "NGRAM_SIMPLE", "ngram-mod": "NGRAM_MOD", "ngram-map-k": "NGRAM_MAP_K"}


def _requests() -> list[tuple[str, dict[str, Any]]]:
    made = []
    for window in (WINDOW_A, WINDOW_B):
        made.append(
            ("first persona", initial_persona(window, domain=DOMAIN, scale=SCALE, min_words=200, max_words=320))
        )
    for window in (WINDOW_A, WINDOW_B):
        made.append(
            ("refine", refine_persona(PERSONA, window, domain=DOMAIN, scale=SCALE, min_words=200, max_words=320))
        )
    out = []
    for kind, messages in made:
        body = ChatRequest(messages=tuple(messages), max_tokens=560, temperature=0.0).to_openai(None)
        body.update(repeat_penalty=1.3, cache_prompt=False)
        out.append((kind, body))
    return out


def _server(model: str, variant: str, threads: int) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_ctx = 4096
    params.n_batch = 512
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.warmup = False
    params.verbosity = -1
    if VARIANTS[variant]:
        params.speculative.types = [
            getattr(xllamacpp.common_speculative_type, f"COMMON_SPECULATIVE_TYPE_{VARIANTS[variant]}")
        ]
    return xllamacpp.Server(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="passes over the variants, in turn (default 2)")
    parser.add_argument("--variants", nargs="+", default=["none", "ngram-simple", "ngram-mod"], choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = str(ensure_weights())
    requests = _requests()
    variants = ["none", *[v for v in args.variants if v != "none"]]
    speed: dict[str, list[float]] = {v: [] for v in variants}
    drafted = {v: 0 for v in variants}
    accepted = {v: 0 for v in variants}
    differs = {v: 0 for v in variants}
    reference: dict[int, str] = {}
    for repeat in range(args.repeats):
        for variant in variants:
            server = _server(model, variant, args.threads)
            tokens = seconds = 0.0
            for i, (kind, body) in enumerate(requests):
                data = server.handle_chat_completions(dict(body))
                timings = data.get("timings", {})
                text = data["choices"][0]["message"]["content"]
                tokens += timings.get("predicted_n", 0)
                seconds += timings.get("predicted_ms", 0.0) / 1000
                drafted[variant] += int(timings.get("draft_n") or 0)
                accepted[variant] += int(timings.get("draft_n_accepted") or 0)
                if variant == "none" and repeat == 0:
                    reference[i] = text
                elif reference.get(i) != text:
                    differs[variant] += 1
                print(
                    f"pass {repeat + 1} {variant:12s} {kind:13s} {timings.get('predicted_n', 0):4d} tokens "
                    f"{timings.get('predicted_per_second', 0.0):5.1f} tokens/s",
                    flush=True,
                )
            speed[variant].append(tokens / seconds)
            del server
            gc.collect()
    base = statistics.fmean(speed["none"])
    print(f"\n{'variant':12s} {'tokens/s':>9s} {'vs none':>8s} {'drafted':>8s} {'accepted':>9s} differing answers")
    for variant in variants:
        mean = statistics.fmean(speed[variant])
        print(
            f"{variant:12s} {mean:9.2f} {mean / base:7.2f}x {drafted[variant]:8d} {accepted[variant]:9d} "
            f"{differs[variant]}/{len(requests) * args.repeats}"
        )


if __name__ == "__main__":
    main()
