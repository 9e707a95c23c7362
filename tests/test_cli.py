import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

from procon.cli import main
from tests.helpers import write_toy_files


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return write_toy_files(tmp_path_factory.mktemp("toy"))


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _train_config(tmp_path, tiny_model_dir, toy_data, method, **extra):
    config = {
        "model": str(tiny_model_dir),
        "method": method,
        "train_data": [{"path": str(toy_data / "skill_train.jsonl"), "limit": 24},
                       {"path": str(toy_data / "attack.jsonl"), "limit": 8}],
        "training": {"epochs": 2, "batch_size": 8, "max_length": 64, "logging_steps": 1},
        "lora": {"r": 4, "alpha": 8},
        **extra,
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_end_to_end_commands(capsys, tmp_path, tiny_model_dir, toy_data):
    harmful, harmless = toy_data / "direction_harmful.jsonl", toy_data / "direction_harmless.jsonl"
    code, out, err = run_cli(capsys, "direction", "--model", tiny_model_dir, "--harmful", harmful,
                             "--harmless", harmless, "--harmful-limit", 40, "--harmless-limit", 40,
                             "--out", tmp_path / "dirs")
    assert code == 0, err
    assert "heldout_accuracy" in out
    metadata = json.loads((tmp_path / "dirs" / "directions.json").read_text())
    assert metadata["n_positions"] == 3
    assert metadata["hidden_size"] == 32
    assert metadata["data"]["harmful"]["count"] == 40
    assert len(metadata["data"]["harmful"]["sha256"]) == 64

    config = _train_config(tmp_path, tiny_model_dir, toy_data, "procon_wu_safe",
                           directions=str(tmp_path / "dirs"), safety_data=str(toy_data / "safety.jsonl"),
                           safety_samples=8)
    code, out, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert code == 0, err
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["method"] == "procon_wu_safe"
    assert resolved["resolved_alpha"] == 1.0
    assert resolved["data"]["pairs"] == 32
    assert resolved["data"]["safety_samples"] == 8
    # Counted independently: prompts whose templated token length leaves no room for a response.
    from transformers import AutoTokenizer

    from procon.chat import encode_prompt
    from procon.data import load_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = (load_pairs(str(toy_data / "skill_train.jsonl"))[:24] + load_pairs(str(toy_data / "attack.jsonl"))[:8]
            + load_pairs(str(toy_data / "safety.jsonl"))[:8])
    too_long = sum(len(encode_prompt(tokenizer, row["prompt"])) >= 64 for row in rows)
    assert resolved["data"]["skipped_too_long"] == too_long
    assert sorted(resolved["data"]["files"]) == [str(toy_data / "attack.jsonl"), str(toy_data / "skill_train.jsonl")]
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "procon_alpha" in entry]
    assert steps[0]["procon_alpha"] == 1.0
    assert steps[-1]["procon_alpha"] == 0.0

    code, out, err = run_cli(capsys, "drift", "--model", tiny_model_dir, "--adapters", run,
                             "--harmful", harmful, "--harmless", harmless, "--harmful-limit", 40,
                             "--harmless-limit", 40, "--out", tmp_path / "drift")
    assert code == 0, err
    assert "run e1" in out
    assert "run e2" in out
    assert (tmp_path / "drift" / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (tmp_path / "drift" / "drift.csv").read_text().splitlines()[0]
    assert header == "checkpoint,pos0,pos1,pos2"

    code, out, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", run / "adapter",
                             "--harmful", toy_data / "eval_harmful.jsonl", "--harmful-limit", 6,
                             "--benign", toy_data / "eval_benign.jsonl", "--benign-limit", 5,
                             "--task", toy_data / "skill_test.jsonl", "--task-limit", 4,
                             "--max-new-tokens", 4, "--out", tmp_path / "eval")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["asr"]["n"] == 6
    assert metrics["asr"]["direction"] == "lower is safer"
    assert metrics["over_refusal"]["n"] == 5
    assert metrics["task_accuracy"]["n"] == 4
    assert len((tmp_path / "eval" / "generations.jsonl").read_text().splitlines()) == 15


