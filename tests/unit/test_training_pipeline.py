"""The training pipeline end to end with scripted models and a fake trainer: stages, files, iteration 2 with replay,
the before/after evaluation, resuming without new LLM calls, and refusing a changed config."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from personalens.errors import ConfigError
from personalens.llm.base import Usage
from personalens.llm.base import user as user_message
from personalens.llm.testing import ScriptedChatModel
from personalens.training.pipeline import TrainPipeline, load_train_config, parse_train_config

FILLER = " ".join(["The person weighs texture, effort and flavour with care."] * 3)
DOMAIN = "amazon_toys"


def _window(user: str, w: int) -> dict[str, Any]:
    return {"items": [f"{user} thing {w}-{j}" for j in range(3)], "ratings": [4.0, 4.0, 4.0]}


def _data(root: Path, n_train: int = 4, n_test: int = 3) -> Path:
    folder = root / DOMAIN
    folder.mkdir(parents=True)
    header = "id,item_type,split,dataset_name,source_url," + ",".join(f"windows_{i}" for i in range(5)) + "\n"
    rows = []
    for u in range(n_train):
        cells = ",".join('"' + repr(_window(f"t{u}", w)) + '"' for w in range(5))
        rows.append(f"t{u},toy,train,{DOMAIN},x,{cells}\n")
    (folder / "train_users.csv").write_text(header + "".join(rows))
    tests = []
    for u in range(n_test):
        obj: dict[str, Any] = {
            "id": f"h{u}",
            "iteration": 1,
            "item_type": "toy",
            "split": "eval",
            "dataset_name": DOMAIN,
        }
        for w in range(3):
            obj[f"I{w}"] = [f"h{u} thing {w}-{j}" for j in range(3)]
            obj[f"U{w}"] = [4, 4, 4]
        tests.append(json.dumps(obj) + "\n")
    (folder / "test_iteration_1.jsonl").write_text("".join(tests))
    return root


class LevelPredictor:
    """Predicts every item at the level the persona names ("level 3")."""

    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        level = float(re.search(r"level (\d+)", persona).group(1))
        return [level] * len(items), Usage(calls=1)


def _model(name: str, shift: int = 0) -> ScriptedChatModel:
    # greedy answers (seed 0) say level 1 (+ shift); sample k says level 1 + (k + shift) % 5
    return ScriptedChatModel(
        lambda r: f"Rates everything at level {1 + ((r.seed or 0) + shift) % 5}. {FILLER}", model_id=name
    )


@dataclass
class FakeResult:
    adapter_dir: str
    global_step: int = 1

    def to_dict(self):
        return {"adapter_dir": self.adapter_dir, "global_step": self.global_step, "train_pairs": 1}


class FakeTrainer:
    def __init__(self):
        self.calls: list[dict[str, Any]] = []

    def __call__(self, pairs_path, base_model, out_dir, config, *, init_adapter=None, on_log=None):
        rows = [json.loads(line) for line in Path(pairs_path).read_text().splitlines()]
        self.calls.append({"pairs": rows, "init_adapter": init_adapter, "out_dir": Path(out_dir), "config": config})
        adapter = Path(out_dir) / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_model.safetensors").write_bytes(b"weights")
        return FakeResult(str(adapter))


def _export(adapter: Path, base: Path, out: Path) -> None:
    out.write_bytes(b"gguf:" + Path(adapter).name.encode())


CONFIG = """
name = "toy"
iterations = 2
[data]
root = "data"
domains = ["amazon_toys"]
train_users_per_domain = 4
heldout_users_per_domain = 3
[sampling]
candidates = 5
min_words = 10
max_words = 80
[pairs]
margin_iteration2 = 0.8
replay_share = 0.5
[train]
max_steps = 1
lora_rank = 4
"""


def _pipeline(tmp_path: Path, trainer: FakeTrainer, models: dict[str, ScriptedChatModel], config_text: str = CONFIG):
    (tmp_path / "run.toml").write_text(config_text)
    _data(tmp_path / "data") if not (tmp_path / "data").exists() else None
    config = load_train_config(tmp_path / "run.toml")

    def model_for(adapter):
        key = "base" if adapter is None else adapter.parent.name
        return models.setdefault(key, _model(key, shift=1 if key != "base" else 0))

    base_gguf = tmp_path / "base.gguf"
    base_gguf.write_bytes(b"base")
    return TrainPipeline(
        config,
        tmp_path / "out",
        model_for=model_for,
        predictor=LevelPredictor(),
        base_model=base_gguf,
        base_gguf=base_gguf,
        trainer=trainer,
        exporter=_export,
    )


def test_the_pipeline_runs_both_iterations_and_compares_refiners(tmp_path):
    trainer, models = FakeTrainer(), {}
    summary = _pipeline(tmp_path, trainer, models).run()
    out = tmp_path / "out"
    for name in ("contexts.jsonl", "samples.jsonl", "pairs.jsonl", "adapter.gguf"):
        assert (out / "iter1" / name).is_file() and (out / "iter2" / name).is_file()
    stages = [s["stage"] for s in summary["stages"]]
    assert stages == [
        "contexts:iter1",
        "sampling:iter1",
        "pairs:iter1",
        "train:iter1",
        "evaluate:iter1",
        "contexts:iter2",
        "sampling:iter2",
        "pairs:iter2",
        "train:iter2",
        "evaluate",
    ]
    # iteration 1: pairs within contexts only, base-model samples; training starts from scratch
    first, second = trainer.calls
    assert first["init_adapter"] is None and second["init_adapter"] == out / "iter1" / "dpo" / "adapter"
    assert all(p["iteration"] == 1 and p["margin"] >= 0.5 for p in first["pairs"])
    for p in first["pairs"]:
        user = p["context_id"].split("/")[1]
        assert user in p["prompt"][0]["content"]  # the prompt is that context's own observation
    # iteration 2: new pairs (δ = 0.8) on step-1 and step-2 contexts, plus replayed iteration-1 pairs above 0.8
    new = [p for p in second["pairs"] if p["iteration"] == 2]
    replayed = [p for p in second["pairs"] if p["iteration"] == 1]
    assert new and all(p["margin"] >= 0.8 for p in new)
    assert {p["context_id"].rsplit("/", 1)[1] for p in new} == {"step1", "step2"}
    assert replayed and all(p["margin"] > 0.8 for p in replayed)
    assert len(replayed) == min(len(new), sum(p["margin"] > 0.8 for p in first["pairs"]))  # share 0.5
    # the iteration-1 model sampled iteration 2; the base model never did
    assert all(r.seed and r.seed > 1000 for r in models["iter1"].calls if r.temperature)
    # evaluation: every held-out user refined once by each refiner, all scored by the same predictor
    rows = [json.loads(line) for line in (out / "eval" / "one_step.jsonl").read_text().splitlines()]
    assert sorted({r["refiner"] for r in rows}) == ["base", "iteration 1", "iteration 2"]
    assert sorted({r["user"] for r in rows}) == ["h0", "h1", "h2"]
    assert "One-step refinement" in (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["adapters"]["iteration 2"]["gguf"].endswith("adapter.gguf")


def test_a_rerun_makes_no_llm_call_and_a_changed_config_is_refused(tmp_path):
    trainer, models = FakeTrainer(), {}
    _pipeline(tmp_path, trainer, models).run()
    calls = {k: len(m.calls) for k, m in models.items()}
    _pipeline(tmp_path, FakeTrainer(), models).run()
    assert {k: len(m.calls) for k, m in models.items()} == calls
    (tmp_path / "run.toml").write_text(CONFIG.replace("candidates = 5", "candidates = 6"))
    config = load_train_config(tmp_path / "run.toml")
    pipeline = _pipeline(tmp_path, FakeTrainer(), models)
    pipeline.config = config
    with pytest.raises(ConfigError, match="another configuration"):
        pipeline.run()


def test_a_setting_of_a_stage_not_yet_run_may_change_between_runs(tmp_path):
    trainer = FakeTrainer()
    _pipeline(tmp_path, trainer, {}).run(until="sampling")
    # the pair thresholds and iteration-2 M only shape later stages: changing them after sampling is accepted
    looser = CONFIG.replace("[pairs]", "[pairs]\npositive_min = 0.3\nmargin = 0.3").replace(
        "max_words = 80", "max_words = 80\ncandidates_iteration2 = 2"
    )
    summary = _pipeline(tmp_path, trainer, {}, looser).run(until="pairs")
    assert summary["stages"][-1]["stage"] == "pairs:iter1"
    stored = json.loads((tmp_path / "out" / "config.json").read_text())
    assert stored["pairs"]["positive_min"] == 0.3 and stored["candidates_iteration2"] == 2
    # once the pairs exist their thresholds are fixed, and the sampling settings were fixed from the start
    with pytest.raises(ConfigError, match=r"pairs \(fixed by iter1/pairs.jsonl\)"):
        _pipeline(tmp_path, trainer, {}, looser.replace("positive_min = 0.3", "positive_min = 0.4")).run(until="pairs")
    with pytest.raises(ConfigError, match=r"sampling \(fixed by iter1/contexts.jsonl\)"):
        _pipeline(tmp_path, trainer, {}, looser.replace("max_words = 80", "max_words = 90")).run(until="pairs")


def test_training_settings_may_change_until_the_first_checkpoint(tmp_path):
    trainer = FakeTrainer()
    _pipeline(tmp_path, trainer, {}).run(until="pairs")
    dpo = tmp_path / "out" / "iter1" / "dpo"
    # a DPO run stopped before its first checkpoint: its run.json and log fix nothing
    (dpo / "checkpoints").mkdir(parents=True)
    (dpo / "run.json").write_text("{}")
    (dpo / "train_log.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    faster = CONFIG.replace("max_steps = 1", "max_steps = 3")
    _pipeline(tmp_path, trainer, {}, faster).run(until="pairs")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["train"]["max_steps"] == 3
    # once a checkpoint is complete the run can be resumed, so its settings are fixed
    (dpo / "checkpoints" / "checkpoint-2").mkdir()
    (dpo / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"train \(fixed by iter1/dpo\)"):
        _pipeline(tmp_path, trainer, {}, faster.replace("max_steps = 3", "max_steps = 4")).run(until="pairs")


def test_iteration2_draws_its_own_number_of_candidates(tmp_path):
    fewer = CONFIG.replace("max_words = 80", "max_words = 80\ncandidates_iteration2 = 4")
    _pipeline(tmp_path, FakeTrainer(), {}, fewer).run(until="iteration2")
    rows = [json.loads(line) for line in (tmp_path / "out" / "iter2" / "samples.jsonl").read_text().splitlines()]
    assert rows and all(len(r["candidates"]) == 4 for r in rows)
    rows1 = [json.loads(line) for line in (tmp_path / "out" / "iter1" / "samples.jsonl").read_text().splitlines()]
    assert all(len(r["candidates"]) == 5 for r in rows1)
    with pytest.raises(ConfigError, match="candidates_iteration2"):
        parse_train_config({"data": {"root": "x", "domains": ["d"]}, "sampling": {"candidates_iteration2": 0}})


def test_until_stops_after_a_stage_so_training_can_run_elsewhere(tmp_path):
    trainer = FakeTrainer()
    summary = _pipeline(tmp_path, trainer, {}).run(until="pairs")
    assert [s["stage"] for s in summary["stages"]][-1] == "pairs:iter1" and not trainer.calls
    assert (tmp_path / "out" / "iter1" / "pairs.jsonl").is_file()
    summary = _pipeline(tmp_path, trainer, {}).run(until="train")
    assert len(trainer.calls) == 1 and not (tmp_path / "out" / "iter2").exists()
    with pytest.raises(ConfigError, match="until"):
        _pipeline(tmp_path, trainer, {}).run(until="nonsense")


def test_the_first_adapter_is_compared_before_iteration2_and_iteration2_reuses_its_s0(tmp_path):
    models: dict[str, ScriptedChatModel] = {}
    summary = _pipeline(tmp_path, FakeTrainer(), models).run(until="evaluate-iter1")
    out = tmp_path / "out"
    assert summary["stages"][-1]["stage"] == "evaluate:iter1" and not (out / "iter2").exists()
    rows = [json.loads(line) for line in (out / "eval" / "one_step.jsonl").read_text().splitlines()]
    assert sorted({r["refiner"] for r in rows}) == ["base", "iteration 1"] and len(rows) == 6
    assert "iteration 1" in (out / "eval" / "one_step.md").read_text()
    s0 = {r["user"]: r["initial"] for r in rows}
    initial_calls = len(models["base"].calls)
    # the scripted base model would write the same S0 again, so check that it is never asked to: after the first
    # comparison no base-model call sees a held-out user's window 0
    _pipeline(tmp_path, FakeTrainer(), models).run()
    rows = [json.loads(line) for line in (out / "eval" / "one_step.jsonl").read_text().splitlines()]
    later = [r for r in rows if r["refiner"] == "iteration 2"]
    assert len(later) == 3 and all(r["initial"] == s0[r["user"]] for r in later)
    assert not any(re.search(r"\bh\d thing 0-", str(c.messages)) for c in models["base"].calls[initial_calls:])


def test_one_iteration_ends_with_the_first_comparison(tmp_path):
    summary = _pipeline(tmp_path, FakeTrainer(), {}, CONFIG.replace("iterations = 2", "iterations = 1")).run()
    assert [s["stage"] for s in summary["stages"]][-2:] == ["train:iter1", "evaluate:iter1"]
    assert not (tmp_path / "out" / "iter2").exists()


def test_training_candidates_are_single_replies_of_the_policy(tmp_path):
    # a short candidate is asked for again in full, never stitched from two replies, and a copy is not re-asked
    short = "Rates everything at level 2."  # 5 words, under min_words = 10 but enough to extend
    model = ScriptedChatModel([short + " Likes toys.", short + " Likes toys a lot, truly, and often."])
    pipeline = _pipeline(tmp_path, FakeTrainer(), {})
    user = pipeline.train_users()[0]
    writer = pipeline.writer(model, user)
    out = writer.write([user_message("Describe the person.")], [], temperature=1.0)
    assert out.text == short + " Likes toys a lot, truly, and often." and out.attempts == 2
    assert "Write the complete profile again" in model.calls[1].messages[-1].content
    assert not writer.reask_unchanged


def test_config_errors_name_the_section_and_key():
    with pytest.raises(ConfigError, match=r"\[sampling\].*'candidatez'"):
        parse_train_config({"data": {"root": "x", "domains": ["d"]}, "sampling": {"candidatez": 3}})
    with pytest.raises(ConfigError, match="root and domains"):
        parse_train_config({"data": {"domains": []}})
    with pytest.raises(ConfigError, match="iterations"):
        parse_train_config({"iterations": 3, "data": {"root": "x", "domains": ["d"]}})
    with pytest.raises(ConfigError, match="lora_rank"):
        parse_train_config({"data": {"root": "x", "domains": ["d"]}, "train": {"lora_rank": 0}})


def test_iteration2_trains_with_its_own_overrides_and_they_may_change_until_it_starts(tmp_path):
    trainer = FakeTrainer()
    _pipeline(tmp_path, trainer, {}).run(until="evaluate-iter1")  # iteration 1 trained with [train] alone
    overridden = CONFIG + "[train.iteration2]\nmax_steps = 2\n"
    summary = _pipeline(tmp_path, trainer, {}, overridden).run()
    assert summary["config_changed"] == ["train_iteration2"]  # [train] itself did not change
    by_folder = {c["out_dir"].parent.name: c["config"] for c in trainer.calls}  # a rerun asks again for iter1
    first, second = by_folder["iter1"], by_folder["iter2"]
    assert (first.max_steps, second.max_steps) == (1, 2)
    assert second.lora_rank == first.lora_rank == 4  # the rest comes from [train]
    stored = json.loads((tmp_path / "out" / "config.json").read_text())
    assert stored["train_iteration2"]["max_steps"] == 2
    # once iteration 2 has trained (a result in iter2/dpo), its settings are fixed
    dpo2 = tmp_path / "out" / "iter2" / "dpo"
    (dpo2 / "result.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"train_iteration2 \(fixed by iter2/dpo\)"):
        _pipeline(tmp_path, trainer, {}, overridden.replace("max_steps = 2", "max_steps = 3")).run()


def test_a_training_setting_added_after_a_run_started_is_not_a_change(tmp_path):
    trainer = FakeTrainer()
    _pipeline(tmp_path, trainer, {}).run(until="train")
    (tmp_path / "out" / "iter1" / "dpo" / "result.json").write_text("{}")
    stamp = tmp_path / "out" / "config.json"
    stored = json.loads(stamp.read_text())
    del stored["train"]["final_adapter"]  # as written before the setting existed
    del stored["train_iteration2"]
    stamp.write_text(json.dumps(stored))
    summary = _pipeline(tmp_path, trainer, {}).run(until="train")
    assert "config_changed" not in summary


def test_a_run_sampled_before_redraws_and_cuts_resumes_only_with_the_old_rules(tmp_path):
    trainer = FakeTrainer()
    old_rules = "redraw_duplicates = 0\nrevised_only = false\ndrop_naming = false\n"
    legacy = CONFIG.replace("max_words = 80\n", "max_words = 80\n" + old_rules, 1)
    pipeline = _pipeline(tmp_path, trainer, {}, legacy)
    old_writer = pipeline.writer(ScriptedChatModel([]), _context_like())
    assert old_writer.revised_only is False and old_writer.drop_naming is False
    pipeline.run(until="sampling")
    stamp = tmp_path / "out" / "config.json"
    stored = json.loads(stamp.read_text())
    del stored["sampling"]["redraw_duplicates"]  # as written before the settings existed
    del stored["sampling"]["revised_only"]
    del stored["sampling"]["drop_naming"]
    stamp.write_text(json.dumps(stored))
    assert "config_changed" not in _pipeline(tmp_path, trainer, {}, legacy).run(until="sampling")
    stamp.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="sampling"):
        _pipeline(tmp_path, trainer, {}).run(until="sampling")  # the defaults would mix two sampling rules
    (tmp_path / "fresh").mkdir()
    new_writer = _pipeline(tmp_path / "fresh", trainer, {}).writer(ScriptedChatModel([]), _context_like())
    assert new_writer.revised_only and new_writer.drop_naming


def _context_like():
    from types import SimpleNamespace

    return SimpleNamespace(domain="movies", scale=(1.0, 5.0, 1.0))


def test_iteration2_overrides_are_checked_like_the_train_section():
    data = {"root": "x", "domains": ["d"]}
    with pytest.raises(ConfigError, match=r"\[train.iteration2\].*'max_stepz'"):
        parse_train_config({"data": data, "train": {"iteration2": {"max_stepz": 2}}})
    with pytest.raises(ConfigError, match="multiple of save_steps"):
        overrides = {"final_adapter": "best_eval_loss", "eval_steps": 5}
        parse_train_config({"data": data, "train": {"save_steps": 2, "iteration2": overrides}})
    config = parse_train_config({"data": data, "train": {"beta": 0.3}})
    assert config.train_iteration2 is None and config.to_dict()["train_iteration2"] is None


def test_the_comparison_writes_as_the_training_candidates_were_written(tmp_path):
    _pipeline(tmp_path, FakeTrainer(), {}).run(until="evaluate-iter1")
    rows = [json.loads(line) for line in (tmp_path / "out" / "eval" / "one_step.jsonl").read_text().splitlines()]
    assert rows and all(r["writer"]["short_answers"] == "rewrite" for r in rows)
    assert all(r["writer"]["reask_unchanged"] is False for r in rows)


def test_stages_that_walk_contexts_announce_how_many_for_the_progress_bar(tmp_path):
    events = []
    pipeline = _pipeline(tmp_path, FakeTrainer(), {})
    pipeline.emit = lambda kind, payload: events.append((kind, payload))
    pipeline.run(until="sampling")
    stages = {p["stage"]: p.get("total") for kind, p in events if kind == "stage"}
    walked = sum(kind == "context" for kind, p in events)
    assert stages["contexts:iter1"] == stages["sampling:iter1"] and walked == 2 * stages["sampling:iter1"] > 0
