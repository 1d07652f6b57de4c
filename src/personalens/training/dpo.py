"""DPO + SFT fine-tuning of the refiner with LoRA (DeePer §3.4, App. A.5 and B; the released LLaMA-Factory config).

The loss is DeePer's ``L = L_DPO(sigmoid, β) + α · L_SFT`` where ``L_SFT`` is the NLL of the chosen answer.
In LLaMA-Factory that is ``pref_loss: sigmoid`` + ``pref_ftx: 0.1``. In TRL 1.16 the old ``rpo_alpha`` is gone;
the same sum is ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1.0, α]``: ``DPOTrainer._compute_loss``
adds, per loss type, ``weight × per_sequence_loss.mean()``, and its ``"sft"`` term is
``-chosen_per_token_logps[chosen_completion_mask].mean()``, the token-mean NLL of the chosen completions
(prompt tokens masked). LLaMA-Factory averages the NLL per sequence first (``-chosen_logps / chosen_length``), then over
the batch; the two agree when the chosen answers of a micro-batch have equal lengths (always at batch size 1).

Other differences from the released run, all deliberate:

* CPU by default (``use_cpu``), float32 unless ``bf16`` turns on torch's autocast, and the base model may come from a
  GGUF file.
* Sequences longer than ``max_length`` keep their start (TRL ``keep_start``), and pairs whose prompt alone fills
  ``max_length`` are dropped by TRL; LLaMA-Factory's ``cutoff_len`` shortens prompt and answer in proportion.
* ``lora_dropout`` 0.2 is kept in the adapter config but, as in LLaMA-Factory's DPO trainer (which calls
  ``disable_dropout_in_model``), dropout is switched off during DPO (``disable_dropout``).
* ``warmup_ratio`` may replace ``warmup_steps`` (250 steps is longer than a small run).
* Iteration 2 (``init_adapter``) keeps training the iteration-1 adapter. With ``reference="base"`` (the default, as
  LLaMA-Factory does for LoRA) the DPO reference is the base model with the adapter switched off; with
  ``reference="init_adapter"`` the reference is a frozen copy of the iteration-1 adapter (TRL's behaviour for a
  pre-trained adapter).

torch, transformers, trl, peft, datasets and accelerate are optional (``pip install 'personalens[train]'``) and
imported only inside the functions that need them, so ``personalens`` imports without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personalens._files import sha256_file
from personalens.data._validate import bad_type, iter_jsonl
from personalens.errors import BackendUnavailable, ConfigError, DataError

INSTALL_HINT = "pip install 'personalens[train]'  (exact pins: pip install -r requirements/train.txt)"
RUN_FILE = "run.json"
RESULT_FILE = "result.json"
LOG_FILE = "train_log.jsonl"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

OnLog = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DPOTrainConfig:
    """Training settings. The defaults are DeePer's released LLaMA-Factory config (reference-code.md §3.4).

    ``lora_target="all-linear"`` is LLaMA-Factory's ``lora_target: all`` (every linear layer but the output head).
    ``sft_weight`` is ``pref_ftx`` (TRL: the weight of the ``"sft"`` loss next to ``"sigmoid"``).
    ``max_length`` is ``cutoff_len``. ``val_share`` is ``val_size``, split by context (see :func:`split_pairs`).
    ``warmup_ratio`` (in [0, 1)), when set, replaces ``warmup_steps``. ``max_steps`` > 0 overrides the epochs.
    ``final_adapter="best_eval_loss"`` saves the checkpoint with the lowest validation loss as the run's adapter
    instead of the last one (LLaMA-Factory leaves ``load_best_model_at_end`` off, hence ``"last"``); it needs
    validation pairs, checkpoints at every evaluation (``eval_steps`` a multiple of ``save_steps``) and all of
    them kept (``save_total_limit`` None).
    """

    # LoRA
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.2
    lora_target: str | tuple[str, ...] = "all-linear"
    # preference loss
    beta: float = 0.2
    loss_type: str = "sigmoid"
    sft_weight: float = 0.1
    reference: Literal["base", "init_adapter"] = "base"
    # optimisation
    learning_rate: float = 5e-6
    num_train_epochs: float = 4.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 250
    warmup_ratio: float | None = None
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    per_device_eval_batch_size: int = 4
    max_steps: int = -1
    # data
    max_length: int = 2048
    val_share: float = 0.1
    # bookkeeping
    eval_steps: int = 100
    save_steps: int = 100
    logging_steps: int = 5
    save_total_limit: int | None = None
    final_adapter: Literal["last", "best_eval_loss"] = "last"
    seed: int = 0
    # runtime
    use_cpu: bool = True
    # mixed precision: on a GPU as DeePer's released run; on a CPU with bf16 instructions (AVX512-BF16, AMX) torch's
    # bf16 autocast is faster than float32 (benchmarks/deeper/train-small.toml); without them it can be slower
    bf16: bool = False
    gradient_checkpointing: bool = True
    disable_dropout: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.lora_target, list):
            object.__setattr__(self, "lora_target", tuple(self.lora_target))
        positive_ints = (
            "lora_rank",
            "lora_alpha",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "per_device_eval_batch_size",
            "max_length",
            "eval_steps",
            "save_steps",
            "logging_steps",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DPOTrainConfig.{name} must be a positive integer, not {value!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"DPOTrainConfig.lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        if not isinstance(self.lora_target, str | tuple) or not self.lora_target:
            raise ValueError(
                f"DPOTrainConfig.lora_target must be 'all-linear' or module names, not {self.lora_target!r}"
            )
        if self.beta <= 0:
            raise ValueError(f"DPOTrainConfig.beta must be > 0, not {self.beta!r}")
        if self.sft_weight < 0:
            raise ValueError(f"DPOTrainConfig.sft_weight must be >= 0, not {self.sft_weight!r}")
        if self.reference not in ("base", "init_adapter"):
            raise ValueError(f"DPOTrainConfig.reference must be 'base' or 'init_adapter', not {self.reference!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"DPOTrainConfig.learning_rate must be > 0, not {self.learning_rate!r}")
        if self.num_train_epochs <= 0:
            raise ValueError(f"DPOTrainConfig.num_train_epochs must be > 0, not {self.num_train_epochs!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"DPOTrainConfig.warmup_steps must be an integer >= 0, not {self.warmup_steps!r}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"DPOTrainConfig.warmup_ratio must be in [0, 1) or None, not {self.warmup_ratio!r}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"DPOTrainConfig.max_grad_norm must be > 0, not {self.max_grad_norm!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps == 0:
            raise ValueError(f"DPOTrainConfig.max_steps must be -1 (by epochs) or > 0, not {self.max_steps!r}")
        if self.max_steps < -1:
            raise ValueError(f"DPOTrainConfig.max_steps must be -1 (by epochs) or > 0, not {self.max_steps!r}")
        if not 0 <= self.val_share < 1:
            raise ValueError(f"DPOTrainConfig.val_share must be in [0, 1), not {self.val_share!r}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"DPOTrainConfig.save_total_limit must be >= 1 or None, not {self.save_total_limit!r}")
        if self.final_adapter not in ("last", "best_eval_loss"):
            raise ValueError(
                f"DPOTrainConfig.final_adapter must be 'last' or 'best_eval_loss', not {self.final_adapter!r}"
            )
        if self.final_adapter == "best_eval_loss":
            if self.val_share == 0:
                raise ValueError("DPOTrainConfig.final_adapter='best_eval_loss' needs validation pairs (val_share > 0)")
            if self.eval_steps % self.save_steps:
                raise ValueError(
                    "DPOTrainConfig.final_adapter='best_eval_loss' needs a checkpoint at every evaluation: eval_steps "
                    f"({self.eval_steps}) must be a multiple of save_steps ({self.save_steps})"
                )
            if self.save_total_limit is not None:
                raise ValueError(
                    "DPOTrainConfig.final_adapter='best_eval_loss' needs every checkpoint kept (save_total_limit None)"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DPOTrainConfig:
        """A config from a mapping (e.g. a parsed TOML/JSON file); an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"unknown DPO training setting {key!r}; known settings: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists); ``from_dict(to_dict())`` gives an equal config."""
        out = dataclasses.asdict(self)
        if isinstance(out["lora_target"], tuple):
            out["lora_target"] = list(out["lora_target"])
        return out

    def replace(self, **changes: Any) -> DPOTrainConfig:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------- pairs


