"""Real DPO + SFT runs (TRL + PEFT LoRA, CPU) on a tiny Llama-shaped model the test builds itself.

The model has 2 layers of width 32 and a word-level tokenizer over the test's own words, so each run is a few
seconds. Nothing is downloaded: the Hub is switched off for every test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from _tiny_gguf import write_tiny_gguf  # noqa: E402

from personalens.errors import ConfigError  # noqa: E402
from personalens.training.dpo import (  # noqa: E402
    DPOTrainConfig,
    adapter_weight_delta,
    load_adapter_weights,
    load_base_model,
    split_pairs,
    train_dpo,
)

pytestmark = pytest.mark.slow

SPECIAL = ["<unk>", "<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
CHOSEN_WORDS = 7  # every chosen answer has this many words, so per-sequence and token-mean NLL agree
GENRES = ["science", "fiction", "action", "drama", "comedy", "horror", "thriller", "romance"]


def _pairs(n: int = 8) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        liked = GENRES[i % 4]
        disliked = GENRES[4 + i % 4]
        chosen = f"user loves {liked} films and rates them"  # 7 words
        rejected = f"user loves {disliked} films"
        prompt = f"persona likes {liked} films observed ratings {liked} high {disliked} low refine the persona"
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": "you refine personas"},
                    {"role": "user", "content": prompt},
                ],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "context_id": f"user{i // 2}:1",
                "chosen_reward": 0.8,
                "rejected_reward": -0.1,
                "iteration": 1,
            }
        )
    assert all(len(r["chosen"][0]["content"].split()) == CHOSEN_WORDS for r in rows)
    return rows


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": r["prompt"][-1]["content"] + " ",
            "chosen": r["chosen"][0]["content"],
            "rejected": r["rejected"][0]["content"],
            "context_id": r["context_id"],
        }
        for r in rows
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _texts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        for key in ("prompt", "chosen", "rejected"):
            value = r[key]
            out += [m["content"] for m in value] if isinstance(value, list) else [value]
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with a word-level tokenizer (and a chat template), saved like a local HF model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for text in _texts(_pairs()) for w in text.split()})
    vocab = {token: i for i, token in enumerate(SPECIAL + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<|end|>"],
        bos_token_id=None,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _config(**changes: Any) -> DPOTrainConfig:
    base = {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_steps": 1,
        "warmup_steps": 0,
        "learning_rate": 1e-3,
        "max_length": 64,
        "val_share": 0.25,
    }
    base.update(changes)
    return DPOTrainConfig(**base)


def _log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_load_base_model_from_a_local_directory(tiny_model):
    model, tokenizer = load_base_model(tiny_model)
    assert next(model.parameters()).dtype.is_floating_point
    assert str(next(model.parameters()).dtype) == "torch.float32"
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_dpo_run_trains_logs_and_finishes_once(tiny_model, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    out = tmp_path / "run"
    seen: list[dict[str, Any]] = []
    config = _config()
    result = train_dpo(pairs, tiny_model, out, config, on_log=seen.append)

    assert (result.steps_run, result.global_step, result.already_complete) == (2, 2, False)
    assert (result.train_pairs, result.val_pairs) == (6, 2)  # the split is by context: 4 contexts of 2 pairs
    assert result.train_loss is not None and math.isfinite(result.train_loss)
    assert result.eval_loss is not None and result.eval_accuracy is not None
    adapter = Path(result.adapter_dir)
    assert adapter == out / "adapter" and (adapter / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["lora_dropout"]) == (16, 32, 0.2)
    targets = {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]}  # "all-linear", expanded
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    # LoRA B starts at zero in PEFT; after two steps it is not zero any more
    weights = load_adapter_weights(adapter)
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and max(float(abs(w).max()) for w in lora_b) > 0

    log = _log(out)
    train_steps = [e for e in log if "loss" in e]
    assert [e["step"] for e in train_steps] == [1, 2]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert all(key in e for e in train_steps)
    assert any("eval_loss" in e for e in log)
    assert [e for e in seen if "loss" in e] == train_steps

    # The SFT term: at step 1 the policy is the reference (B = 0), so the sigmoid DPO loss is log 2 and the rest is
    # sft_weight × the token-mean NLL of the chosen answers (each CHOSEN_WORDS words + the end-of-turn token).
    first = train_steps[0]
    assert first["rewards/margins"] == 0.0
    nll = -first["logps/chosen"] / (CHOSEN_WORDS + 1)
    assert first["loss"] == pytest.approx(math.log(2) + config.sft_weight * nll, rel=1e-4)

    run = json.loads((out / "run.json").read_text())
    assert run["config"] == config.to_dict() and len(run["pairs_sha256"]) == 64

    # the same call again: already complete, nothing re-run
    again = train_dpo(pairs, tiny_model, out, config)
    assert (again.already_complete, again.steps_run, again.global_step) == (True, 0, 2)
    assert again.train_loss == result.train_loss
    assert len(_log(out)) == len(log)

    # another config (or other pairs) on the same out_dir is refused
    with pytest.raises(ConfigError, match="config.beta"):
        train_dpo(pairs, tiny_model, out, _config(beta=0.1))
    other_pairs = _write_jsonl(tmp_path / "other.jsonl", _pairs(6))
    with pytest.raises(ConfigError, match="pairs_sha256"):
        train_dpo(other_pairs, tiny_model, out, config)


def test_best_eval_loss_saves_the_checkpoint_with_the_lowest_validation_loss(tiny_model, tmp_path):
    rows = _pairs()
    config = _config(max_steps=4, eval_steps=1, save_steps=1, final_adapter="best_eval_loss")
    # The validation pairs prefer the opposite of what training teaches, so their loss rises as training goes on and
    # the best evaluation is an early one, not the last.
    _, val = split_pairs(rows, config.val_share, config.seed)
    flipped = {id(r) for r in val}
    rows = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} if id(r) in flipped else r for r in rows]
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    result = train_dpo(pairs, tiny_model, out, config)

    evaluations = {e["step"]: e["eval_loss"] for e in _log(out) if "eval_loss" in e}
    assert sorted(evaluations) == [1, 2, 3, 4]
    best = min(evaluations, key=lambda step: (evaluations[step], step))
    assert result.selected_step == best < result.global_step == 4
    assert result.eval_loss == pytest.approx(evaluations[best])
    checkpoints = out / "checkpoints"
    assert adapter_weight_delta(result.adapter_dir, checkpoints / f"checkpoint-{best}") == 0
    assert adapter_weight_delta(result.adapter_dir, checkpoints / "checkpoint-4") > 0
    assert json.loads((out / "result.json").read_text())["selected_step"] == best


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _plain(_pairs()))  # plain-string pairs (TRL adds the EOS)
    out = tmp_path / "run"
    config = _config(val_share=0.0)

    def crash_at_step_2(entry: dict[str, Any]) -> None:
        if entry["step"] == 2 and "loss" in entry:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train_dpo(pairs, tiny_model, out, config, on_log=crash_at_step_2)
    assert (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (out / "adapter").exists()

    result = train_dpo(pairs, tiny_model, out, config)
    assert (result.resumed_from_step, result.steps_run, result.global_step) == (1, 1, 2)
    assert result.eval_loss is None and result.val_pairs == 0
    assert [e["step"] for e in _log(out) if "loss" in e] == [1, 2]  # the step-2 line of the killed run is gone
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_iteration_two_continues_from_the_iteration_one_adapter(tiny_model, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    first = train_dpo(pairs, tiny_model, tmp_path / "iter1", _config(val_share=0.0))
    init = Path(first.adapter_dir)

    # reference = the base model (LLaMA-Factory's LoRA DPO): the loaded adapter already differs from it at step 1
    second = train_dpo(pairs, tiny_model, tmp_path / "iter2", _config(val_share=0.0, max_steps=1), init_adapter=init)
    step1 = next(e for e in _log(tmp_path / "iter2") if "loss" in e)
    assert step1["rewards/chosen"] != 0.0
    assert 0 < adapter_weight_delta(init, second.adapter_dir) < 0.01  # one small step away from the init adapter
    assert json.loads((tmp_path / "iter2" / "run.json").read_text())["init_adapter_sha256"]

    # reference = a frozen copy of the iteration-1 adapter: policy and reference agree at step 1; the run is killed
    # at step 2 and resumed, which reloads both the trained and the frozen reference adapter from the checkpoint
    def crash_at_step_2(entry: dict[str, Any]) -> None:
        if entry["step"] == 2 and "loss" in entry:
            raise KeyboardInterrupt("simulated kill")

    ref_config = _config(val_share=0.0, reference="init_adapter")
    out = tmp_path / "iter2-ref"
    with pytest.raises(KeyboardInterrupt):
        train_dpo(pairs, tiny_model, out, ref_config, init_adapter=init, on_log=crash_at_step_2)
    resumed = train_dpo(pairs, tiny_model, out, ref_config, init_adapter=init)
    assert (resumed.resumed_from_step, resumed.steps_run) == (1, 1)
    step1 = next(e for e in _log(out) if "loss" in e)
    assert step1["rewards/chosen"] == 0.0 and step1["rewards/margins"] == 0.0
    assert not (out / "adapter" / "ref").exists()  # only the trained adapter is saved
    assert adapter_weight_delta(init, resumed.adapter_dir) > 0


def test_an_adapter_of_another_rank_is_refused(tiny_model, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    first = train_dpo(pairs, tiny_model, tmp_path / "r8", _config(val_share=0.0, max_steps=1, lora_rank=8))
    with pytest.raises(ConfigError, match="rank 8"):
        train_dpo(
            pairs, tiny_model, tmp_path / "r16", _config(val_share=0.0, max_steps=1), init_adapter=first.adapter_dir
        )


def test_a_gguf_base_model_loads_unquantized_and_trains(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=CHAT_TEMPLATE)
    model, tokenizer = load_base_model(gguf_path)  # the .gguf path itself, or (directory, gguf_file=name)
    # transformers marks a GGUF model as quantized (GgufHfQuantizer) even though the weights are fp32; that flag
    # makes Trainer refuse to train, so load_base_model removes it
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert str(next(model.parameters()).dtype) == "torch.float32"
    assert tokenizer.chat_template == CHAT_TEMPLATE

    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(4))
    with pytest.raises(ConfigError, match="raise max_length"):  # byte-level tokens: every prompt is > 64 tokens
        train_dpo(pairs, tmp_path, tmp_path / "short", _config(val_share=0.0, max_steps=1), gguf_file=gguf_path.name)
    config = _config(val_share=0.0, max_steps=1, max_length=512)
    result = train_dpo(pairs, tmp_path, tmp_path / "run", config, gguf_file=gguf_path.name)
    assert result.steps_run == 1 and (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["base_model"]["gguf_file"] == "tiny.gguf"
