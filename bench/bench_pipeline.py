"""Cost of the ProCon pipeline stages relative to baselines measured in the same run.

    .venv/bin/python bench/bench_pipeline.py [--model runs/toy/model] [--data runs/toy/data]

Stages, each against its baseline:
- anchors: recording z0 for the training set, against a plain no-grad forward pass over the
  same batches (the target is a ratio of at most 1);
- direction extraction: prompts per second, against a plain no-grad forward pass over the same
  prompts in the same batches (the target is at least 0.9);
- generation: generated tokens and responses per second of batched greedy decoding (no baseline);
- anchors again, against one LoRA training epoch over the same batches, and their size on disk.
Build a model first: procon toy build --out runs/toy, or with --recipe real for the micro model
(then pass --model runs/micro/model --data runs/micro/data).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from procon.chat import ChatCollator, encode_example, encode_prompt
from procon.directions import final_token_activations
from procon.evaluate import generate_responses
from procon.residual import num_positions, resolve_positions
from procon.run import load_model
from procon.trainer import record_anchors


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@torch.inference_mode()
def plain_forward(model, batches: list[dict]) -> None:
    for batch in batches:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/toy/model")
    parser.add_argument("--data", default="runs/toy/data")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement; the median is kept")
    args = parser.parse_args()
    data = Path(args.data)
    model, tokenizer = load_model(args.model)
    model.eval()
    print(f"model {args.model}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")

    # The toy build and the real-data micro build name their files differently.
    toy = (data / "skill_train.jsonl").is_file()
    train_rows = _rows(data / "attack.jsonl") + _rows(data / ("skill_train.jsonl" if toy else "alpaca_finetune.jsonl"))
    encoded = [encode_example(tokenizer, r["prompt"], r["response"], 128) for r in train_rows]
    collator = ChatCollator(tokenizer.pad_token_id)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    batches = [collator([encoded[i] for i in order[k:k + args.batch]]) for k in range(0, len(order), args.batch)]
    positions = resolve_positions("paper+output", num_positions(model))
    directions = torch.nn.functional.normalize(torch.randn(num_positions(model), model.config.hidden_size), dim=-1)

    def median(fn) -> float:
        return sorted(timed(fn) for _ in range(args.repeats))[args.repeats // 2]

    plain_forward(model, batches[:2])  # first calls pay one-time allocation costs; not timed
    forward_s = median(lambda: plain_forward(model, batches))
    anchors_s = median(lambda: record_anchors(model, encoded, directions, positions, tokenizer.pad_token_id,
                                              batch_size=args.batch, progress=False))
    print(f"anchors: {len(encoded)} samples, {anchors_s:.3f} s vs plain forward {forward_s:.3f} s, "
          f"ratio {anchors_s / forward_s:.3f} (target <= 1)")

    prompts = [r["prompt"] for r in _rows(data / "direction_harmful.jsonl")]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    by_length = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    prompt_batches = []
    for k in range(0, len(by_length), args.batch):
        chunk = [prompt_ids[i] for i in by_length[k:k + args.batch]]
        width = max(map(len, chunk))
        ids = torch.tensor([c + [tokenizer.pad_token_id] * (width - len(c)) for c in chunk])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
        prompt_batches.append({"input_ids": ids, "attention_mask": mask})
    plain_s = median(lambda: plain_forward(model, prompt_batches))
    extract_s = median(lambda: final_token_activations(model, tokenizer, prompts, args.batch, progress=False))
    print(f"direction extraction: {len(prompts) / extract_s:.0f} prompts/s vs plain forward "
          f"{len(prompts) / plain_s:.0f} prompts/s, ratio {plain_s / extract_s:.3f} (target >= 0.9)")

    eval_prompts = [r["prompt"] for r in _rows(data / ("eval_harmful.jsonl" if toy else "eval_advbench.jsonl"))][:256]
    start = time.perf_counter()
    responses = generate_responses(model, tokenizer, eval_prompts, batch_size=64, max_new_tokens=32, progress=False)
    gen_s = time.perf_counter() - start
    tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses)
    print(f"generation: {len(responses) / gen_s:.1f} responses/s, about {tokens / gen_s:.0f} tokens/s "
          f"(greedy, batch 64, at most 32 new tokens; tokens re-counted from the decoded text)")

    # Anchors against one LoRA training epoch over the same batches, and their size on disk.
    anchors = record_anchors(model, encoded, directions, positions, tokenizer.pad_token_id, batch_size=args.batch,
                             progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "anchors.safetensors"
        anchors.save(path)
        size = path.stat().st_size
    epoch_s = train_epoch(model, batches)
    print(f"anchors vs one LoRA epoch (forward, backward, AdamW over the same batches): {anchors_s:.3f} s vs "
          f"{epoch_s:.3f} s, ratio {anchors_s / epoch_s:.3f}; on disk {size / 1e6:.2f} MB "
          f"({anchors.values.shape[0]} response tokens x {len(positions)} positions x 4 bytes + offsets)")


def train_epoch(model, batches: list[dict]) -> float:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)

    def epoch() -> None:
        for batch in batches:
            peft_model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    epoch()  # the first epoch pays one-time allocation costs; not timed
    return timed(epoch)


if __name__ == "__main__":
    main()
