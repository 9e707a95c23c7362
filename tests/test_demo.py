"""The demo pipeline end to end on a deliberately undertrained toy model (shape, not quality)."""

import json

from procon.demo import DemoSettings, run_demo
from procon.toy.build import ToyBuildConfig


def test_demo_writes_summary_and_report(tmp_path, capsys):
    toy_config = ToyBuildConfig(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, epochs=0.02,
                                tasks_per_kind=20)
    settings = DemoSettings(epochs=2, warmup_epochs=1, eval_limit=6, max_new_tokens=4, safety_samples=16,
                            check_toy=False)
    summary = run_demo(out=tmp_path / "demo", toy_dir=tmp_path / "toy", methods=["vanilla", "procon_wu_safe"],
                       settings=settings, toy_config=toy_config)
    on_disk = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert on_disk["methods"].keys() == {"vanilla", "procon_wu_safe"}
    for values in on_disk["methods"].values():
        assert set(values) == {"asr", "over_refusal", "task_accuracy", "min_drift_cos"}
        for key in ("asr", "over_refusal", "task_accuracy"):
            assert 0.0 <= values[key] <= 1.0
        assert -1.0 <= values["min_drift_cos"] <= 1.0
    assert on_disk["wall_seconds"] > 0
    assert summary["methods"] == on_disk["methods"]
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "ProCon^wu_safe" in report
    assert "drift/drift.png" in report
    assert (tmp_path / "demo" / "drift" / "drift.png").is_file()
    assert (tmp_path / "toy" / "build_info.json").is_file()
    assert "ASR procon_wu_safe / vanilla" in capsys.readouterr().out