def _check_messages(value: Any, path: Path, line: int, name: str) -> None:
    if not isinstance(value, list) or not value:
        raise bad_type(value, "a string or a non-empty list of chat messages", path, line, name)
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise bad_type(message, "a chat message object", path, line, where)
        for key in ("role", "content"):
            if key not in message:
                raise DataError(
                    f"missing key; keys present: {sorted(message)}", path=path, line=line, field=f"{where}.{key}"
                )
            if not isinstance(message[key], str):
                raise bad_type(message[key], "a string", path, line, f"{where}.{key}")


def load_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Preference pairs from a TRL-style JSONL file, one object per line.

    ``prompt``, ``chosen`` and ``rejected`` are required: either all strings (TRL's standard format) or all chat
    message lists (TRL's conversational format, as :mod:`personalens.training.pairs` writes). Other fields
    (``context_id``, ``chosen_reward``, ``rejected_reward``, ``iteration``, …) are kept. A bad line raises
    :class:`~personalens.errors.DataError` naming the file, the line and the field; so does an empty file.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    first_format: tuple[str, int] | None = None
    for line, obj in iter_jsonl(path):
        kinds = set()
        for name in REQUIRED_FIELDS:
            if name not in obj:
                raise DataError(f"missing key; keys present: {sorted(obj)}", path=path, line=line, field=name)
            value = obj[name]
            if isinstance(value, str):
                if not value.strip():
                    raise DataError("empty text", path=path, line=line, field=name)
                kinds.add("standard")
            elif name == "prompt" or isinstance(value, list):
                _check_messages(value, path, line, name)
                kinds.add("conversational")
            else:
                raise bad_type(value, "a string", path, line, name)
        if len(kinds) > 1:
            raise DataError(
                "prompt, chosen and rejected mix plain strings and chat messages", path=path, line=line, field="prompt"
            )
        kind = kinds.pop()
        if first_format is None:
            first_format = (kind, line)
        elif kind != first_format[0]:
            raise DataError(
                f"{kind} pair in a file of {first_format[0]} pairs (line {first_format[1]})",
                path=path,
                line=line,
                field="prompt",
            )
        if obj["chosen"] == obj["rejected"]:
            raise DataError("chosen and rejected are the same answer", path=path, line=line, field="rejected")
        if "context_id" in obj:
            cid = obj["context_id"]
            if isinstance(cid, bool) or not isinstance(cid, str | int):
                raise bad_type(cid, "a string or an integer", path, line, "context_id")
        rows.append(obj)
    if not rows:
        raise DataError("no preference pairs", path=path)
    return rows


def split_pairs(
    rows: Sequence[Mapping[str, Any]], val_share: float, seed: int
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(train, validation), split by context: rows with the same ``context_id`` land on the same side, so validation
    never scores a context the model trained on. Rows without a ``context_id`` are groups of one.

    Groups are shuffled with ``seed`` and moved to validation until it holds at least ``val_share`` of the rows,
    but never all groups (training keeps at least one). Both sides keep the input order. ``val_share=0`` (or a
    single group) gives an empty validation side.
    """
    if not 0 <= val_share < 1:
        raise ValueError(f"val_share must be in [0, 1), not {val_share!r}")
    groups: dict[tuple[str, str], list[int]] = {}
    for index, row in enumerate(rows):
        cid = row.get("context_id")
        key = ("row", str(index)) if cid is None else ("context", str(cid))
        groups.setdefault(key, []).append(index)
    target = round(val_share * len(rows))
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    val_index: set[int] = set()
    for key in keys[:-1]:  # the last group always trains
        if len(val_index) >= target:
            break
        val_index.update(groups[key])
    train = [row for i, row in enumerate(rows) if i not in val_index]
    val = [row for i, row in enumerate(rows) if i in val_index]
    return train, val


# --------------------------------------------------------------------------------------------------- backend


def _require_backend() -> None:
    """Raise :class:`BackendUnavailable` with the install command when a training package is missing.

    Only looks the packages up (no import), so the check is cheap; the callers import them afterwards.
    """
    missing = [m for m in ("torch", "transformers", "trl", "peft", "datasets", "accelerate") if _find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"DPO training needs {', '.join(missing)}: {INSTALL_HINT}")


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No network for the duration: the Hub's offline and no-telemetry switches, restored afterwards.

    ``huggingface_hub`` reads its switches once, when first imported; if it already was, its constants are
    switched too (and restored), so neither a download nor TRL's usage ping can leave the machine.
    """
    saved_env = {key: os.environ.get(key) for key in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    constants = sys.modules.get("huggingface_hub.constants")
    saved_constants: dict[str, Any] = {}
    if constants is not None:
        for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            if hasattr(constants, name):
                saved_constants[name] = getattr(constants, name)
                setattr(constants, name, True)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if constants is not None:
            for name, value in saved_constants.items():
                setattr(constants, name, value)


def _resolve_model_path(path: str | Path, gguf_file: str | None) -> tuple[Path, str | None]:
    path = Path(path)
    if gguf_file is None and path.is_file() and path.suffix.lower() == ".gguf":
        return path.parent, path.name
    if not path.is_dir():
        raise ConfigError(f"base model not found: {path} (a local model directory or a .gguf file)")
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise ConfigError(f"GGUF file not found: {path / gguf_file}")
    return path, gguf_file


def load_base_model(path: str | Path, *, gguf_file: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local Hugging Face directory, or from a GGUF file, in float32, without network.

    ``path`` may be the directory (with ``gguf_file`` naming the file in it) or the ``.gguf`` file itself. GGUF
    weights are dequantized by transformers; the "quantized with GGUF" flag it leaves on the model (which makes
    ``Trainer`` refuse to train) is then removed with ``model.hf_quantizer.remove_quantization_config(model)``.
    """
    _require_backend()
    directory, gguf_name = _resolve_model_path(path, gguf_file)
    with _offline():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf_name is not None:
            kwargs["gguf_file"] = gguf_name
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------- results


@dataclass
class DPOTrainResult:
    """What one :func:`train_dpo` call did. ``steps_run`` counts optimizer steps run by this call (0 when the run
    was already complete); ``global_step`` is where the run stands. ``train_loss`` is the last logged training loss;
    ``eval_loss``/``eval_accuracy`` (``eval_rewards/accuracies``) are the validation figures of the saved
    adapter: the final evaluation's, or with ``final_adapter="best_eval_loss"`` those of ``selected_step``.
    ``train_pairs``/``val_pairs`` count the split; ``dropped_too_long`` counts the pairs TRL left out because their
    prompt alone fills ``max_length``."""

    out_dir: str
    adapter_dir: str
    steps_run: int
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    seconds: float
    train_pairs: int
    val_pairs: int
    dropped_too_long: int = 0
    resumed_from_step: int | None = None
    already_complete: bool = False
    selected_step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------- run state


def _adapter_weights_file(directory: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"no LoRA adapter (adapter_model.safetensors) in {directory}")


def _run_identity(
    config: DPOTrainConfig, pairs_path: Path, base_model: str | Path, gguf_file: str | None, init_adapter: Path | None
) -> dict[str, Any]:
    directory, gguf_name = _resolve_model_path(base_model, gguf_file)
    return {
        "config": config.to_dict(),
        "pairs_sha256": sha256_file(pairs_path),
        "base_model": {"path": str(directory.resolve()), "gguf_file": gguf_name},
        "init_adapter_sha256": None if init_adapter is None else sha256_file(_adapter_weights_file(init_adapter)),
    }


def config_defaults() -> dict[str, Any]:
    """Every setting's default as ``to_dict`` writes it: a run stored before a setting existed ran with its default."""
    return DPOTrainConfig().to_dict()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    defaults = config_defaults()
    for key in sorted(set(old) | set(new)):
        if key == "config":
            a, b = {**defaults, **(old.get(key) or {})}, {**defaults, **(new.get(key) or {})}
            out += [
                f"config.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            ]
        elif old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def _latest_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint (``trainer_state.json`` is written last, so a half-saved one is skipped)."""
    if not directory.is_dir():
        return None
    found = []
    for child in directory.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    if not found:
        return None
    step, path = max(found)
    return path, step


def run_started(out_dir: str | Path) -> bool:
    """Whether a DPO run in ``out_dir`` has anything to resume or keep: a complete checkpoint, a result or an adapter.
    A run stopped before its first checkpoint has not, and may be restarted with other settings."""
    out_dir = Path(out_dir)
    if (out_dir / RESULT_FILE).exists() or (out_dir / ADAPTER_DIR).is_dir():
        return True
    return _latest_checkpoint(out_dir / CHECKPOINT_DIR) is not None


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines past ``last_step`` (they are logged again when the resumed run passes those steps)."""
    if not path.exists():
        return
    kept = []
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.strip():
            continue
        try:
            step = json.loads(text).get("step", 0)
        except json.JSONDecodeError:
            continue
        if isinstance(step, int) and step <= last_step:
            kept.append(text)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _prepare_out_dir(out_dir: Path, identity: dict[str, Any]) -> None:
    run_file = out_dir / RUN_FILE
    if run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        diffs = _differences(old, identity)
        if diffs and not run_started(out_dir):
            # a run that stopped before its first checkpoint left nothing to mix up: start it afresh
            (out_dir / LOG_FILE).unlink(missing_ok=True)
            _write_json(run_file, identity)
        elif diffs:
            raise ConfigError(
                f"{out_dir} holds a DPO run with other settings or data, so it cannot be resumed; "
                f"use a new out_dir or remove this one. Differences: {'; '.join(diffs)}"
            )
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty and holds no {RUN_FILE}; refusing to train into it")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, identity)


# --------------------------------------------------------------------------------------------------- training


def _to_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _lora_config(config: DPOTrainConfig, init_adapter: Path | None) -> Any:
    from peft import LoraConfig

    if init_adapter is None:
        target = config.lora_target if isinstance(config.lora_target, str) else list(config.lora_target)
        return LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=target,
            bias="none",
            task_type="CAUSAL_LM",
        )
    saved = LoraConfig.from_pretrained(str(init_adapter))
    if saved.r != config.lora_rank or saved.lora_alpha != config.lora_alpha:
        raise ConfigError(
            f"the adapter in {init_adapter} has rank {saved.r} and alpha {saved.lora_alpha}, "
            f"but the config asks for rank {config.lora_rank} and alpha {config.lora_alpha}"
        )
    saved.lora_dropout = config.lora_dropout
    saved.inference_mode = False
    return saved


def _dpo_args(config: DPOTrainConfig, checkpoints: Path, has_val: bool) -> Any:
    from trl import DPOConfig

    warmup: float = config.warmup_steps if config.warmup_ratio is None else config.warmup_ratio
    return DPOConfig(
        output_dir=str(checkpoints),
        # DeePer's loss: sigmoid DPO + sft_weight × NLL(chosen)
        beta=config.beta,
        loss_type=[config.loss_type, "sft"] if config.sft_weight > 0 else [config.loss_type],
        loss_weights=[1.0, config.sft_weight] if config.sft_weight > 0 else [1.0],
        max_length=config.max_length,
        disable_dropout=config.disable_dropout,
        # optimisation
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=warmup,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # transformers 5.23 renamed gradient_checkpointing; the old name would still work but warns
        activation_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        data_seed=config.seed,
        # bookkeeping
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy="steps" if has_val else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        # runtime: float32 unless bf16 autocast, no trackers, no progress bars (progress goes to on_log)
        use_cpu=config.use_cpu,
        bf16=config.bf16,
        fp16=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def _dataset(rows: Sequence[Mapping[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{name: row[name] for name in REQUIRED_FIELDS} for row in rows])


def train_dpo(
    pairs_path: str | Path,
    base_model: str | Path,
    out_dir: str | Path,
    config: DPOTrainConfig | None = None,
    *,
    gguf_file: str | None = None,
    init_adapter: str | Path | None = None,
    on_log: OnLog | None = None,
) -> DPOTrainResult:
    """LoRA DPO (+ SFT on the chosen answers) of ``base_model`` on the pairs in ``pairs_path``.

    ``out_dir`` receives ``run.json`` (the config, the pairs file's sha256, the base model and the initial
    adapter's sha256), ``checkpoints/checkpoint-N``, ``train_log.jsonl`` (every log TRL reports: ``loss``,
    ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``, …, plus ``step`` and
    ``epoch``), the final adapter in ``adapter/`` and ``result.json``.

    Resumable: a later call with the same config, pairs file, base model and initial adapter continues from the
    newest checkpoint (or returns at once when the run finished); anything different raises
    :class:`~personalens.errors.ConfigError` rather than mixing two runs. ``init_adapter`` continues training an
    earlier adapter (DeePer's iteration 2 starts from the iteration-1 adapter). ``on_log`` gets each log dict.
    """
    config = config or DPOTrainConfig()
    started = time.monotonic()
    pairs_path = Path(pairs_path)
    out_dir = Path(out_dir)
    adapter_from = None if init_adapter is None else Path(init_adapter)
    rows = load_pairs(pairs_path)
    identity = _run_identity(config, pairs_path, base_model, gguf_file, adapter_from)
    _prepare_out_dir(out_dir, identity)
    result_file = out_dir / RESULT_FILE
    if result_file.exists() and (out_dir / ADAPTER_DIR).is_dir():
        stored = json.loads(result_file.read_text(encoding="utf-8"))
        stored.update(steps_run=0, already_complete=True, seconds=time.monotonic() - started)
        return DPOTrainResult(**stored)
    _require_backend()

    train_rows, val_rows = split_pairs(rows, config.val_share, config.seed)
    checkpoints = out_dir / CHECKPOINT_DIR
    latest = _latest_checkpoint(checkpoints)
    log_path = out_dir / LOG_FILE
    _truncate_log(log_path, latest[1] if latest else 0)

    with _offline():
        return _train(
            config=config,
            base_model=base_model,
            gguf_file=gguf_file,
            init_adapter=adapter_from,
            train_rows=train_rows,
            val_rows=val_rows,
            out_dir=out_dir,
            checkpoints=checkpoints,
            latest=latest,
            log_path=log_path,
            on_log=on_log,
            started=started,
        )


def _train(
    *,
    config: DPOTrainConfig,
    base_model: str | Path,
    gguf_file: str | None,
    init_adapter: Path | None,
    train_rows: Sequence[Mapping[str, Any]],
    val_rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    checkpoints: Path,
    latest: tuple[Path, int] | None,
    log_path: Path,
    on_log: OnLog | None,
    started: float,
) -> DPOTrainResult:
    from peft import PeftModel
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOTrainer
    from trl.data_utils import is_conversational

    model, tokenizer = load_base_model(base_model, gguf_file=gguf_file)
    if is_conversational(dict(train_rows[0])) and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the pairs are chat messages but the base model's tokenizer has no chat template; "
            "write the pairs as plain strings or use a model with a chat template"
        )

    peft_config = None
    load_into_fresh = False
    if init_adapter is not None and config.reference == "init_adapter":
        # TRL copies the loaded adapter as a frozen "ref" adapter and uses it as the DPO reference.
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        # A fresh adapter; with init_adapter its weights are loaded below, and the reference stays the base model
        # (the adapter switched off), as in LLaMA-Factory's LoRA DPO.
        peft_config = _lora_config(config, init_adapter)
        load_into_fresh = init_adapter is not None

    class _LogToFile(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            entry = {"step": int(state.global_step), "epoch": state.epoch, **(logs or {})}
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, default=str) + "\n")
            if on_log is not None:
                on_log(dict(entry))

    trainer: Any = DPOTrainer(
        model=model,
        args=_dpo_args(config, checkpoints, has_val=bool(val_rows)),
        train_dataset=_dataset(train_rows),
        eval_dataset=_dataset(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_LogToFile()],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to train_log.jsonl and on_log, not stdout
    # TRL drops pairs whose prompt alone fills max_length (nothing of the answer would be left to learn from)
    kept_train = len(trainer.train_dataset)
    kept_val = len(trainer.eval_dataset) if val_rows else 0
    if kept_train == 0:
        raise ConfigError(
            f"every training pair's prompt is at least max_length={config.max_length} tokens long; raise max_length"
        )
    if val_rows and kept_val == 0:
        raise ConfigError(
            f"every validation pair's prompt is at least max_length={config.max_length} tokens long; raise max_length"
        )
    if load_into_fresh:
        assert init_adapter is not None
        _load_adapter_into(trainer.model, init_adapter)

    start_step = latest[1] if latest else 0
    output = trainer.train(resume_from_checkpoint=str(latest[0]) if latest else None)
    global_step = int(trainer.state.global_step)

    metrics: dict[str, Any] = {k: v for k, v in output.metrics.items() if _to_float(v) is not None}
    eval_loss = eval_accuracy = None
    selected_step = None
    if val_rows:
        # Trainer evaluates at the last step when eval_strategy="steps"; evaluate only if that did not happen.
        done = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == global_step]
        evaluation = done[-1] if done else {**trainer.evaluate(), "step": global_step}
        metrics.update({k: v for k, v in evaluation.items() if k != "step" and _to_float(v) is not None})
        if config.final_adapter == "best_eval_loss":
            evaluations = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") != global_step]
            evaluation = best_evaluation([*evaluations, evaluation])
            selected_step = int(evaluation["step"])
            if selected_step != global_step:
                best = checkpoints / f"checkpoint-{selected_step}"
                if not best.is_dir():
                    raise ConfigError(f"the best evaluation's checkpoint {best} is missing; it cannot be the adapter")
                _load_adapter_into(trainer.model, best)
        eval_loss = _to_float(evaluation.get("eval_loss"))
        eval_accuracy = _to_float(evaluation.get("eval_rewards/accuracies"))

    adapter_dir = out_dir / ADAPTER_DIR
    trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"])
    tokenizer.save_pretrained(str(adapter_dir))

    train_losses = [e.get("loss") for e in trainer.state.log_history if "loss" in e]
    result = DPOTrainResult(
        out_dir=str(out_dir),
        adapter_dir=str(adapter_dir),
        steps_run=global_step - start_step,
        global_step=global_step,
        train_loss=_to_float(train_losses[-1]) if train_losses else None,
        eval_loss=eval_loss,
        eval_accuracy=eval_accuracy,
        seconds=time.monotonic() - started,
        train_pairs=len(train_rows),
        val_pairs=len(val_rows),
        dropped_too_long=len(train_rows) - kept_train + len(val_rows) - kept_val,
        resumed_from_step=latest[1] if latest else None,
        selected_step=selected_step,
        metrics=metrics,
    )
    _write_json(out_dir / RESULT_FILE, result.to_dict())
    return result


def best_evaluation(evaluations: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The evaluation log with the lowest ``eval_loss``; of equal losses the earliest step (less training)."""
    scored = [e for e in evaluations if _to_float(e.get("eval_loss")) is not None and isinstance(e.get("step"), int)]
    if not scored:
        raise ValueError("no evaluation with an eval_loss and a step to choose from")
    return min(scored, key=lambda e: (float(e["eval_loss"]), int(e["step"])))


def _load_adapter_into(model: Any, directory: Path) -> None:
    """Put the LoRA weights saved in ``directory`` into the trained adapter of ``model`` (a frozen reference
    adapter, if any, is kept)."""
    from peft import load_peft_weights, set_peft_model_state_dict

    loaded = set_peft_model_state_dict(model, load_peft_weights(str(directory), device="cpu"))
    unexpected = list(getattr(loaded, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError(f"the adapter in {directory} does not fit the model: {unexpected[:5]}")


# --------------------------------------------------------------------------------------------------- adapters


def load_adapter_weights(adapter_dir: str | Path) -> dict[str, Any]:
    """The LoRA tensors of a saved adapter as numpy arrays, by name (needs only ``safetensors`` and numpy)."""
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise BackendUnavailable(f"reading adapters needs safetensors: {INSTALL_HINT}") from exc
    path = _adapter_weights_file(Path(adapter_dir))
    if path.suffix != ".safetensors":
        raise ConfigError(f"only safetensors adapters can be read: {path}")
    return dict(load_file(str(path)))


def adapter_weight_delta(adapter_dir_a: str | Path, adapter_dir_b: str | Path) -> float:
    """The largest absolute difference between the LoRA weights of two adapters with the same tensors."""
    import numpy as np

    a, b = load_adapter_weights(adapter_dir_a), load_adapter_weights(adapter_dir_b)
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))[:5]
        raise ConfigError(f"the adapters hold different tensors, e.g. {only}")
    return max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a), default=0.0)


__all__ = [
    "DPOTrainConfig",
    "DPOTrainResult",
    "adapter_weight_delta",
    "best_evaluation",
    "config_defaults",
    "load_adapter_weights",
    "load_base_model",
    "load_pairs",
    "run_started",
    "split_pairs",
    "train_dpo",
]
