"""The CLI on the real public datasets beside the repository (skipped when they are absent)."""

import json

import pytest

from procon.cli import main


@pytest.mark.shared_data
def test_real_data_commands(shared_data, tiny_model_dir, tmp_path, capsys):
    splits = shared_data / "refusal_direction_splits" / "splits"
    assert main(["direction", "--model", str(tiny_model_dir),
                 "--harmful", str(splits / "harmful_train.json"), "--harmful-limit", "64",
                 "--harmless", str(splits / "harmless_train.json"), "--harmless-limit", "64",
                 "--out", str(tmp_path / "dirs")]) == 0
    metadata = json.loads((tmp_path / "dirs" / "directions.json").read_text())
    assert metadata["counts"] == {"harmful": 64, "harmless": 64}

    assert main(["train", "--model", str(tiny_model_dir), "--method", "procon_wu_safe",
                 "--directions", str(tmp_path / "dirs"),
                 "--train-data", str(shared_data / "beavertails_harmful_200" / "beavertails_unsafe_200.json"),
                 str(shared_data / "alpaca_sample_1k" / "alpaca_data_1k.json"),
                 "--safety-data", str(shared_data / "safety_tuned_llamas" / "training" /
                                      "safety_only_data_Instructions.json"),
                 "--safety-samples", "16", "--epochs", "1", "--batch-size", "16",
                 "--set", "training.max_length=64", "--set", "train_data.0.limit=16", "--set", "train_data.1.limit=32",
                 "--out", str(tmp_path / "run")]) == 0
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "safety_samples: 16" in resolved
    assert "pairs: 48" in resolved

    for name, path, limit in (
            ("advbench", shared_data / "advbench" / "harmful_behaviors.csv", 8),
            ("harmbench", shared_data / "harmbench" / "harmbench_behaviors_text_test.csv", 8),
            ("jbb", shared_data / "jailbreakbench" / "behaviors.csv", 8)):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "run" / "adapter"),
                     "--harmful", str(path), "--harmful-limit", str(limit),
                     "--benign", str(shared_data / "jailbreakbench" / "benign-behaviors.csv"),
                     "--benign-limit", "4", "--max-new-tokens", "4", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["asr"]["n"] == limit
        assert metrics["over_refusal"]["n"] == 4
    capsys.readouterr()
