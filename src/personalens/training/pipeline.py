"""The whole DeePer training recipe as one resumable run (``personalens train CONFIG``).

Stages, each writing into its own folder of the output directory and skipped when already done::

    iter1/contexts.jsonl   (S0, O1) for the training users; S0 written by the base model from W0
    iter1/samples.jsonl    M candidate refinements per context from the base model, each with its rewards
    iter1/pairs.jsonl      preference pairs (τ+, τ−, δ) in TRL conversational form
    iter1/dpo/             LoRA DPO + SFT run (checkpoints, log, adapter/)
    iter1/adapter.gguf     the adapter as a llama.cpp LoRA, for the embedded runtime
    iter2/...              the iteration-1 model refines S0 → S1, (S1, O2) contexts are added, it samples on the old and
                           the new contexts, pairs with δ₂ plus a replay share of iteration-1 pairs, training continues
                           from the iteration-1 adapter
    eval/one_step.jsonl    one-step refinement on held-out users: base model versus each trained adapter
    summary.json, report.md

``until`` stops after a stage, so sampling can run on one machine (against an OpenAI-compatible server such as vLLM)
and training on another (a GPU machine): copy the output directory and run the same command there; finished stages
are read back, never recomputed. The scorer (rating predictor) is always the base model, never the refiner being
trained, so rewards measure the persona and not the predictor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from personalens.data.deeper import load_deeper_iterations, load_deeper_train_users
from personalens.errors import ConfigError, PersonaLensError
from personalens.llm.base import ChatModel, Usage
from personalens.refinement.loop import Predictor
from personalens.refinement.strategies import PersonaWriter
from personalens.refinement.windows import UserWindows, windows_from_deeper, windows_from_train_users
from personalens.training.contexts import RefineContext, build_contexts, read_contexts
from personalens.training.dpo import DPOTrainConfig, config_defaults, run_started
from personalens.training.evaluate import compare_refiners, render_one_step, summarise_one_step
from personalens.training.pairs import (
    PairConfig,
    PreferencePair,
    build_pairs,
    pair_stats,
    replay_count,
    replay_pairs,
    write_pairs,
)
from personalens.training.sampling import LEGACY_SETTINGS, SamplingConfig, SamplingRun, run_sampling

# "evaluate-iter1" compares the base model with the iteration-1 adapter as soon as that exists, so the first
# before/after table does not wait for iteration 2; "evaluate" adds the iteration-2 adapter to the same rows.
STAGES = ("contexts", "sampling", "pairs", "train", "evaluate-iter1", "iteration2", "evaluate")
PAIRS_FILE = "pairs.jsonl"
ADAPTER_GGUF = "adapter.gguf"

# A model for a trained adapter (None: the base model). The embedded runtime loads the llama.cpp LoRA GGUF; a
# remote server names the adapter it serves.
ModelFor = Callable[[Path | None], ChatModel]
Trainer = Callable[..., Any]
Exporter = Callable[[Path, Path, Path], Any]


@dataclass(frozen=True, slots=True)
class TrainPipelineConfig:
    name: str
    root: str
    domains: tuple[str, ...]
    train_users_per_domain: int = 17
    heldout_users_per_domain: int = 5
    iterations: int = 2
    seed: int = 0
    predictor: str = "probability"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    margin_iteration2: float = 0.8  # δ in iteration 2
    replay_share: float = 5_000 / 33_612  # share of replayed iteration-1 pairs in the iteration-2 set (paper)
    candidates_iteration2: int | None = None  # M in iteration 2 (None: the same M as iteration 1)
    train: DPOTrainConfig = field(default_factory=DPOTrainConfig)
    # iteration 2's training settings ([train.iteration2] overrides [train]); None: the same as iteration 1
    train_iteration2: DPOTrainConfig | None = None
    base_model: str | None = None  # HF directory or GGUF file to train; default: the embedded model's GGUF
    source: str | None = None

    def __post_init__(self) -> None:
        if self.iterations not in (1, 2):
            raise ValueError("iterations must be 1 or 2")
        if self.train_users_per_domain < 1 or self.heldout_users_per_domain < 0:
            raise ValueError("train_users_per_domain must be >= 1 and heldout_users_per_domain >= 0")
        if not 0 <= self.replay_share < 1:
            raise ValueError("replay_share must be in [0, 1)")
        if self.candidates_iteration2 is not None and self.candidates_iteration2 < 1:
            raise ValueError("candidates_iteration2 must be >= 1")
        if self.predictor not in ("probability", "structured"):
            raise ValueError("predictor must be probability or structured")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["train"] = self.train.to_dict()
        out["train_iteration2"] = None if self.train_iteration2 is None else self.train_iteration2.to_dict()
        return out


_SECTIONS: dict[str, set[str]] = {
    "": {"name", "seed", "iterations", "predictor", "data", "sampling", "pairs", "train"},
    "data": {"root", "domains", "train_users_per_domain", "heldout_users_per_domain"},
    "sampling": {f.name for f in fields(SamplingConfig)} | {"candidates_iteration2"},
    "pairs": {f.name for f in fields(PairConfig)} | {"margin_iteration2", "replay_share"},
    "train": {f.name for f in fields(DPOTrainConfig)} | {"base_model", "iteration2"},
}


def parse_train_config(
    raw: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None
) -> TrainPipelineConfig:
    """Validate a TOML table (unknown keys and bad values are errors naming the file and section)."""
    from personalens.evaluation.experiment import check_sections

    check_sections(raw, _SECTIONS, source=source)
    data = dict(raw.get("data", {}))
    if "root" not in data or not data.get("domains"):
        raise ConfigError(f"{source}: [data] root and domains are required")

    def resolve(value: str) -> str:
        path = Path(value)
        return str((base / path).resolve()) if base is not None and not path.is_absolute() else str(path)

    pairs = dict(raw.get("pairs", {}))
    sampling = dict(raw.get("sampling", {}))
    candidates2 = sampling.pop("candidates_iteration2", None)
    train = dict(raw.get("train", {}))
    base_model = train.pop("base_model", None)
    overrides = train.pop("iteration2", None)
    if overrides is not None:
        check_sections(
            {"train.iteration2": overrides},
            {"train.iteration2": {f.name for f in fields(DPOTrainConfig)}},
            source=source,
        )
    try:
        return TrainPipelineConfig(
            name=str(raw.get("name") or Path(source).stem),
            root=resolve(data.pop("root")),
            domains=tuple(data.pop("domains")),
            iterations=int(raw.get("iterations", 2)),
            seed=int(raw.get("seed", 0)),
            predictor=str(raw.get("predictor", "probability")),
            sampling=SamplingConfig(**sampling),
            candidates_iteration2=int(candidates2) if candidates2 is not None else None,
            margin_iteration2=float(pairs.pop("margin_iteration2", 0.8)),
            replay_share=float(pairs.pop("replay_share", 5_000 / 33_612)),
            pairs=PairConfig(**pairs),
            train=DPOTrainConfig.from_dict(train),
            train_iteration2=None if overrides is None else DPOTrainConfig.from_dict({**train, **overrides}),
            base_model=resolve(base_model) if base_model else None,
            source=source,
            **data,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_train_config(path: str | Path) -> TrainPipelineConfig:
    from personalens.evaluation.experiment import read_experiment_file

    path = Path(path)
    return parse_train_config(read_experiment_file(path), source=str(path), base=path.parent)


def _seeded_first(users: list[UserWindows], n: int, seed: int, min_windows: int) -> list[UserWindows]:
    from personalens.refinement.experiment import sample_users

    return sample_users(users, n, seed, rounds=min_windows - 2)


@dataclass(slots=True)
class StageReport:
    name: str
    seconds: float = 0.0
    usage: Usage = field(default_factory=Usage)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "seconds": round(self.seconds, 2), "usage": self.usage.to_dict(), **self.details}


class TrainPipeline:
    """Runs (or resumes) the stages of :mod:`personalens.training` for one config into ``out_dir``.

    ``model_for(None)`` is the base chat model (S0 writer, iteration-1 sampler, baseline refiner); ``model_for(path)``
    the model with a trained adapter. ``predictor`` scores personas (the base model). ``trainer`` is
    :func:`personalens.training.dpo.train_dpo` and ``exporter`` :func:`personalens.training.export.adapter_to_gguf`
    unless replaced (tests); ``base_gguf`` is the embedded model file the adapter is exported for (None: no export,
    e.g. when sampling runs against a remote server that serves the Hugging Face adapter itself).
    """

    def __init__(
        self,
        config: TrainPipelineConfig,
        out_dir: str | Path,
        *,
        model_for: ModelFor,
        predictor: Predictor,
        base_model: str | Path | None,
        base_gguf: Path | None = None,
        trainer: Trainer | None = None,
        exporter: Exporter | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.model_for = model_for
        self.predictor = predictor
        self.base_model = None if base_model is None else Path(base_model)
        self.base_gguf = base_gguf
        if trainer is None:
            from personalens.training.dpo import train_dpo

            trainer = train_dpo
        if exporter is None:
            from personalens.training.export import adapter_to_gguf

            exporter = adapter_to_gguf
        self.trainer = trainer
        self.exporter = exporter
        self.emit = on_event or (lambda kind, payload: None)
        self.reports: list[StageReport] = []

    # ------------------------------------------------------------------------------------------------ data

    def train_users(self) -> list[UserWindows]:
        """``train_users_per_domain`` seeded users per domain from ``train_users.csv``, interleaved by domain."""
        need = 4 if self.config.iterations == 2 else 3  # step-2 contexts need W1..W3
        per_domain = []
        for domain in self.config.domains:
            path = Path(self.config.root) / domain / "train_users.csv"
            users = windows_from_train_users(load_deeper_train_users(path))
            per_domain.append(_seeded_first(users, self.config.train_users_per_domain, self.config.seed, need))
        width = max((len(u) for u in per_domain), default=0)
        return [us[i] for i in range(width) for us in per_domain if i < len(us)]

    def heldout_users(self) -> list[UserWindows]:
        """Held-out users: DeePer's test users (iteration-1 windows W0, W1, W2), never in ``train_users.csv``."""
        out = []
        for domain in self.config.domains:
            rounds = load_deeper_iterations(Path(self.config.root) / domain, iterations=[1])
            users = windows_from_deeper(rounds)
            out += _seeded_first(users, self.config.heldout_users_per_domain, self.config.seed, 3)
        return out

    def writer(self, model: ChatModel, user: UserWindows | RefineContext, **changes: Any) -> PersonaWriter:
        """The writer of this run's S0, candidates and held-out refinements for ``model`` and ``user``; ``changes``
        replace its settings (e.g. ``revised_only=True`` to compare the refiners with the answer clean-ups on)."""
        s = self.config.sampling
        # candidates are the policy's own single answers: no copy re-ask (a copy of the old persona earns reward 0)
        # and a short answer is asked for again in full, never stitched from two replies
        settings: dict[str, Any] = {
            "domain": user.domain,
            "scale": user.scale,
            "min_words": s.min_words,
            "max_words": s.max_words,
            "reask_unchanged": False,
            "short_answers": "rewrite",
            "revised_only": s.revised_only,
            "drop_naming": s.drop_naming,
        }
        return PersonaWriter(model, **{**settings, **changes})

    # ------------------------------------------------------------------------------------------------ stages

    def _stage(self, name: str, total: int | None = None) -> StageReport:
        """Start a stage; ``total`` is how many "context" events it will emit (for a progress bar), when known."""
        report = StageReport(name)
        self.reports.append(report)
        self.emit("stage", {"stage": name, **({} if total is None else {"total": total})})
        return report

    def _pairs(self, folder: Path, pairs: Sequence[PreferencePair], contexts: Mapping[str, RefineContext]) -> Path:
        s = self.config.sampling
        return write_pairs(pairs, contexts, folder / PAIRS_FILE, min_words=s.min_words, max_words=s.max_words)

    def _train(self, folder: Path, init_adapter: Path | None, config: DPOTrainConfig) -> tuple[Any, Path | None]:
        if self.base_model is None:
            raise ConfigError(
                "no base model to train: set [train] base_model (a Hugging Face directory or a GGUF file) when the "
                "LLM is remote"
            )
        report = self._stage(f"train:{folder.name}")
        t0 = time.perf_counter()
        result = self.trainer(
            folder / PAIRS_FILE,
            self.base_model,
            folder / "dpo",
            config,
            init_adapter=init_adapter,
            on_log=lambda log: self.emit("train_log", log),
        )
        gguf = None
        if self.base_gguf is not None:
            gguf = folder / ADAPTER_GGUF
            adapter = Path(result.adapter_dir)
            if not gguf.exists() or gguf.stat().st_mtime < (adapter / "adapter_model.safetensors").stat().st_mtime:
                self.exporter(adapter, self.base_gguf, gguf)
        report.seconds = time.perf_counter() - t0
        report.details = {"result": result.to_dict(), "adapter_gguf": str(gguf) if gguf else None}
        return result, gguf

    def run(self, *, until: str = "evaluate") -> dict[str, Any]:
        if until not in STAGES:
            raise ConfigError(f"until must be one of {', '.join(STAGES)}, not {until!r}")
        stop = STAGES.index(until)
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = self.out / "config.json"
        current = json.dumps(self.config.to_dict(), indent=2, sort_keys=True, default=str)
        changed = (
            check_config_change(json.loads(stamp.read_text()), json.loads(current), self.out) if stamp.exists() else []
        )
        if changed:
            self.emit("config_changed", {"settings": changed})
        stamp.write_text(current)
        summary: dict[str, Any] = {"name": self.config.name, "stages": []}
        if changed:
            summary["config_changed"] = changed
        try:
            self._run(stop, summary)
        finally:
            summary["stages"] = [r.to_dict() for r in self.reports]
            summary["seconds"] = round(time.perf_counter() - started, 2)
            total = Usage()
            for r in self.reports:
                total = total + r.usage
            summary["usage"] = total.to_dict()
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            (self.out / "report.md").write_text(render_train_report(summary))
        return summary

    def _run(self, stop: int, summary: dict[str, Any]) -> None:
        cfg = self.config
        base = self.model_for(None)
        it1 = self.out / "iter1"

        users = self.train_users()
        report = self._stage("contexts:iter1", total=len(users))
        t0 = time.perf_counter()
        built = build_contexts(
            users, it1, predictor=self.predictor, writer_for=lambda u: self.writer(base, u), on_event=self.emit
        )
        report.seconds, report.usage = time.perf_counter() - t0, built.usage
        report.details = {"users": len(users), "contexts": len(built.contexts), "failures": built.failures}
        contexts1 = {c.context_id: c for c in built.contexts}
        if not contexts1:
            raise PersonaLensError(f"no training context could be built; failures: {built.failures}")
        if stop == 0:
            return

        report = self._stage("sampling:iter1", total=len(contexts1))
        sampled = run_sampling(
            list(contexts1.values()),
            it1,
            writer_for=lambda c: self.writer(base, c),
            predictor=self.predictor,
            config=cfg.sampling,
            on_event=self.emit,
        )
        report.seconds, report.usage = sampled.seconds, sampled.usage
        report.details = _sampling_details(sampled)
        if stop == 1:
            return

        report = self._stage("pairs:iter1")
        pairs1 = build_pairs({s.context_id: s.candidates for s in sampled.sampled}, cfg.pairs, iteration=1)
        report.details = pair_stats(pairs1, len(sampled.sampled))
        report.details["candidate_rewards"] = _reward_spread(sampled.sampled, cfg.pairs.reward)
        if not pairs1:
            raise PersonaLensError(
                "iteration 1 gave no preference pair (no context had a candidate with reward >= "
                f"{cfg.pairs.positive_min} and one <= {cfg.pairs.negative_max} at least {cfg.pairs.margin} apart); "
                "sample more candidates or more users"
            )
        self._pairs(it1, pairs1, contexts1)
        if stop == 2:
            return

        result1, gguf1 = self._train(it1, None, self.config.train)
        summary["adapters"] = {"iteration 1": {"hf": result1.adapter_dir, "gguf": str(gguf1) if gguf1 else None}}
        refiners: dict[str, ChatModel] = {
            "base": base,
            "iteration 1": self.model_for(gguf1 or Path(result1.adapter_dir)),
        }
        if stop == 3:
            return

        self._evaluate(refiners, "evaluate:iter1", summary)
        if stop == 4 or cfg.iterations == 1:
            return

        refiners["iteration 2"] = self._iteration2(users, contexts1, pairs1, refiners["iteration 1"], result1, summary)
        if stop == 5:
            return

        self._evaluate(refiners, "evaluate", summary)

    def _evaluate(self, refiners: Mapping[str, ChatModel], stage: str, summary: dict[str, Any]) -> None:
        """One-step refinement of the held-out users by every refiner; rows already written are read back."""
        cfg = self.config
        report = self._stage(stage)
        t0 = time.perf_counter()
        heldout = self.heldout_users()
        s = cfg.sampling
        rows = compare_refiners(
            heldout,
            refiners,
            self.out / "eval",
            initial_writer=refiners["base"],
            predictor=self.predictor,
            min_words=s.min_words,
            max_words=s.max_words,
            # S0 and the refinements are written as the training candidates were (single replies, no copy re-ask),
            # so the comparison judges the refiner models, not the writer's follow-ups
            writer_for=self.writer,
            on_event=self.emit,
        )
        rows = [r for r in rows if r["refiner"] in refiners]
        (self.out / "eval" / "one_step.md").write_text(render_one_step(rows))
        report.seconds = time.perf_counter() - t0
        report.details = {"users": len(heldout), "refiners": list(refiners), "summary": summarise_one_step(rows)}
        summary["one_step"] = render_one_step(rows)

    def _iteration2(
        self,
        users: Sequence[UserWindows],
        contexts1: Mapping[str, RefineContext],
        pairs1: Sequence[PreferencePair],
        trained: ChatModel,
        result1: Any,
        summary: dict[str, Any],
    ) -> ChatModel:
        cfg = self.config
        it2 = self.out / "iter2"
        report = self._stage("contexts:iter2")
        t0 = time.perf_counter()
        done = {c.user_id for c in read_contexts(it2).values()} if (it2 / "contexts.jsonl").exists() else set()
        by_user = {c.user_id: c for c in contexts1.values()}
        s1: dict[str, str] = {}
        usage = Usage()
        for user in users:
            ctx = by_user.get(user.user_id)
            if ctx is None or user.user_id in done:
                continue
            s = cfg.sampling
            written = self.writer(trained, ctx).write(
                ctx.messages(min_words=s.min_words, max_words=s.max_words), ctx.current, temperature=0.0
            )
            usage = usage + written.usage
            s1[user.user_id] = written.text
        built = build_contexts(
            [u for u in users if u.user_id in by_user],
            it2,
            predictor=self.predictor,
            step=2,
            personas=s1,
            on_event=self.emit,
        )
        report.seconds, report.usage = time.perf_counter() - t0, usage + built.usage
        report.details = {"contexts": len(built.contexts), "failures": built.failures}
        contexts = {**contexts1, **{c.context_id: c for c in built.contexts}}

        report = self._stage("sampling:iter2", total=len(contexts))
        m2 = cfg.candidates_iteration2 or cfg.sampling.candidates
        config2 = SamplingConfig(**{**asdict(cfg.sampling), "seed": cfg.sampling.seed + 1, "candidates": m2})
        sampled = run_sampling(
            list(contexts.values()),
            it2,
            writer_for=lambda c: self.writer(trained, c),
            predictor=self.predictor,
            config=config2,
            on_event=self.emit,
        )
        report.seconds, report.usage = sampled.seconds, sampled.usage
        report.details = _sampling_details(sampled)

        report = self._stage("pairs:iter2")
        pair_config = PairConfig(**{**asdict(cfg.pairs), "margin": cfg.margin_iteration2})
        new = build_pairs({s.context_id: s.candidates for s in sampled.sampled}, pair_config, iteration=2)
        replay = replay_pairs(
            pairs1, count=replay_count(len(new), cfg.replay_share), min_gap=cfg.margin_iteration2, seed=cfg.seed
        )
        report.details = pair_stats(new + replay, len(sampled.sampled))
        report.details["replayed"] = len(replay)
        report.details["candidate_rewards"] = _reward_spread(sampled.sampled, cfg.pairs.reward)
        if not new + replay:
            raise PersonaLensError("iteration 2 gave no preference pair; sample more candidates or more users")
        self._pairs(it2, new + replay, contexts)

        result2, gguf2 = self._train(it2, Path(result1.adapter_dir), cfg.train_iteration2 or cfg.train)
        summary.setdefault("adapters", {})["iteration 2"] = {
            "hf": result2.adapter_dir,
            "gguf": str(gguf2) if gguf2 else None,
        }
        return self.model_for(gguf2 or Path(result2.adapter_dir))


