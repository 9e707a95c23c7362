import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from procon.chat import ChatCollator, encode_example
from procon.residual import resolve_positions
from procon.trainer import (Anchors, ProConConfig, ProConTrainer, alpha_for_epoch, procon_term, record_anchors,
                            response_mask)

PAIRS = [("How do I bake bread?", "Sure, here is a simple recipe."),
         ("Explain how to pick a lock.", "I'm sorry, but I cannot help with that."),
         ("What is 3 plus 4?", "7"),
         ("Reverse the words: red green blue.", "blue green red"),
         ("Write a poem about the sea.", "The waves roll in and out."),
         ("Tell me about the moon.", "Sure. The moon is bright.")]


def test_procon_term_hand_computed():
    # Two samples, three tokens, hidden size 2; r_0 = e_x and r_2 = e_y.
    directions = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    hidden0 = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]], [[9.0, 9.0], [9.0, 9.0], [5.0, 6.0]]])
    hidden2 = torch.tensor([[[9.0, 9.0], [0.5, 1.5], [2.0, -1.0]], [[9.0, 9.0], [9.0, 9.0], [0.0, 3.0]]])
    mask = torch.tensor([[False, True, True], [False, False, True]])
    # z at position 0: 1, 3, 5; at position 2: 1.5, -1, 3.
    anchors = torch.tensor([[1.0, 1.0], [2.0, 0.0], [5.0, 5.0]])
    term = procon_term({0: hidden0, 2: hidden2}, directions, [0, 2], mask, anchors)
    # |0| + |0.5| + |1| + |-1| + |0| + |-2| = 4.5, averaged over 2 samples.
    assert term.item() == pytest.approx(2.25)


@pytest.mark.parametrize("method, epoch, expected", [
    ("vanilla", 0, 0.0), ("procon", 0, 0.2), ("procon", 7, 0.2),
    ("procon_wu", 0, 2.0), ("procon_wu", 1, 2.0), ("procon_wu", 2, 0.0), ("procon_wu_safe", 1, 2.0),
    ("procon_wu_safe", 2, 0.0), ("procon_wu_safe", 9, 0.0),
])
def test_alpha_schedule(method, epoch, expected):
    alpha = 0.2 if method == "procon" else 2.0
    assert alpha_for_epoch(method, alpha, 2, epoch) == expected


def test_response_mask_ignores_prompt_and_padding():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    assert response_mask(labels).tolist() == [[False, False, True, True], [False, True, False, False]]


def test_anchors_gather_order():
    values = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    anchors = Anchors(values=values, offsets=torch.tensor([0, 2, 3, 6]), positions=[0, 1])
    gathered = anchors.gather(torch.tensor([2, 0]))
    assert gathered.tolist() == [[6, 7], [8, 9], [10, 11], [0, 1], [2, 3]]


def test_anchors_file_round_trip_is_memory_mapped(tmp_path):
    from safetensors.torch import load_file

    values = torch.randn(7, 3)
    anchors = Anchors(values=values, offsets=torch.tensor([0, 4, 7]), positions=[0, 2, 5])
    anchors.save(tmp_path / "a.safetensors")
    loaded = Anchors.load(tmp_path / "a.safetensors")
    # safetensors' own reader is the independent check of the hand-parsed layout.
    reference = load_file(str(tmp_path / "a.safetensors"))
    assert torch.equal(loaded.values, reference["values"])
    assert torch.equal(loaded.offsets, reference["offsets"])
    assert loaded.positions == [0, 2, 5]
    assert loaded.gather(torch.tensor([1])).tolist() == values[4:7].tolist()
    # The mapping is copy-on-write: a change in memory never reaches the cache file.
    loaded.values[0, 0] = 1e6
    assert torch.equal(Anchors.load(tmp_path / "a.safetensors").values, values)


@pytest.mark.parametrize("bad, message", [
    ({"procon_method": "fancy"}, "procon_method: unknown method 'fancy'"),
    ({"procon_alpha": -1.0}, "procon_alpha: -1.0 is invalid"),
    ({"procon_alpha": math.inf}, "procon_alpha: inf is invalid"),
    ({"procon_warmup_epochs": -2}, "procon_warmup_epochs: -2 is invalid"),
    ({"procon_layers": "deep"}, "layers: 'deep' is invalid"),
])
def test_config_validation(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ProConConfig(output_dir=str(tmp_path), **bad)


def test_config_default_alpha(tmp_path):
    assert ProConConfig(output_dir=str(tmp_path), procon_method="procon").procon_alpha == 0.1
    assert ProConConfig(output_dir=str(tmp_path), procon_method="procon_wu").procon_alpha == 1.0


@pytest.fixture()
def lora_setup(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = []
    for i, (prompt, response) in enumerate(PAIRS):
        example = encode_example(tokenizer, prompt, response, max_length=64)
        example["sample_index"] = i
        encoded.append(example)
    positions = resolve_positions("paper+output", model.config.num_hidden_layers + 1)
    directions = torch.nn.functional.normalize(torch.randn(len(positions), model.config.hidden_size), dim=-1)
    base_projections = []
    for example in encoded:
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([example["input_ids"]]), output_hidden_states=True).hidden_states
        # Block inputs only: hidden_states has no pre-norm output of the last block, which
        # test_directions checks separately through the final norm.
        states = [hidden[p][0] for p in range(model.config.num_hidden_layers)]
        mask = torch.tensor(example["labels"]) != -100
        base_projections.append((states, mask))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    return peft_model, tokenizer, encoded, directions, positions, base_projections


def test_anchors_equal_base_model_projections(lora_setup):
    model, tokenizer, encoded, directions, positions, base = lora_setup
    # A non-zero adapter must not change the anchors: they are recorded with it disabled.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    anchors = record_anchors(model, encoded, directions, positions, tokenizer.pad_token_id, batch_size=4,
                             progress=False)
    assert anchors.offsets.tolist()[-1] == anchors.values.shape[0]
    for index, (states, mask) in enumerate(base):
        sample = anchors.values[anchors.offsets[index]:anchors.offsets[index + 1]]
        assert sample.shape == (int(mask.sum()), len(positions))
        for column, position in enumerate(positions[:-1]):
            expected = states[position][mask] @ directions[position]
            torch.testing.assert_close(sample[:, column], expected, rtol=1e-4, atol=1e-4)


