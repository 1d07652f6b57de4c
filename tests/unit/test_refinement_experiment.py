"""The multi-round dynamic experiment on DeePer-format files the test writes: every method per user, resumable."""

from __future__ import annotations

import json
import re

import pytest

from personalens.errors import ConfigError
from personalens.llm.base import Usage
from personalens.llm.testing import ScriptedChatModel
from personalens.refinement.experiment import (
    DynamicExperiment,
    load_dynamic_config,
    read_dynamic_rows,
    summarise,
)

FILLER = " ".join(["The person weighs story, pace and tone with care."] * 3)


class LevelPredictor:
    def config(self):
        return {"predictor": "level"}

    def predict(self, persona, items, *, domain, scale):
        level = float(re.search(r"level (\d+)", persona).group(1))
        return [level] * len(items), Usage(calls=1)


def _write_domain(root, name="movielens_20m", users=("a", "b", "c"), rounds=2):
    d = root / name
    d.mkdir(parents=True)
    for k in range(1, rounds + 1):
        lines = []
        for u in users:
            obj = {"id": u, "iteration": k, "item_type": "movie", "split": "eval", "dataset_name": name}
            for j in (k - 1, k, k + 1):
                obj[f"I{j}"] = [f"{u}-w{j}-x", f"{u}-w{j}-y"]
                obj[f"U{j}"] = [float(1 + j), float(1 + j)]
            lines.append(json.dumps(obj))
        (d / f"test_iteration_{k}.jsonl").write_text("\n".join(lines) + "\n")


def _config(tmp_path, extra=""):
    _write_domain(tmp_path / "deeper")
    path = tmp_path / "dyn.toml"
    path.write_text(
        'name = "toy"\n[data]\nroot = "deeper"\ndomains = ["movielens_20m"]\nusers_per_domain = 2\nrounds = 2\n'
        '[refine]\nstrategies = ["refine", "inc_update"]\nverified = ["refine"]\ncandidates = 2\n'
        "min_words = 10\nmax_words = 80\n" + extra
    )
    return load_dynamic_config(path)


def _model():
    counter = iter(range(10_000))
    return ScriptedChatModel(lambda request: f"Rates at level {1 + next(counter) % 5}. {FILLER}")


def test_every_method_runs_per_sampled_user_and_a_rerun_skips_them(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "out"
    summary = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    assert summary.rows_written == 2 * 3 and not summary.failures
    rows = read_dynamic_rows(out / "rows.jsonl")
    assert {r["method"] for r in rows} == {"refine", "inc_update", "verified-refine"}
    assert len({r["user"] for r in rows}) == 2 and all(len(r["rounds"]) == 2 for r in rows)
    again = DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    assert again.rows_written == 0 and again.rows_skipped == 6
    table = summarise(rows)["movielens_20m"]
    keys = {f"{a}_{w}" for a in ("before", "after") for w in ("previous", "current", "future")}
    for entry in table.values():
        assert entry["users"] == 2 and len(entry["future_mae_by_round"]) == 3 and set(entry["round1"]) == keys
    verified = [x for r in rows if r["method"] == "verified-refine" for x in r["rounds"]]
    assert all(x["gate"] is not None for x in verified)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'strategy'"):
        _config(tmp_path, 'strategy = "refine"\n')
    (tmp_path / "bad.toml").write_text('[data]\nroot = "x"\n')
    with pytest.raises(ConfigError, match="root and domains are required"):
        load_dynamic_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('[data]\nroot = "x"\ndomains = ["d"]\n[refine]\nstrategies = ["rewrite"]\n')
    with pytest.raises(ConfigError, match="unknown strategy"):
        load_dynamic_config(tmp_path / "bad2.toml")


def test_report_shows_the_paper_layouts(tmp_path):
    from personalens.refinement.experiment import write_dynamic_report

    config = _config(tmp_path)
    out = tmp_path / "out"
    DynamicExperiment(config, out, model=_model(), predictor=LevelPredictor()).run()
    paths = write_dynamic_report(out)
    text = paths["markdown"].read_text()
    assert "Future-window MAE per round" in text and "| verified-refine | 2 |" in text
    assert "Round 1: MAE before → after" in text and "Persona length" in text
    assert json.loads(paths["json"].read_text())["movielens_20m"]["refine"]["users"] == 2