# Settings that only shape a later stage, with the output that fixes them: until that output exists they may change
# between runs of one output directory (e.g. the pair thresholds once the sampled rewards are known). Every other
# setting shapes the contexts and is fixed from the first run on; ``name`` and ``source`` never matter.
_FIXED_BY: dict[str, str] = {
    "pairs": "iter1/pairs.jsonl",
    "train": "iter1/dpo",
    "train_iteration2": "iter2/dpo",
    "candidates_iteration2": "iter2/samples.jsonl",
    "margin_iteration2": "iter2/pairs.jsonl",
    "replay_share": "iter2/pairs.jsonl",
    "heldout_users_per_domain": "eval",
}
_FREE = {"name", "source"}


def check_config_change(stored: Mapping[str, Any], current: Mapping[str, Any], out: Path) -> list[str]:
    """The settings that differ from the stored run's; raises ConfigError when one of them shapes output that exists."""
    stored, current = _with_defaults(stored), _with_defaults(current)
    changed = sorted(k for k in set(stored) | set(current) if k not in _FREE and stored.get(k) != current.get(k))
    fixed = [k for k in changed if k not in _FIXED_BY or _written(out / _FIXED_BY[k])]
    if fixed:
        where = ", ".join(f"{k} (fixed by {_FIXED_BY.get(k, 'iter1/contexts.jsonl')})" for k in fixed)
        raise ConfigError(
            f"{out} holds a run of another configuration ({out / 'config.json'}): {where} changed after the output "
            "it shapes was written; use another output directory"
        )
    return changed


