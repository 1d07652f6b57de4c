"""A LoRA adapter trained with PEFT, converted to a llama.cpp LoRA GGUF, gives llama.cpp the same next-token
distribution as transformers gives with the adapter (on a tiny fp32 llama GGUF both can load).

The llama architecture is the demanding case: its GGUF stores q/k rows per head in the rotary layout, so the
converter must permute ``lora_B`` of q_proj/k_proj; grouped-query attention (4 heads, 2 kv heads) checks that k uses
the kv head count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("xllamacpp")

from _tiny_gguf import write_tiny_gguf  # noqa: E402

from personalens.errors import ConfigError  # noqa: E402
from personalens.training.dpo import load_base_model  # noqa: E402
from personalens.training.export import adapter_to_gguf  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT_IDS = [3 + b for b in b"the user loves quiet films"]  # byte tokens of the tiny vocabulary


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def _hf_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def _llama_logprobs(gguf_path: Path, lora: Path | None, ids, vocab: int) -> dict[int, float]:
    """Top next-token log-probabilities from llama.cpp (its server's completion endpoint, raw token ids)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path)
    params.n_ctx = 128
    params.n_parallel = 1
    params.warmup = False
    params.verbosity = -1
    params.cpuparams.n_threads = 1
    if lora is not None:
        info = xllamacpp.CommonAdapterLoraInfo()
        info.path = str(lora)
        info.scale = 1.0
        params.lora_adapters = [info]
    server = xllamacpp.Server(params)
    # the server withholds a token that is half a UTF-8 character (and its probabilities): bias the *sampled* token
    # to printable ASCII; the reported log-probabilities are computed from the raw logits, before any bias
    banned = [i for i in range(vocab) if not 3 + 32 <= i < 3 + 127]
    body = {
        "prompt": list(ids),
        "n_predict": 1,
        "n_probs": 20,
        "temperature": 0.0,
        "logit_bias": [[i, False] for i in banned],
    }
    data = server.handle_completions(body)
    assert isinstance(data, dict) and data.get("choices") and data["choices"][0].get("logprobs"), data
    probs = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {int(p["id"]): float(p["logprob"]) for p in probs}


def _strong_adapter(model, out: Path) -> Path:
    """A rank-4 LoRA on every linear layer with large random A and B (a trained adapter's effect, exaggerated)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(out))
    return out


def test_converted_adapter_reproduces_the_peft_model_in_llama_cpp(tmp_path):
    base = write_tiny_gguf(tmp_path / "tiny.gguf", heads=4, kv_heads=2, std=0.2)
    model, _ = load_base_model(base)
    model.eval()
    base_lp = _hf_logprobs(model, PROMPT_IDS)
    adapter_dir = _strong_adapter(model, tmp_path / "adapter")
    model.eval()
    adapted_lp = _hf_logprobs(model, PROMPT_IDS)  # the PEFT model wraps `model` in place: adapter active

    exported = adapter_to_gguf(adapter_dir, base, tmp_path / "adapter.gguf")
    assert exported.architecture == "llama" and exported.rank == 4 and exported.alpha == 8.0
    assert exported.tensors == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert len(exported.sha256) == 64

    vocab = base_lp.shape[0]
    plain = _llama_logprobs(base, None, PROMPT_IDS, vocab)
    with_lora = _llama_logprobs(base, exported.path, PROMPT_IDS, vocab)

    def gap(llama: dict[int, float], hf: np.ndarray) -> float:
        return max(abs(lp - hf[i]) for i, lp in llama.items())

    # llama.cpp without the adapter matches transformers without it; with it, transformers with it
    assert gap(plain, base_lp) < 0.02
    assert gap(with_lora, adapted_lp) < 0.02
    # and the adapter matters far more than the conversion error
    assert float(np.max(np.abs(adapted_lp - base_lp))) > 0.5
    assert gap(with_lora, base_lp) > 0.25


def test_conversion_refuses_what_it_cannot_express(tmp_path):
    base = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, _ = load_base_model(base)
    adapter_dir = _strong_adapter(model, tmp_path / "adapter")
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match="DoRA"):
        adapter_to_gguf(adapter_dir, base, tmp_path / "x.gguf")
    config_path.write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with pytest.raises(ConfigError, match="modules_to_save"):
        adapter_to_gguf(adapter_dir, base, tmp_path / "x.gguf")
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="base GGUF not found"):
        adapter_to_gguf(adapter_dir, tmp_path / "missing.gguf", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_the_embedded_model_loads_a_converted_adapter_and_names_it(tmp_path):
    from personalens.llm.base import ChatRequest, Message
    from personalens.llm.embedded import LlamaCppModel

    base = write_tiny_gguf(tmp_path / "tiny.gguf", std=0.2)
    model, _ = load_base_model(base)
    exported = adapter_to_gguf(_strong_adapter(model, tmp_path / "adapter"), base, tmp_path / "adapter.gguf")
    plain = LlamaCppModel(base, n_ctx=128, n_threads=1)
    adapted = LlamaCppModel(base, n_ctx=128, n_threads=1, lora=[(exported.path, 1.0)])
    assert adapted.model_id == f"{plain.model_id}+lora:{exported.sha256[:16]}*1"  # never shares cached answers
    request = ChatRequest((Message("user", "the user loves"),), max_tokens=3, temperature=0.0)
    try:
        answers = [m.chat(request).text for m in (plain, adapted)]
    finally:
        plain.close()
        adapted.close()
    assert all(isinstance(a, str) for a in answers)
    with pytest.raises(Exception, match="LoRA adapter not found"):
        LlamaCppModel(base, lora=[tmp_path / "missing.gguf"])
