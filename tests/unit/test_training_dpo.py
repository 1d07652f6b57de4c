"""DPO training backend: config (DeePer's released settings), pairs loading, the context split, run bookkeeping.

None of these need torch; the real (tiny) DPO run is in tests/slow/test_training_dpo_slow.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from personalens.errors import ConfigError, DataError
from personalens.training.dpo import DPOTrainConfig, best_evaluation, load_pairs, split_pairs, train_dpo


def _pair(i: int, context: str | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": f"refine persona {i}", "chosen": f"better {i}", "rejected": f"worse {i}"}
    if context is not None:
        row["context_id"] = context
    row.update(extra)
    return row


def _write(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_are_deepers_released_settings():
    c = DPOTrainConfig()
    assert (c.lora_rank, c.lora_alpha, c.lora_dropout, c.lora_target) == (16, 32, 0.2, "all-linear")
    assert (c.beta, c.loss_type, c.sft_weight) == (0.2, "sigmoid", 0.1)
    assert (c.learning_rate, c.num_train_epochs, c.lr_scheduler_type) == (5e-6, 4.0, "cosine")
    assert (c.warmup_steps, c.warmup_ratio, c.max_grad_norm) == (250, None, 1.0)
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps, c.per_device_eval_batch_size) == (4, 8, 4)
    assert (c.max_length, c.val_share) == (2048, 0.1)
    assert (c.eval_steps, c.save_steps, c.logging_steps, c.seed, c.max_steps) == (100, 100, 5, 0, -1)
    assert c.optim == "adamw_torch" and c.reference == "base"


def test_config_round_trips_through_a_dict():
    c = DPOTrainConfig(lora_target=["q_proj", "v_proj"], max_steps=3, warmup_ratio=0.1)
    assert c.lora_target == ("q_proj", "v_proj")
    data = c.to_dict()
    assert data["lora_target"] == ["q_proj", "v_proj"]
    assert json.loads(json.dumps(data)) == data
    assert DPOTrainConfig.from_dict(data) == c


def test_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match="'pref_ftx'"):
        DPOTrainConfig.from_dict({"beta": 0.2, "pref_ftx": 0.1})


@pytest.mark.parametrize(
    "changes",
    [
        {"val_share": 1.0},
        {"warmup_ratio": 1.5},
        {"lora_rank": 0},
        {"max_steps": 0},
        {"sft_weight": -0.1},
        {"reference": "previous"},
        {"per_device_train_batch_size": 2.5},
        {"final_adapter": "best"},
        {"final_adapter": "best_eval_loss", "val_share": 0.0},
        {"final_adapter": "best_eval_loss", "eval_steps": 5, "save_steps": 2},
        {"final_adapter": "best_eval_loss", "eval_steps": 4, "save_steps": 2, "save_total_limit": 3},
    ],
)
def test_config_rejects_bad_values(changes):
    with pytest.raises(ValueError):
        DPOTrainConfig(**changes)


def test_best_eval_loss_needs_a_checkpoint_at_every_evaluation():
    config = DPOTrainConfig(final_adapter="best_eval_loss", eval_steps=6, save_steps=2)
    assert config.to_dict()["final_adapter"] == "best_eval_loss"
    with pytest.raises(ValueError, match="multiple of save_steps"):
        config.replace(eval_steps=5)


def test_best_evaluation_takes_the_lowest_loss_and_the_earlier_of_a_tie():
    logs = [
        {"step": 10, "eval_loss": 0.568, "eval_rewards/accuracies": 0.6},
        {"step": 20, "eval_loss": 0.591},
        {"step": 5, "loss": 0.1},  # a training log, no eval_loss
    ]
    assert best_evaluation(logs)["step"] == 10
    assert best_evaluation([{"step": 4, "eval_loss": 0.5}, {"step": 2, "eval_loss": 0.5}])["step"] == 2
    with pytest.raises(ValueError, match="no evaluation"):
        best_evaluation([{"step": 1, "loss": 0.3}])


# ---------------------------------------------------------------------------------------------- pairs


def test_load_pairs_keeps_extra_fields(tmp_path):
    rows = [_pair(1, "c1", chosen_reward=0.9, rejected_reward=-0.2, iteration=1), _pair(2)]
    loaded = load_pairs(_write(tmp_path / "pairs.jsonl", rows))
    assert loaded == rows


def test_load_pairs_accepts_conversational_rows(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "You refine personas."}, {"role": "user", "content": "refine it"}],
        "chosen": [{"role": "assistant", "content": "better"}],
        "rejected": [{"role": "assistant", "content": "worse"}],
        "context_id": "u1:1",
    }
    assert load_pairs(_write(tmp_path / "pairs.jsonl", [row])) == [row]


def _data_error(path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_pairs(path)
    return info.value


def test_load_pairs_missing_chosen_names_file_line_and_field(tmp_path):
    bad = _pair(2)
    del bad["chosen"]
    path = _write(tmp_path / "pairs.jsonl", [_pair(1), bad])
    error = _data_error(path)
    assert (error.path, error.line, error.field) == (str(path), 2, "chosen")
    assert "pairs.jsonl:2" in str(error) and "'chosen'" in str(error)


def test_load_pairs_non_string_rejected(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [_pair(1), _pair(2), _pair(3, rejected=42)])
    error = _data_error(path)
    assert (error.line, error.field) == (3, "rejected")
    assert "int" in str(error)


def test_load_pairs_bad_json_line(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [_pair(1), '{"prompt": "x", "chosen": '])
    error = _data_error(path)
    assert error.line == 2 and error.path == str(path)
    assert "malformed JSON" in str(error)


def test_load_pairs_empty_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("", encoding="utf-8")
    error = _data_error(path)
    assert error.path == str(path)
    assert "empty" in str(error)


def test_load_pairs_missing_file(tmp_path):
    assert "not found" in str(_data_error(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "prompt"),
        ({"prompt": [{"role": "user"}], "chosen": [], "rejected": []}, "prompt[0].content"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "context_id": [1]}, "context_id"),
    ],
)
def test_load_pairs_rejects_malformed_rows(tmp_path, row, field):
    error = _data_error(_write(tmp_path / "pairs.jsonl", [row]))
    assert (error.line, error.field) == (1, field)


def test_load_pairs_rejects_mixed_formats(tmp_path):
    chat = {
        "prompt": [{"role": "user", "content": "p"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    error = _data_error(_write(tmp_path / "pairs.jsonl", [_pair(1), chat]))
    assert error.line == 2 and "line 1" in str(error)


# ---------------------------------------------------------------------------------------------- split


def _rows_by_context(n_contexts: int, per_context: int) -> list[dict[str, Any]]:
    return [_pair(c * per_context + k, f"ctx{c}") for c in range(n_contexts) for k in range(per_context)]


def test_split_keeps_each_context_on_one_side():
    rows = _rows_by_context(20, 3) + [_pair(100 + i) for i in range(10)]  # 10 rows without a context
    train, val = split_pairs(rows, 0.1, seed=0)
    assert len(train) + len(val) == len(rows)
    train_ctx = {r["context_id"] for r in train if "context_id" in r}
    val_ctx = {r["context_id"] for r in val if "context_id" in r}
    assert not train_ctx & val_ctx
    for c in val_ctx:  # a validation context brings all its rows
        assert sum(r.get("context_id") == c for r in val) == 3
    assert 7 <= len(val) <= 9  # ~10% of 70 rows, whole groups
    # input order is kept on both sides
    assert [rows.index(r) for r in train] == sorted(rows.index(r) for r in train)
    assert [rows.index(r) for r in val] == sorted(rows.index(r) for r in val)


def test_split_is_seeded():
    rows = _rows_by_context(30, 2)
    first = split_pairs(rows, 0.2, seed=7)
    assert split_pairs(rows, 0.2, seed=7) == first
    others = {tuple(r["context_id"] for r in split_pairs(rows, 0.2, seed=s)[1]) for s in range(5)}
    assert len(others) > 1


def test_split_edge_cases():
    rows = _rows_by_context(4, 2)
    assert split_pairs(rows, 0.0, seed=0) == (rows, [])
    one_group = _rows_by_context(1, 5)
    assert split_pairs(one_group, 0.5, seed=0) == (one_group, [])  # training keeps at least one group
    train, val = split_pairs(rows, 0.9, seed=0)
    assert train and val
    with pytest.raises(ValueError):
        split_pairs(rows, 1.0, seed=0)


# ---------------------------------------------------------------------------------------------- run bookkeeping


def test_package_imports_without_the_training_backend():
    code = (
        "import sys, personalens, personalens.training.dpo\n"
        "bad = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_refuses_a_non_empty_out_dir_without_run_file(tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", [_pair(1)])
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no run.json"):
        train_dpo(pairs, tmp_path / "model", out, DPOTrainConfig())


def test_train_refuses_to_resume_a_run_with_other_settings(tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", [_pair(1)])
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps(
            {
                "config": DPOTrainConfig(beta=0.1).to_dict(),
                "pairs_sha256": "0" * 64,
                "base_model": {"path": str((tmp_path / "model").resolve()), "gguf_file": None},
                "init_adapter_sha256": None,
            }
        )
    )
    checkpoint = out / "checkpoints" / "checkpoint-100"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError) as info:
        train_dpo(pairs, tmp_path / "model", out, DPOTrainConfig())
    assert "config.beta: 0.1 -> 0.2" in str(info.value) and "pairs_sha256" in str(info.value)


def test_a_run_stored_before_a_setting_existed_resumes_with_its_default(tmp_path, monkeypatch):
    """Iteration 1 of a real run was trained before ``final_adapter`` existed; its run.json lacks the key, and the
    run must stay finished rather than count as another configuration."""
    import personalens.training.dpo as dpo

    pairs = _write(tmp_path / "pairs.jsonl", [_pair(1)])
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    stored = DPOTrainConfig().to_dict()
    del stored["final_adapter"]
    identity = dpo._run_identity(DPOTrainConfig(), pairs, tmp_path / "model", None, None)
    (out / "run.json").write_text(json.dumps({**identity, "config": stored}))
    checkpoint = out / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    monkeypatch.setattr(dpo, "_find_spec", lambda name: None)  # stop right after the out_dir checks
    with pytest.raises(dpo.BackendUnavailable):
        train_dpo(pairs, tmp_path / "model", out, DPOTrainConfig())
    # a non-default value of the new setting is a real change
    with pytest.raises(ConfigError, match="config.final_adapter: 'last' -> 'best_eval_loss'"):
        train_dpo(pairs, tmp_path / "model", out, DPOTrainConfig(final_adapter="best_eval_loss"))


def test_a_run_that_never_reached_a_checkpoint_restarts_with_new_settings(tmp_path, monkeypatch):
    import personalens.training.dpo as dpo

    pairs = _write(tmp_path / "pairs.jsonl", [_pair(1)])
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": DPOTrainConfig(beta=0.1).to_dict(), "pairs_sha256": "0"}))
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    monkeypatch.setattr(dpo, "_find_spec", lambda name: None)  # stop right after the out_dir checks
    with pytest.raises(dpo.BackendUnavailable):
        train_dpo(pairs, tmp_path / "model", out, DPOTrainConfig())
    assert json.loads((out / "run.json").read_text())["config"]["beta"] == 0.2
    assert not (out / "train_log.jsonl").exists()


def test_train_reports_a_missing_base_model(tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", [_pair(1)])
    with pytest.raises(ConfigError, match="base model not found"):
        train_dpo(pairs, tmp_path / "no-model", tmp_path / "out", DPOTrainConfig())


def test_missing_backend_names_the_pip_command(tmp_path, monkeypatch):
    from personalens.errors import BackendUnavailable
    from personalens.training.dpo import load_base_model

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"trl: pip install 'personalens\[train\]'"):
        load_base_model(tmp_path)
