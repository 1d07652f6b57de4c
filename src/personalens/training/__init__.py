"""Refiner training (DeePer §3.4): contexts, self-sampling, preference pairs, DPO + SFT fine-tuning, evaluation.

The pipeline, one module per step:

* :mod:`~personalens.training.contexts` — (S_{t-1}, O_t) contexts for training users;
* :mod:`~personalens.training.sampling` — M candidate refinements per context, each with its rewards;
* :mod:`~personalens.training.pairs` — preference pairs by thresholds and margin, replay, TRL JSONL;
* :mod:`~personalens.training.dpo` — LoRA DPO + SFT with TRL/PEFT (needs ``personalens[train]``; imported lazily);
* :mod:`~personalens.training.evaluate` — one-step refinement before and after training (Table 18 layout);
* :mod:`~personalens.training.export` — the trained adapter as a llama.cpp LoRA for the embedded runtime;
* :mod:`~personalens.training.pipeline` — all of it as one resumable run (``personalens train CONFIG``).

Nothing here imports torch; only :mod:`~personalens.training.dpo` needs it, inside its functions.
"""

from personalens.training.contexts import RefineContext, build_contexts, read_contexts
from personalens.training.evaluate import compare_refiners, render_one_step, summarise_one_step
from personalens.training.pairs import (
    PairConfig,
    PreferencePair,
    build_pairs,
    make_pairs,
    pair_stats,
    replay_count,
    replay_pairs,
    write_pairs,
)
from personalens.training.pipeline import TrainPipeline, TrainPipelineConfig, load_train_config
from personalens.training.sampling import Candidate, SamplingConfig, read_samples, run_sampling

__all__ = [
    "Candidate",
    "PairConfig",
    "PreferencePair",
    "RefineContext",
    "SamplingConfig",
    "TrainPipeline",
    "TrainPipelineConfig",
    "build_contexts",
    "build_pairs",
    "compare_refiners",
    "load_train_config",
    "make_pairs",
    "pair_stats",
    "read_contexts",
    "read_samples",
    "render_one_step",
    "replay_count",
    "replay_pairs",
    "run_sampling",
    "summarise_one_step",
    "write_pairs",
]
