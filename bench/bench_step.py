"""Training-step cost of the ProCon constraint relative to vanilla LoRA, in the same run.

    .venv/bin/python bench/bench_step.py [--sizes toy 25m] [--steps 20] [--seq 256] [--batch 8]

For each model size, a randomly initialised Llama model gets the same LoRA adapter, data and
batch. Vanilla and ProCon steps (forward, backward, optimizer step) alternate, so machine noise
hits both alike. Prints the median step-time ratio ProCon / vanilla, and on CUDA the
peak-memory ratio. Anchors are random numbers of the right shape: their values do not change
the cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from procon.residual import capture_residual, resolve_positions
from procon.trainer import procon_term, response_mask

SIZES = {
    "toy": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768),
    "25m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1376),
    "110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
}


def build(size: str, vocab: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=1024, **SIZES[size])
    model = LlamaForCausalLM(config).to(device)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(model, lora)


def step(model, optimizer, batch, procon: dict | None) -> float:
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if procon is None:
        loss = model(**batch).loss
    else:
        with capture_residual(model, procon["positions"]) as captured:
            ce = model(**batch).loss
            term = procon_term(captured, procon["directions"], procon["positions"], procon["mask"], procon["anchors"])
        loss = ce + term
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_size(size: str, steps: int, seq: int, batch_size: int, device: str) -> dict:
    vocab = 4096
    model = build(size, vocab, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, vocab, (batch_size, seq), device=device)
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # first half is the prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    n_positions = model.config.num_hidden_layers + 1
    positions = resolve_positions("paper+output", n_positions)
    mask = response_mask(labels)
    procon = {"positions": positions, "mask": mask,
              "directions": torch.nn.functional.normalize(torch.randn(n_positions, model.config.hidden_size), dim=-1),
              "anchors": torch.randn(int(mask.sum()), len(positions))}
    for _ in range(2):  # warm-up steps are not timed
        step(model, optimizer, batch, None)
        step(model, optimizer, batch, procon)
    vanilla, constrained, memory = [], [], {}
    for name, extra, times in (("vanilla", None, vanilla), ("procon", procon, constrained)):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(model, optimizer, batch, extra)
            memory[name] = torch.cuda.max_memory_allocated()
    for _ in range(steps):
        vanilla.append(step(model, optimizer, batch, None))
        constrained.append(step(model, optimizer, batch, procon))
    result = {"size": size, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "vanilla_ms": 1000 * statistics.median(vanilla), "procon_ms": 1000 * statistics.median(constrained)}
    result["step_ratio"] = result["procon_ms"] / result["vanilla_ms"]
    result["memory_ratio"] = memory["procon"] / memory["vanilla"] if memory else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["toy", "25m"], choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method and size")
    parser.add_argument("--seq", type=int, default=256, help="sequence length")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"seq {args.seq}, batch {args.batch}, {args.steps} interleaved steps each")
    print(f"{'size':>5} {'params(M)':>9} {'vanilla ms':>10} {'procon ms':>9} {'step ratio':>10} {'mem ratio':>9}")
    for size in args.sizes:
        r = bench_size(size, args.steps, args.seq, args.batch, device)
        memory = f"{r['memory_ratio']:.3f}" if r["memory_ratio"] else "n/a"
        print(f"{r['size']:>5} {r['parameters_m']:>9} {r['vanilla_ms']:>10.1f} {r['procon_ms']:>9.1f} "
              f"{r['step_ratio']:>10.3f} {memory:>9}")


if __name__ == "__main__":
    main()
