"""Use a trained refiner in the embedded runtime: convert a PEFT LoRA adapter into a llama.cpp LoRA GGUF.

llama.cpp applies a LoRA adapter given as a GGUF file whose tensors are named after the base model's GGUF tensors
with ``.lora_a`` / ``.lora_b`` appended (``blk.3.attn_q.weight.lora_a``), with ``general.type = adapter``,
``adapter.type = lora`` and ``adapter.lora.alpha``; it scales ``B·A`` by ``alpha / rank`` (times the scale the user
asks for at load time). This module writes exactly that from PEFT's ``adapter_model.safetensors`` with the ``gguf``
package, reading the architecture and layer count from the base GGUF so tensor names follow the base file.

Two details of the Hugging Face → GGUF weight layout carry over to the adapter:

* llama-family GGUFs store the query and key projections with their rows interleaved per head (the rotary layout
  llama.cpp uses); the same row permutation is applied to ``lora_B`` of ``q_proj``/``k_proj`` (``lora_A`` acts on
  the input side and is unchanged). Qwen2 keeps the Hugging Face layout and needs no permutation.
* rank-stabilised LoRA (scale ``alpha / sqrt(r)``) is written with ``alpha · sqrt(r)`` so that llama.cpp's
  ``alpha / r`` gives the same scale.

Anything the converter cannot express faithfully (DoRA, trained embeddings or heads, per-module ranks or alphas,
a module with no GGUF counterpart) is refused with an error rather than silently dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalens._files import sha256_file
from personalens.errors import BackendUnavailable, ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_PERMUTED_ARCHS = {"llama", "mistral", "granite"}  # GGUF q/k rows interleaved per head (rotary layout)


@dataclass(frozen=True, slots=True)
class ExportedAdapter:
    path: Path
    architecture: str
    rank: int
    alpha: float
    tensors: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "architecture": self.architecture,
            "rank": self.rank,
            "alpha": self.alpha,
            "tensors": self.tensors,
            "sha256": self.sha256,
        }


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(
            "converting an adapter needs the `gguf` package: pip install 'personalens[train]'"
        ) from exc
    return gguf


def _base_metadata(base_gguf: Path) -> tuple[str, int, int, int]:
    """(architecture, block count, head count, kv head count) of a GGUF model file."""
    gguf = _gguf()
    if not base_gguf.is_file():
        raise ConfigError(f"base GGUF not found: {base_gguf}")
    reader = gguf.GGUFReader(str(base_gguf), "r")

    def value(key: str) -> Any:
        field = reader.get_field(key)
        if field is None:
            raise ConfigError(f"{base_gguf}: no {key!r} in the GGUF metadata")
        return field.contents()

    arch = str(value("general.architecture"))
    blocks = int(value(f"{arch}.block_count"))
    heads = int(value(f"{arch}.attention.head_count"))
    kv_field = reader.get_field(f"{arch}.attention.head_count_kv")
    kv_heads = int(kv_field.contents()) if kv_field is not None else heads
    return arch, blocks, heads, kv_heads


def _read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    config_path = adapter_dir / ADAPTER_CONFIG
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    for p in (config_path, weights_path):
        if not p.is_file():
            raise ConfigError(f"not a PEFT LoRA adapter directory: {p} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path}: not JSON ({exc})") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_dora"):
        raise ConfigError(f"{config_path}: DoRA adapters cannot be expressed as a llama.cpp LoRA")
    if config.get("modules_to_save"):
        raise ConfigError(
            f"{config_path}: modules_to_save {config['modules_to_save']} (full weights) cannot be exported"
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(f"{config_path}: per-module ranks or alphas are not supported by this converter")
    from safetensors.numpy import load_file

    return config, load_file(str(weights_path))


def _permute_rows(weight: Any, n_head: int) -> Any:
    """Interleave each head's rows the way llama-family GGUFs store q/k projections (rows = output features)."""
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise ConfigError(f"cannot permute {rows} rows over {n_head} heads")
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def adapter_to_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path) -> ExportedAdapter:
    """Write the llama.cpp LoRA GGUF of the PEFT adapter in ``adapter_dir`` for the model ``base_gguf``.

    The file is written next to ``out_path`` and renamed into place, so a reader never sees half a file.
    """
    import numpy as np

    gguf = _gguf()
    adapter_dir, base_gguf, out_path = Path(adapter_dir), Path(base_gguf), Path(out_path)
    config, weights = _read_adapter(adapter_dir)
    arch, blocks, heads, kv_heads = _base_metadata(base_gguf)
    arch_enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_enum is None:
        raise ConfigError(f"{base_gguf}: architecture {arch!r} is unknown to gguf {getattr(gguf, '__version__', '')}")
    names = gguf.get_tensor_name_map(arch_enum, blocks)
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)

    modules: dict[str, dict[str, Any]] = {}
    for key, tensor in weights.items():
        name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0]
                modules.setdefault(module, {})[part] = tensor
                break
        else:
            raise ConfigError(f"{adapter_dir / ADAPTER_WEIGHTS}: tensor {key!r} is not a LoRA A/B matrix")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type("adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    count = 0
    for module in sorted(modules):
        pair = modules[module]
        if set(pair) != {"lora_A", "lora_B"}:
            raise ConfigError(f"{adapter_dir / ADAPTER_WEIGHTS}: {module} has {sorted(pair)}, needs lora_A and lora_B")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise ConfigError(f"{adapter_dir}: module {module!r} has no tensor in a {arch} GGUF")
        a = np.ascontiguousarray(pair["lora_A"], dtype=np.float32)  # (r, in)
        b = np.ascontiguousarray(pair["lora_B"], dtype=np.float32)  # (out, r)
        if a.shape[0] != rank or b.shape[1] != rank:
            raise ConfigError(f"{adapter_dir}: {module} has rank {a.shape[0]}/{b.shape[1]}, the config says {rank}")
        if arch in _PERMUTED_ARCHS and module.endswith("self_attn.q_proj"):
            b = np.ascontiguousarray(_permute_rows(b, heads))
        elif arch in _PERMUTED_ARCHS and module.endswith("self_attn.k_proj"):
            b = np.ascontiguousarray(_permute_rows(b, kv_heads))
        writer.add_tensor(f"{target}.lora_a", a)
        writer.add_tensor(f"{target}.lora_b", b)
        count += 1
    if not count:
        raise ConfigError(f"{adapter_dir / ADAPTER_WEIGHTS}: no LoRA tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    digest = sha256_file(out_path)
    return ExportedAdapter(out_path, arch, rank, alpha, count, digest)


__all__ = ["ExportedAdapter", "adapter_to_gguf"]