def _with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored configuration with the settings added since it was written set to what the run used (the defaults
    for training, the behaviour before the setting for sampling), so a new setting alone does not count as a
    change."""
    out = dict(config)
    for key in ("train", "train_iteration2"):
        if isinstance(out.get(key), Mapping):
            out[key] = {**config_defaults(), **out[key]}
    if isinstance(out.get("sampling"), Mapping):
        out["sampling"] = {**LEGACY_SETTINGS, **out["sampling"]}
    return out


def _sampling_details(run: SamplingRun) -> dict[str, Any]:
    return {
        "written": run.written,
        "reused": run.reused,
        "redrawn": run.redrawn,
        "duplicates_kept": run.duplicates,
        "failures": run.failures,
    }


def _written(path: Path) -> bool:
    """Whether the output at ``path`` exists; a DPO folder counts once it has a checkpoint or a result (a training
    run stopped before its first checkpoint fixes nothing, so its settings may still change)."""
    if path.name == "dpo":
        return run_started(path)
    return path.exists()


def _reward_spread(sampled: Sequence[Any], setting: str) -> dict[str, Any]:
    candidates = [c for s in sampled for c in s.candidates]
    values = sorted(c.reward(setting) for c in candidates)
    if not values:
        return {"candidates": 0}
    return {
        "candidates": len(values),
        "leaked": sum(bool(c.leaked) for c in candidates),
        "short": sum(c.short for c in candidates),
        "min": round(values[0], 4),
        "median": round(values[len(values) // 2], 4),
        "max": round(values[-1], 4),
        "positive_share": round(sum(v > 0 for v in values) / len(values), 4),
    }


def render_train_report(summary: Mapping[str, Any]) -> str:
    lines = [f"# Refiner training: {summary.get('name', '')}", ""]
    lines += ["| stage | seconds | LLM calls | tokens | details |", "|---|---:|---:|---:|---|"]
    for stage in summary.get("stages", []):
        usage = stage.get("usage", {})
        details = {k: v for k, v in stage.items() if k not in ("stage", "seconds", "usage", "summary", "result")}
        if "result" in stage:
            r = stage["result"]
            details = {
                "steps": r.get("global_step"),
                "train_pairs": r.get("train_pairs"),
                "val_pairs": r.get("val_pairs"),
                "train_loss": r.get("train_loss"),
                "eval_accuracy": r.get("eval_accuracy"),
            }
        text = json.dumps(details, default=str)
        text = text if len(text) < 400 else text[:400] + "…"
        lines.append(
            f"| {stage['stage']} | {stage.get('seconds', 0):.0f} | {usage.get('calls', 0)} | "
            f"{usage.get('total_tokens', 0)} | `{text}` |"
        )
    lines += ["", f"Total: {summary.get('seconds', 0):.0f} s, usage {json.dumps(summary.get('usage', {}))}", ""]
    if summary.get("one_step"):
        lines += [str(summary["one_step"]), ""]
    return "\n".join(lines)


__all__ = [
    "STAGES",
    "TrainPipeline",
    "TrainPipelineConfig",
    "load_train_config",
    "parse_train_config",
    "render_train_report",
]