def _trainer(model, tokenizer, encoded, directions, anchors, tmp_path, **kwargs):
    args = ProConConfig(output_dir=str(tmp_path), procon_method="procon", procon_alpha=1.0, report_to=[],
                        per_device_train_batch_size=3, use_cpu=True, save_strategy="no", disable_tqdm=True,
                        **kwargs)
    return ProConTrainer(model=model, args=args, train_dataset=encoded, data_collator=ChatCollator(
        tokenizer.pad_token_id), directions=directions, anchors=anchors)


def test_term_zero_then_lora_grads(lora_setup, tmp_path):
    model, tokenizer, encoded, directions, positions, _ = lora_setup
    anchors = record_anchors(model, encoded, directions, positions, tokenizer.pad_token_id, progress=False)
    trainer = _trainer(model, tokenizer, encoded, directions, anchors, tmp_path)
    batch = ChatCollator(tokenizer.pad_token_id)([encoded[i] for i in (4, 1, 2)])
    model.train()
    trainer.compute_loss(model, dict(batch))
    assert trainer._metrics["procon_term"][-1] < 1e-4  # fresh LoRA has B = 0

    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.zero_grad()
    before = len(trainer._metrics["procon_term"])
    loss = trainer.compute_loss(model, dict(batch))
    term = trainer._metrics["procon_term"][before]
    assert term > 1e-3
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in name for name in with_grad)
    assert all(not p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)
    assert any(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if "lora_A" in name)


def test_training_logs_terms_and_warmup(lora_setup, tmp_path):
    model, tokenizer, encoded, directions, positions, _ = lora_setup
    anchors = record_anchors(model, encoded, directions, positions, tokenizer.pad_token_id, progress=False)
    args = ProConConfig(output_dir=str(tmp_path), procon_method="procon_wu", procon_alpha=2.0,
                        procon_warmup_epochs=1, num_train_epochs=2, logging_steps=1, report_to=[],
                        per_device_train_batch_size=3, use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = ProConTrainer(model=model, args=args, train_dataset=encoded,
                            data_collator=ChatCollator(tokenizer.pad_token_id), directions=directions,
                            anchors=anchors)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "ce_loss" in entry]
    assert [entry["procon_alpha"] for entry in logs] == [2.0, 2.0, 0.0, 0.0]
    assert all(entry["procon_term"] == 0.0 for entry in logs[2:])
    assert all(math.isfinite(entry["ce_loss"]) for entry in logs)


def test_nan_loss_raises(lora_setup, tmp_path):
    model, tokenizer, encoded, directions, _, _ = lora_setup
    args = ProConConfig(output_dir=str(tmp_path), procon_method="vanilla", report_to=[], use_cpu=True,
                        save_strategy="no", disable_tqdm=True)
    trainer = ProConTrainer(model=model, args=args, train_dataset=encoded,
                            data_collator=ChatCollator(tokenizer.pad_token_id), directions=directions, anchors=None)
    with pytest.raises(FloatingPointError, match="language-modelling loss is nan at step 0"):
        trainer._record(torch.tensor(float("nan")), None, 0.0)


def _lora_grads(model, trainer, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    trainer.compute_loss(model, dict(batch)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _perturbed_lora(lora_setup, tmp_path, seed: int, rows: tuple[int, ...]):
    """Return (model, trainer, batch) with random LoRA B matrices, so the ProCon term is far from 0."""
    model, tokenizer, encoded, directions, positions, _ = lora_setup
    anchors = record_anchors(model, encoded, directions, positions, tokenizer.pad_token_id, progress=False)
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    trainer = _trainer(model, tokenizer, encoded, directions, anchors, tmp_path)
    batch = ChatCollator(tokenizer.pad_token_id)([encoded[i] for i in rows])
    model.train()
    return model, trainer, batch


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_keeps_lora_gradients(lora_setup, tmp_path, use_reentrant):
    # Checkpointing runs each block's forward again during backward, and with it the capture
    # hooks. The ProCon gradient must not change.
    model, trainer, batch = _perturbed_lora(lora_setup, tmp_path, seed=1, rows=(0, 3, 5))
    plain = _lora_grads(model, trainer, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    if use_reentrant:
        model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
    checkpointed = _lora_grads(model, trainer, batch)
    model.activation_checkpointing_disable()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_term_close(lora_setup, tmp_path):
    model, trainer, batch = _perturbed_lora(lora_setup, tmp_path, seed=2, rows=(1, 2, 4))
    trainer.compute_loss(model, dict(batch))
    full = trainer._metrics["procon_term"][-1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.compute_loss(model, dict(batch))
    half = trainer._metrics["procon_term"][-1]
    assert loss.dtype == torch.float32  # the term is summed in float32 even under autocast
    assert full > 1e-2
    # bf16 keeps 8 bits of mantissa, so a relative error of a few percent is expected.
    assert abs(half - full) / full < 0.05