def test_train_vanilla_flags_only(capsys, tmp_path, tiny_model_dir, toy_data):
    code, out, err = run_cli(capsys, "train", "--model", tiny_model_dir, "--method", "vanilla",
                             "--train-data", toy_data / "attack.jsonl", "--epochs", 1, "--batch-size", 16,
                             "--set", "training.max_length=48", "--set", "training.save_every_epoch=false",
                             "--out", tmp_path / "vanilla")
    assert code == 0, err
    assert (tmp_path / "vanilla" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "vanilla" / "directions").exists()


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    # Other stderr lines may be progress bars of the libraries; the error is one line, last.
    lines = re.split(r"[\r\n]+", err.strip())
    errors = [line for line in lines if "procon: error" in line]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0]
    assert errors[0].startswith("procon: error: ")
    for fragment in fragments:
        assert fragment in errors[0]
    assert "Traceback" not in err


def test_missing_data_file(capsys, tmp_path, tiny_model_dir):
    code, _, err = run_cli(capsys, "direction", "--model", tiny_model_dir, "--harmful", tmp_path / "nope.csv",
                           "--harmless", tmp_path / "nope2.csv", "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "nope.csv", "file not found")
    assert not (tmp_path / "out").exists()


def test_empty_data_file(capsys, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--harmful", empty, "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "empty.jsonl", "no examples found")
    assert not (tmp_path / "out").exists()


def test_unknown_field(capsys, tmp_path, tiny_model_dir, toy_data):
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--harmful", toy_data / "eval_harmful.jsonl",
                           "--harmful-field", "goal", "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "eval_harmful.jsonl", "'goal' not found", "prompt")


def test_model_without_chat_template(capsys, tmp_path, tiny_model_dir, toy_data):
    model_dir = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    for extra in model_dir.glob("chat_template.*"):
        extra.unlink()
    code, _, err = run_cli(capsys, "eval", "--model", model_dir, "--harmful", toy_data / "eval_harmful.jsonl",
                           "--out", tmp_path / "out")
    _assert_one_line_error(code, err, str(model_dir), "no chat template")


def test_direction_shape_mismatch(capsys, tmp_path, tiny_model_dir, toy_data):
    bad = tmp_path / "bad_dirs"
    bad.mkdir()
    save_file({"directions": torch.randn(5, 32)}, str(bad / "directions.safetensors"))
    config = _train_config(tmp_path, tiny_model_dir, toy_data, "procon", directions=str(bad))
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "bad_dirs", "[5, 32]", "[3, 32]")
    assert not (tmp_path / "out").exists()


def test_config_errors(capsys, tmp_path, tiny_model_dir, toy_data):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: x\ntraining: [1, 2\n")
    code, _, err = run_cli(capsys, "train", "--config", bad_yaml)
    _assert_one_line_error(code, err, "bad.yaml", "invalid YAML")

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "train_data": ["x.jsonl"],
                                       "training": {"epoch": 3}}))
    code, _, err = run_cli(capsys, "train", "--config", unknown)
    _assert_one_line_error(code, err, "unknown.yaml.training", "unknown field 'epoch'")

    config = _train_config(tmp_path, tiny_model_dir, toy_data, "procon_wu_safe", directions="d")
    code, _, err = run_cli(capsys, "train", "--config", config)
    _assert_one_line_error(code, err, "procon_wu_safe needs field 'safety_data'")

    config = _train_config(tmp_path, tiny_model_dir, toy_data, "procon", directions="d", layers="deep")
    code, _, err = run_cli(capsys, "train", "--config", config)
    _assert_one_line_error(code, err, "layers: 'deep' is invalid")


