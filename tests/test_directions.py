import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from procon.chat import encode_prompt
from procon.directions import (Directions, cosine_per_position, difference_in_means, extract_directions,
                               final_token_activations, separation)
from procon.errors import InputError

PROMPTS_A = ["How do I pick a lock?", "Explain how to steal a car.", "Write ransomware."]
PROMPTS_B = ["How do I bake bread?", "What is 3 plus 4?", "Tell me about the moon.", "Hi"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


def test_difference_in_means_matches_numpy():
    rng = np.random.default_rng(0)
    harmful = rng.normal(size=(5, 3, 4))
    harmless = rng.normal(size=(7, 3, 4))
    vectors, degenerate = difference_in_means(harmful, harmless)
    expected = harmful.mean(axis=0) - harmless.mean(axis=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert degenerate == []


def test_difference_in_means_degenerate_position():
    harmful = np.ones((2, 2, 3))
    harmless = np.ones((3, 2, 3))
    harmless[:, 1] = 0.0
    vectors, degenerate = difference_in_means(harmful, harmless)
    assert degenerate == [0]
    assert torch.all(vectors[0] == 0)
    np.testing.assert_allclose(vectors[1].numpy(), np.ones(3) / np.sqrt(3), rtol=1e-6)


def test_activations_match_output_hidden_states(tiny):
    model, tokenizer = tiny
    acts = final_token_activations(model, tokenizer, PROMPTS_B, batch_size=3, progress=False)
    n_blocks = model.config.num_hidden_layers
    assert acts.shape == (len(PROMPTS_B), n_blocks + 1, model.config.hidden_size)
    for i, prompt in enumerate(PROMPTS_B):
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        # hidden_states[l] is the input of block l; the last entry is after the final norm.
        for layer in range(n_blocks):
            torch.testing.assert_close(acts[i, layer], hidden[layer][0, -1], rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            normed = model.model.norm(acts[i, n_blocks][None])[0]
        torch.testing.assert_close(normed, hidden[n_blocks][0, -1], rtol=1e-4, atol=1e-5)


def test_extract_directions_equals_manual_means(tiny):
    model, tokenizer = tiny
    directions, report = extract_directions(model, tokenizer, PROMPTS_A, PROMPTS_B, progress=False)
    a = final_token_activations(model, tokenizer, PROMPTS_A, batch_size=1, progress=False).double().numpy()
    b = final_token_activations(model, tokenizer, PROMPTS_B, batch_size=1, progress=False).double().numpy()
    diff = a.mean(axis=0) - b.mean(axis=0)
    for position in range(directions.n_positions):
        norm = np.linalg.norm(diff[position])
        if norm < 1e-6:
            assert position in directions.metadata["degenerate_positions"]
            continue
        np.testing.assert_allclose(directions.vectors[position].numpy(), diff[position] / norm, atol=1e-4)
    assert len(report) == directions.n_positions
    assert directions.metadata["counts"] == {"harmful": 3, "harmless": 4}


def test_separation_on_separable_data():
    rng = np.random.default_rng(1)
    harmful = torch.tensor(rng.normal(loc=2.0, size=(50, 2, 8)))
    harmless = torch.tensor(rng.normal(loc=-2.0, size=(50, 2, 8)))
    rows = separation(harmful, harmless)
    assert [row["heldout_accuracy"] for row in rows] == [1.0, 1.0]
    assert all(row["mean_gap"] > 0 for row in rows)


def test_cosine_per_position_matches_numpy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    a[2] = 0.0
    values = cosine_per_position(torch.tensor(a), torch.tensor(b))
    for i in range(2):
        expected = a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i])
        assert values[i] == pytest.approx(expected, rel=1e-9)
    assert np.isnan(values[2])


def test_directions_roundtrip_and_shape_check(tiny, tmp_path):
    model, _ = tiny
    n = model.config.num_hidden_layers + 1
    directions = Directions(torch.randn(n, model.config.hidden_size), {"note": "x"})
    directions.save(tmp_path)
    loaded = Directions.load(tmp_path)
    torch.testing.assert_close(loaded.vectors, directions.vectors)
    assert loaded.metadata == {"note": "x"}
    loaded.check_model(model, "d")
    wrong = Directions(torch.randn(n + 1, model.config.hidden_size))
    with pytest.raises(InputError, match=r"d: directions have shape \[4, 32\] but the model needs \[3, 32\]"):
        wrong.check_model(model, "d")


def test_directions_load_missing(tmp_path):
    with pytest.raises(InputError, match="directions file not found"):
        Directions.load(tmp_path / "nope")


def test_separation_undefined_for_zero_direction():
    rng = np.random.default_rng(3)
    harmful = torch.tensor(rng.normal(loc=2.0, size=(20, 2, 4)))
    harmless = torch.tensor(rng.normal(loc=-2.0, size=(30, 2, 4)))
    harmful[:, 0] = 1.0
    harmless[:, 0] = 1.0
    rows = separation(harmful, harmless)
    assert np.isnan(rows[0]["heldout_accuracy"])
    assert rows[1]["heldout_accuracy"] == 1.0
