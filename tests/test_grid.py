"""The micro-reproduction grid: config, run plan, per-template ASR, claim verdicts, and the --quick grid end to end."""

import json
import re
from pathlib import Path

import pytest

from procon.errors import InputError
from procon.grid import JAILBREAK_TEMPLATES, load_grid_config, planned_runs

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "micro_repro.yaml"


def test_full_config_plans_key_rows_over_every_seed():
    config = load_grid_config(str(CONFIG))
    plan = planned_runs(config)
    # 10 rows. vanilla, safeinstr and procon_wu_safe run 3 seeds in the attack scenario and
    # seed 0 in the benign one. The 7 others run once, in the attack scenario.
    assert len(plan) == 3 * 3 + 3 + 7
    assert ("attack", "procon_wu_safe", 2) in {(s, r.name, seed) for s, r, seed in plan}


def test_quick_section_selects_rows_and_replaces_fields():
    config = load_grid_config(str(CONFIG), quick=True)
    assert [run.name for run in config.runs] == ["vanilla", "safeinstr", "procon_s_a0.1", "procon_wu_safe",
                                                  "procon_wu_safe_last"]
    assert config.epochs == 2
    assert config.out == "runs/micro_repro_quick"


def _write(tmp_path, text):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return str(path)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(InputError, match="unknown field 'epoch'"):
        load_grid_config(_write(tmp_path, "epoch: 3\nruns: [{name: a}]\n"))
    with pytest.raises(InputError, match=r"runs\[1\] \(a\): unknown field 'alfa'"):
        load_grid_config(_write(tmp_path, "runs: [{name: a, alfa: 1}]\n"))
    with pytest.raises(InputError, match="'a' appears twice"):
        load_grid_config(_write(tmp_path, "runs: [{name: a}, {name: a}]\n"))
    with pytest.raises(InputError, match="field 'epochs' is 0"):
        load_grid_config(_write(tmp_path, "epochs: 0\nruns: [{name: a}]\n"))
    with pytest.raises(InputError, match="--quick needs a 'quick' section"):
        load_grid_config(_write(tmp_path, "runs: [{name: a}]\n"), quick=True)
    with pytest.raises(InputError, match="quick.runs names 'b'"):
        load_grid_config(_write(tmp_path, "runs: [{name: a}]\nquick: {runs: [b]}\n"), quick=True)


def test_build_settings_reject_bad_values():
    from procon.toy.real import RealBuildConfig

    with pytest.raises(InputError, match="field 'epochs' is 'x'"):
        RealBuildConfig(epochs="x")
    with pytest.raises(InputError, match="field 'num_layers' is 0"):
        RealBuildConfig(num_layers=0)
    with pytest.raises(InputError, match="field 'refusals_only' is 1"):
        RealBuildConfig(refusals_only=1)


def test_templates_keep_the_instruction():
    for text in JAILBREAK_TEMPLATES.values():
        assert text.count("{prompt}") == 1


def test_per_template_asr_splits_the_records(monkeypatch):
    import procon.evaluate
    from procon.grid import evaluate_sets

    sets = {"harmful": {("advbench", "plain"): ["a1", "a2"], ("advbench", "roleplay"): ["b1", "b2", "b3", "b4"]},
            "benign": ["c1"], "task": [{"prompt": "t1", "answer": "x"}]}
    # The fake model refuses only prompts b1 and b2: plain ASR 2/2 = 1.0, role-play ASR 2/4 = 0.5.
    refused = {"b1", "b2"}

    def fake_evaluate(model, tokenizer, harmful, benign, task, **kwargs):
        records = [{"set": "harmful", "prompt": p, "refusal": p in refused} for p in harmful]
        records += [{"set": "benign", "prompt": p, "refusal": False} for p in benign]
        return records, {"over_refusal": {"value": 0.0}, "task_accuracy": {"value": 1.0}}

    monkeypatch.setattr(procon.evaluate, "evaluate_model", fake_evaluate)
    result, records = evaluate_sets(None, None, sets, max_new_tokens=4)
    assert result["asr"] == {"advbench/plain": 1.0, "advbench/roleplay": 0.5}
    assert result["asr_mean"] == 0.75
    assert [r["set"] for r in records[:6]] == ["advbench/plain"] * 2 + ["advbench/roleplay"] * 4


def _run(name, method, asr, cos, layers="paper+output", safety=False, alpha=None, seed=0):
    return {"scenario": "attack", "run": name, "label": name, "method": method, "asr_mean": asr,
            "over_refusal": 0.0, "task_accuracy": 1.0, "drift_cos": cos, "layers": layers, "safety": safety,
            "alpha": alpha, "seed": seed, "asr": {"advbench/plain": asr}}


