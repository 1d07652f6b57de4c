"""Preference pairs from self-sampled candidates (DeePer §3.4, App. A.5).

Within one context, candidates whose total reward is at least τ+ form the positive set and those at most τ− the
negative set; every (positive, negative) pair whose reward gap is at least δ becomes a pair (chosen, rejected).
Pairs never mix contexts: both answers refine the same persona from the same observation. DeePer uses τ+ = 0.5,
τ− = 0, δ = 0.5 in iteration 1 and δ = 0.8 in iteration 2, where a replay share of iteration-1 pairs with a gap
above the new δ is mixed in against forgetting (5,000 next to 28,612 new pairs in the paper).

A candidate that names an item of the history (``leaked``) or falls short of the word minimum (``short``) can be
rejected but is never chosen (``clean_chosen``, on by default): a persona carries no item names, and training the
refiner towards such an answer would teach it to write them, however well the answer happened to score.

Pairs are written as TRL-style conversational JSONL: ``prompt`` (the refine prompt as chat messages), ``chosen`` and
``rejected`` (one assistant message each), with the context id, both rewards, the gap and the iteration alongside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personalens.refinement.rewards import REWARD_WEIGHTS
from personalens.training.contexts import RefineContext
from personalens.training.sampling import Candidate


@dataclass(frozen=True, slots=True)
class PairConfig:
    """``reward`` names the reward setting (balanced r_prev + r_curr + r_fut, future-only, decayed).
    ``max_pairs_per_context`` (None: all) keeps the pairs with the largest gaps, so one easy context cannot swamp
    the set; ties are broken by candidate order. ``clean_chosen`` keeps leaked or short candidates out of the
    positive set (they may still be rejected)."""

    positive_min: float = 0.5  # τ+
    negative_max: float = 0.0  # τ−
    margin: float = 0.5  # δ
    reward: str = "balanced"
    max_pairs_per_context: int | None = None
    clean_chosen: bool = True

    def __post_init__(self) -> None:
        if self.reward not in REWARD_WEIGHTS:
            raise ValueError(f"unknown reward setting {self.reward!r}; choose from {sorted(REWARD_WEIGHTS)}")
        if self.positive_min < self.negative_max:
            raise ValueError("τ+ (positive_min) must be >= τ− (negative_max)")
        if self.margin < 0:
            raise ValueError("the margin δ must be >= 0")
        if self.max_pairs_per_context is not None and self.max_pairs_per_context < 1:
            raise ValueError("max_pairs_per_context must be >= 1 or None")


@dataclass(frozen=True, slots=True)
class PreferencePair:
    context_id: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    iteration: int = 1

    @property
    def gap(self) -> float:
        return self.chosen_reward - self.rejected_reward

    def to_trl(self, context: RefineContext, *, min_words: int, max_words: int) -> dict[str, Any]:
        messages = context.messages(min_words=min_words, max_words=max_words)
        prompt = [{"role": m.role, "content": m.content} for m in messages]
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "context_id": self.context_id,
            "chosen_reward": round(self.chosen_reward, 6),
            "rejected_reward": round(self.rejected_reward, 6),
            "margin": round(self.gap, 6),
            "iteration": self.iteration,
        }


def make_pairs(
    context_id: str, candidates: Sequence[Candidate], config: PairConfig, *, iteration: int = 1
) -> list[PreferencePair]:
    """The pairs of one context. Candidates with the same text are one candidate (a repeated sample adds nothing)."""
    unique: dict[str, Candidate] = {}
    for c in candidates:
        unique.setdefault(c.text, c)
    scored = [(t, c.reward(config.reward)) for t, c in unique.items()]
    eligible = {t for t, c in unique.items() if not (config.clean_chosen and (c.leaked or c.short))}
    positives = [(t, r) for t, r in scored if r >= config.positive_min and t in eligible]
    negatives = [(t, r) for t, r in scored if r <= config.negative_max]
    pairs = [
        PreferencePair(context_id, tw, tl, rw, rl, iteration)
        for tw, rw in positives
        for tl, rl in negatives
        if tw != tl and rw - rl >= config.margin
    ]
    if config.max_pairs_per_context is not None:
        order = sorted(range(len(pairs)), key=lambda i: (-pairs[i].gap, i))
        pairs = [pairs[i] for i in sorted(order[: config.max_pairs_per_context])]
    return pairs


def build_pairs(
    samples: Mapping[str, Sequence[Candidate]], config: PairConfig, *, iteration: int = 1
) -> list[PreferencePair]:
    """Pairs of every context, context by context (sorted ids, so the output does not depend on dict order)."""
    return [p for cid in sorted(samples) for p in make_pairs(cid, samples[cid], config, iteration=iteration)]


def replay_pairs(old: Sequence[PreferencePair], *, count: int, min_gap: float, seed: int = 0) -> list[PreferencePair]:
    """A seeded sample of ``count`` earlier pairs whose gap exceeds ``min_gap`` (all of them if fewer qualify)."""
    eligible = [p for p in old if p.gap > min_gap]
    if count >= len(eligible):
        return list(eligible)
    picks = np.random.default_rng(seed).choice(len(eligible), size=count, replace=False)
    return [eligible[int(i)] for i in sorted(picks)]


def replay_count(new: int, share: float) -> int:
    """How many replayed pairs make up ``share`` of the mixed set (share 5,000 / 33,612 ≈ 0.149 in the paper)."""
    if not 0 <= share < 1:
        raise ValueError("the replay share must be in [0, 1)")
    return int(round(new * share / (1 - share)))


def write_pairs(
    pairs: Sequence[PreferencePair],
    contexts: Mapping[str, RefineContext],
    path: str | Path,
    *,
    min_words: int,
    max_words: int,
) -> Path:
    """TRL-style JSONL (written to a temporary file, then renamed: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in pairs:
            row = p.to_trl(contexts[p.context_id], min_words=min_words, max_words=max_words)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def pair_stats(pairs: Sequence[PreferencePair], n_contexts: int) -> dict[str, Any]:
    gaps = [p.gap for p in pairs]
    contexts = {p.context_id for p in pairs}
    return {
        "pairs": len(pairs),
        "contexts": n_contexts,
        "contexts_with_pairs": len(contexts),
        "mean_gap": float(np.mean(gaps)) if gaps else None,
        "by_iteration": {str(k): sum(p.iteration == k for p in pairs) for k in sorted({p.iteration for p in pairs})},
    }


__all__ = [
    "PairConfig",
    "PreferencePair",
    "build_pairs",
    "make_pairs",
    "pair_stats",
    "replay_count",
    "replay_pairs",
    "write_pairs",
]
