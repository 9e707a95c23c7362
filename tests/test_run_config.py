import pytest
import yaml

from procon.errors import InputError
from procon.run import load_run_config, parse_override


def _write(tmp_path, data):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_overrides_reach_nested_fields_and_list_items(tmp_path):
    path = _write(tmp_path, {"model": "m", "method": "vanilla", "train_data": ["a.jsonl", {"path": "b.jsonl"}]})
    config = load_run_config(path, dict([parse_override("training.epochs=3"), parse_override("lora.r=4"),
                                         parse_override("train_data.0.limit=10")]))
    assert config.training.epochs == 3
    assert config.lora.r == 4
    assert config.train_data[0].path == "a.jsonl"
    assert config.train_data[0].limit == 10
    assert config.train_data[1].limit is None


def test_override_index_out_of_range(tmp_path):
    path = _write(tmp_path, {"model": "m", "method": "vanilla", "train_data": ["a.jsonl"]})
    with pytest.raises(InputError, match=r"--set train_data.3.limit: index '3' is out of range; the list has 1"):
        load_run_config(path, dict([parse_override("train_data.3.limit=1")]))


def test_override_without_equals():
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_override("training.epochs")


def test_layers_list_becomes_positions(tmp_path):
    path = _write(tmp_path, {"model": "m", "method": "procon", "directions": "d", "train_data": ["a.jsonl"],
                             "layers": [1, 3]})
    assert load_run_config(path).layers == "1,3"


@pytest.mark.parametrize("data, message", [
    ({"method": "vanilla", "train_data": ["a"]}, "field 'model' is missing"),
    ({"model": "m", "method": "sgd", "train_data": ["a"]}, "field 'method' is 'sgd'"),
    ({"model": "m", "method": "vanilla"}, "field 'train_data' is empty"),
    ({"model": "m", "method": "procon", "train_data": ["a"]}, "needs field 'directions'"),
    ({"model": "m", "method": "vanilla", "train_data": ["a"], "safety_samples": -1}, "'safety_samples' is -1"),
    ({"model": "m", "method": "vanilla", "train_data": ["a"], "training": {"epochs": 0}}, "field .training.epochs. is 0; expected a finite number > 0"),
    ({"model": "m", "method": "vanilla", "train_data": ["a"], "training": {"epochs": "abc"}}, "field .epochs. is .abc.; expected float"),
    ({"model": "m", "method": "vanilla", "train_data": ["a"], "training": {"learning_rate": float("nan")}}, "learning_rate. is nan"),
    ({"model": 123, "method": "vanilla", "train_data": ["a"]}, "field .model. is 123; expected str"),
    ({"model": "m", "method": "vanilla", "train_data": [{"limit": 3}]}, "train_data.0. has no .path."),
    ({"model": "m", "method": "procon_wu_safe", "directions": "d", "safety_data": "s", "safety_samples": 0, "train_data": ["a"]}, "needs safety_samples > 0"),
])
def test_validation_messages(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        load_run_config(_write(tmp_path, data))


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: config file not found"):
        load_run_config(str(tmp_path / "nope.yaml"))


def test_anchors_cache_key_follows_weight_content(tiny_model_dir, tmp_path):
    import hashlib
    import shutil

    from procon.run import _model_fingerprint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    memo = tmp_path / "memo"
    original = _model_fingerprint(str(tiny_model_dir), memo)
    # A copy elsewhere has the same weights, so it shares the cache entry.
    assert _model_fingerprint(str(copy), memo) == original
    weights = copy / "model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert original == f"model.safetensors:{expected}"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert _model_fingerprint(str(copy), memo) != original
