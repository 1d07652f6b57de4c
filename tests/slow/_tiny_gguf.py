"""A tiny llama-architecture GGUF (2 layers, width 32, fp32) written with the `gguf` package, for slow tests that
need a real GGUF file both transformers and llama.cpp can load in a second."""

from __future__ import annotations

from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def write_tiny_gguf(
    path: Path,
    *,
    chat_template: str = CHAT_TEMPLATE,
    seed: int = 0,
    heads: int = 2,
    kv_heads: int | None = None,
    std: float = 0.02,
) -> Path:
    """A 2-layer llama GGUF (fp32 tensors) with a byte-level BPE vocabulary, written with the `gguf` package."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hidden, inter, layers = 32, 64, 2
    kv_heads = kv_heads or heads
    spelling = bytes_to_unicode()
    tokens = ["<unk>", "<|end|>", "<pad>"] + [spelling[b] for b in range(256)] + ["lo", "ve"]
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["l o", "v e"])
    writer.add_unk_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(2)
    writer.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        value = rng.standard_normal(shape) * std if len(shape) > 1 else np.ones(shape)
        writer.add_tensor(name, value.astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("output_norm.weight", hidden)
    tensor("output.weight", len(tokens), hidden)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        kv_width = hidden // heads * kv_heads
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_width, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_width, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_up.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, inter)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