def test_main_table_seed_mean_std():
    from procon.grid_report import main_table

    runs = [_run("vanilla", "vanilla", asr, [[0.9, 0.8]], seed=seed) for seed, asr in enumerate((0.2, 0.4, 0.9))]
    base = {"asr_mean": 0.1, "over_refusal": 0.0, "task_accuracy": 0.0}
    rows = main_table({"base": base, "runs": runs}, "attack")
    # Mean 0.5, sample std sqrt(((0.3)^2 + (0.1)^2 + (0.4)^2) / 2) = sqrt(0.13) = 0.3606.
    assert rows[1]["ASR mean ↓"] == "0.500 ± 0.361"
    assert rows[1]["seeds"] == "0,1,2"
    assert rows[1]["min drift cos ↑"] == "0.800 ± 0.000"


def test_claim_verdicts_follow_the_numbers():
    from procon.grid_report import claims

    # Vanilla drift (1 - cos): epoch 1 mean 0.3, epoch 2 mean 0.4, so epoch 1 adds 0.3 and
    # epoch 2 adds 0.1 (75% of the final drift comes in epoch 1). In epoch 2 the deep half
    # (0.6) drifts more than the shallow half (0.2).
    vanilla = _run("vanilla", "vanilla", 0.8, [[0.9, 0.5], [0.8, 0.4]])
    constant = _run("procon_s", "procon", 0.5, [[0.95, 0.9], [0.95, 0.9]], alpha=0.1)
    safe = _run("procon_wu_safe", "procon_wu_safe", 0.3, [[0.99, 0.98], [0.97, 0.95]], safety=True, alpha=1.0)
    last = _run("last", "procon_wu_safe", 0.6, [[0.9, 0.9], [0.8, 0.8]], layers="last", safety=True, alpha=1.0)
    summary = {"positions": [0, 1], "runs": [vanilla, constant, safe, last]}
    verdicts = {row["claim"]: row for row in claims(summary)}
    drift = verdicts["drift grows most in epoch 1 and most in deep layers"]
    assert drift["verdict"] == "reproduced"
    assert "+0.300, +0.100" in drift["evidence"]
    assert "75%" in drift["evidence"]
    assert verdicts["the constraint reduces drift and ASR"]["verdict"] == "reproduced"
    assert verdicts["warm-up + safety data beats a constant small α"]["verdict"] == "reproduced"
    assert verdicts["constraining all layers beats the last layer only"]["verdict"] == "reproduced"

    # A constant-α row worse than vanilla makes the second claim mixed.
    summary["runs"][1] = _run("procon_s", "procon", 0.9, [[0.95, 0.9], [0.95, 0.9]], alpha=0.1)
    verdicts = {row["claim"]: row for row in claims(summary)}
    assert verdicts["the constraint reduces drift and ASR"]["verdict"] == "mixed"


@pytest.mark.shared_data
def test_real_recipe_eval_sets_disjoint(shared_data):
    from procon.toy.real import EVAL_SETS, RealBuildConfig, assemble

    splits, report = assemble(shared_data, RealBuildConfig())

    def key(text):  # an independent normalization: letters and digits only
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    used = {key(row["prompt"]) for name, rows in splits.items() if not name.startswith("eval_")
            and not name.endswith("_test") for row in rows}
    for name in EVAL_SETS:
        prompts = [key(row["prompt"]) for row in splits[f"eval_{name}"]]
        assert not used & set(prompts), name
        counts = report["removed_from_eval"][name]
        assert counts["kept"] == len(prompts)
    # AdvBench shares 117 behaviours with the refusal-direction harmful_train split
    # (counted by hand on the files); they go to direction extraction, not evaluation.
    assert report["removed_from_eval"]["advbench"]["removed"] == 117


@pytest.mark.shared_data
def test_quick_grid_end_to_end(shared_data, tmp_path, capsys):
    from procon.cli import main

    out = tmp_path / "grid"
    args = ["grid", "--config", str(CONFIG), "--quick", "--data", str(shared_data), "--out", str(out),
            "--model-dir", str(tmp_path / "micro")]
    assert main(args) == 0
    summary = json.loads((out / "results.json").read_text())
    config = load_grid_config(str(CONFIG), quick=True)
    assert len(summary["runs"]) == len(planned_runs(config))
    for run in summary["runs"]:
        assert len(run["asr"]) == 9  # 3 harmful sets x 3 templates
        assert all(0.0 <= value <= 1.0 for value in run["asr"].values())
        assert len(run["drift_cos"]) == config.epochs
    assert (out / "results.md").is_file()
    assert (out / "img" / "drift-attack.png").is_file()
    build = json.loads((tmp_path / "micro" / "build_info.json").read_text())
    assert set(build["checks"]) >= {"refusal_advbench", "refusal_jbb_benign"}

    # A second call finds every run finished and only rewrites the report.
    capsys.readouterr()
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["asr_mean"] for r in again["runs"]] == [r["asr_mean"] for r in summary["runs"]]