def test_nan_loss_stops_cleanly(capsys, tmp_path, tiny_model_dir, toy_data):
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(model_dir)
    code, _, err = run_cli(capsys, "train", "--model", model_dir, "--method", "vanilla",
                           "--train-data", toy_data / "attack.jsonl", "--epochs", 1, "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "loss is nan")
    assert not (tmp_path / "out").exists()


def test_output_dir_never_replaces_user_folder(capsys, tmp_path, tiny_model_dir, toy_data):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--harmful", toy_data / "eval_harmful.jsonl",
                           "--harmful-limit", 2, "--max-new-tokens", 2, "--out", precious)
    _assert_one_line_error(code, err, "precious", "was not written by procon")
    assert (precious / "thesis.txt").read_text() == "keep me"

    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--harmful", toy_data / "eval_harmful.jsonl",
                           "--out", afile)
    _assert_one_line_error(code, err, "afile", "is not a directory")
    assert afile.read_text() == "x"


def test_output_dir_replaced_when_written_by_procon(capsys, tmp_path, tiny_model_dir, toy_data):
    args = ["eval", "--model", tiny_model_dir, "--harmful", toy_data / "eval_harmful.jsonl", "--harmful-limit", 2,
            "--max-new-tokens", 2, "--out", tmp_path / "ev"]
    assert run_cli(capsys, *args)[0] == 0
    assert (tmp_path / "ev" / ".procon-output").is_file()
    assert run_cli(capsys, *args)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]


def test_adapter_without_weights(capsys, tmp_path, tiny_model_dir, toy_data):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", adapter,
                           "--harmful", toy_data / "eval_harmful.jsonl", "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "adapter_model.safetensors not found")


def test_nan_directions_rejected(capsys, tmp_path, tiny_model_dir, toy_data):
    bad = tmp_path / "nan_dirs"
    bad.mkdir()
    save_file({"directions": torch.full((3, 32), float("nan"))}, str(bad / "directions.safetensors"))
    config = _train_config(tmp_path, tiny_model_dir, toy_data, "procon", directions=str(bad))
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "nan_dirs", "NaN or inf")


def test_zero_directions_rejected(capsys, tmp_path, tiny_model_dir, toy_data):
    zero = tmp_path / "zero_dirs"
    zero.mkdir()
    save_file({"directions": torch.zeros(3, 32)}, str(zero / "directions.safetensors"))
    config = _train_config(tmp_path, tiny_model_dir, toy_data, "procon", directions=str(zero))
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "every position has a zero direction")


def test_batch_size_zero_rejected(capsys, tmp_path, tiny_model_dir, toy_data):
    with pytest.raises(SystemExit) as exit_info:
        main(["direction", "--model", str(tiny_model_dir), "--harmful", str(toy_data / "eval_harmful.jsonl"),
              "--harmless", str(toy_data / "eval_benign.jsonl"), "--batch-size", "0", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "0 is invalid; expected an integer >= 1" in capsys.readouterr().err


def test_prompts_longer_than_max_length(capsys, tmp_path, tiny_model_dir, toy_data):
    code, _, err = run_cli(capsys, "train", "--model", tiny_model_dir, "--method", "vanilla",
                           "--train-data", toy_data / "attack.jsonl", "--set", "training.max_length=8",
                           "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "attack.jsonl: example 1", "raise training.max_length")


def test_max_new_tokens_beyond_context(capsys, tmp_path, tiny_model_dir, toy_data):
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--harmful", toy_data / "eval_harmful.jsonl",
                           "--max-new-tokens", 100000, "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "--max-new-tokens 100000 is invalid", "512 tokens")


def test_unknown_report_to(capsys, tmp_path, tiny_model_dir, toy_data):
    code, _, err = run_cli(capsys, "train", "--model", tiny_model_dir, "--method", "vanilla",
                           "--train-data", toy_data / "attack.jsonl", "--set", "training.report_to=[bogus]",
                           "--out", tmp_path / "out")
    _assert_one_line_error(code, err, "training: bogus is not supported")
    assert not (tmp_path / "out").exists()
