"""Training-step cost of the ProCon constraint relative to vanilla LoRA, in the same run.

    .venv/bin/python bench/bench_step.py [--sizes toy 25m 110m] [--steps 20] [--seq 256] [--batch 8]
    .venv/bin/python bench/bench_step.py --trainers     # also ProConTrainer vs TRL's SFTTrainer
    .venv/bin/python bench/bench_step.py --sizes 1b 7b --dtype bfloat16   # accelerator machine

For each model size, a randomly initialised Llama model gets the same LoRA adapter, data and
batch. Vanilla and ProCon steps (forward, backward, optimizer step) alternate, so machine noise
hits both alike, and the ratio is of the medians. On CUDA, peak memory is the allocator's peak
per method. On CPU, each method runs a few steps in a fresh subprocess, and the peak resident
set size is compared in total and as the increase over the loaded model. Anchors are random
numbers of the right shape, because their values do not change the cost.

With --trainers, whole Trainer steps are compared as well, the way users run them: procon's
ProConTrainer (vanilla and ProCon) against TRL's SFTTrainer with the same LoRA adapter and
completion-only loss, in alternating blocks of steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from procon.residual import capture_residual, resolve_positions
from procon.trainer import procon_term, response_mask

SIZES = {
    "toy": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768),
    "25m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1376),
    "110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    # Shapes of TinyLlama-1.1B and Llama-2-7B; only for an accelerator machine.
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               intermediate_size=5632),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
}
VOCAB = {"toy": 4096, "25m": 4096, "110m": 32000, "1b": 32000, "7b": 32000}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(size: str, device: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB[size], max_position_embeddings=1024, **SIZES[size])
    # Initialise on the target device in the target dtype: a 7B model initialised on CPU in
    # float32 would take minutes and 28 GB of host memory.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(model, lora)


def make_batch(size: str, seq: int, batch_size: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB[size], (batch_size, seq), generator=generator).to(device)
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # first half is the prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def procon_inputs(model, batch: dict) -> dict:
    n_positions = model.config.num_hidden_layers + 1
    positions = resolve_positions("paper+output", n_positions)
    mask = response_mask(batch["labels"])
    return {"positions": positions, "mask": mask,
            "directions": torch.nn.functional.normalize(torch.randn(n_positions, model.config.hidden_size), dim=-1),
            "anchors": torch.randn(int(mask.sum()), len(positions))}


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


def bench_size(size: str, steps: int, seq: int, batch_size: int, device: str, dtype: torch.dtype,
               cpu_memory: bool) -> dict:
    model = build(size, device, dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = make_batch(size, seq, batch_size, device)
    procon = procon_inputs(model, batch)
    for _ in range(2):  # warm-up steps are not timed
        step(model, optimizer, batch, None)
        step(model, optimizer, batch, procon)
    memory = {}
    if device == "cuda":
        for name, extra in (("vanilla", None), ("procon", procon)):
            torch.cuda.reset_peak_memory_stats()
            step(model, optimizer, batch, extra)
            memory[name] = torch.cuda.max_memory_allocated()
    vanilla, constrained = [], []
    for _ in range(steps):
        vanilla.append(step(model, optimizer, batch, None))
        constrained.append(step(model, optimizer, batch, procon))
    result = {"size": size, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "vanilla_ms": 1000 * statistics.median(vanilla), "procon_ms": 1000 * statistics.median(constrained)}
    result["step_ratio"] = result["procon_ms"] / result["vanilla_ms"]
    result["memory_ratio"] = memory["procon"] / memory["vanilla"] if memory else None
    result["memory_increase_ratio"] = None
    del model, optimizer
    if device == "cpu" and cpu_memory:
        peaks = {name: _child_peak(size, seq, batch_size, name) for name in ("vanilla", "procon")}
        result["memory_ratio"] = peaks["procon"]["peak"] / peaks["vanilla"]["peak"]
        result["memory_increase_ratio"] = ((peaks["procon"]["peak"] - peaks["procon"]["loaded"])
                                           / (peaks["vanilla"]["peak"] - peaks["vanilla"]["loaded"]))
        result["peak_rss_mb"] = {name: round(p["peak"] / 2**20) for name, p in peaks.items()}
    return result


def _child_peak(size: str, seq: int, batch_size: int, method: str) -> dict:
    """Run 3 steps of one method in a fresh process; return its peak RSS and the RSS after loading, in bytes."""
    command = [sys.executable, __file__, "--memory-child", method, "--sizes", size, "--seq", str(seq),
               "--batch", str(batch_size)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory_child(method: str, size: str, seq: int, batch_size: int) -> None:
    model = build(size, "cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = make_batch(size, seq, batch_size, "cpu")
    procon = procon_inputs(model, batch) if method == "procon" else None
    loaded = _rss_bytes()
    for _ in range(3):
        step(model, optimizer, batch, procon)
    # ru_maxrss is in KiB on Linux.
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "loaded": loaded}))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def bench_trainers(size: str, rounds: int, steps: int, seq: int, batch_size: int, dtype_name: str) -> dict:
    """Median Trainer step of ProConTrainer (vanilla, ProCon) and TRL's SFTTrainer, in alternating blocks."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from procon.chat import ChatCollator
    from procon.toy.tokenizer import train_tokenizer
    from procon.trainer import Anchors, ProConConfig, ProConTrainer

    tokenizer = train_tokenizer(["a tokenizer only for padding and saving"], vocab_size=300)
    n_rows = batch_size * steps
    batch = make_batch(size, seq, n_rows, "cpu")
    rows = [{"input_ids": batch["input_ids"][i].tolist(), "labels": batch["labels"][i].tolist(), "sample_index": i}
            for i in range(n_rows)]
    sft_rows = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                                  "completion_mask": [[0] * (seq // 2) + [1] * (seq - seq // 2)] * n_rows})
    times: dict[str, list[float]] = {"procon_vanilla": [], "procon": [], "trl_sft": []}
    bf16 = dtype_name == "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=1e-4,
                      report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=steps, bf16=bf16,
                      use_cpu=not torch.cuda.is_available(), seed=0)
        for _ in range(rounds):
            for kind in times:
                model = build(size, "cuda" if torch.cuda.is_available() else "cpu")
                timer = _StepTimer()
                if kind == "trl_sft":
                    args = SFTConfig(completion_only_loss=True, max_length=seq, packing=False,
                                     dataset_kwargs={"skip_prepare_dataset": False}, **common)
                    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_rows, processing_class=tokenizer,
                                         callbacks=[timer])
                else:
                    method = "procon" if kind == "procon" else "vanilla"
                    n_positions = model.config.num_hidden_layers + 1
                    positions = resolve_positions("paper+output", n_positions)
                    per_sample = seq - seq // 2
                    anchors = Anchors(values=torch.randn(n_rows * per_sample, len(positions)),
                                      offsets=torch.arange(n_rows + 1) * per_sample, positions=positions)
                    directions = torch.nn.functional.normalize(torch.randn(n_positions, model.config.hidden_size),
                                                               dim=-1)
                    args = ProConConfig(procon_method=method, procon_alpha=1.0 if method == "procon" else None,
                                        **common)
                    trainer = ProConTrainer(model=model, args=args, train_dataset=rows,
                                            data_collator=ChatCollator(tokenizer.pad_token_id),
                                            directions=directions, anchors=anchors if method == "procon" else None,
                                            callbacks=[timer])
                trainer.train()
                times[kind] += timer.times[1:]  # the first step of a block pays one-time costs
                del trainer, model
    medians = {kind: 1000 * statistics.median(values) for kind, values in times.items()}
    return {"size": size, **{f"{k}_ms": v for k, v in medians.items()},
            "procon_vs_trl": medians["procon"] / medians["trl_sft"],
            "vanilla_vs_trl": medians["procon_vanilla"] / medians["trl_sft"],
            "procon_vs_vanilla": medians["procon"] / medians["procon_vanilla"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["toy", "25m", "110m"], choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method and size")
    parser.add_argument("--seq", type=int, default=256, help="sequence length")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model weights' dtype")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory subprocesses")
    parser.add_argument("--trainers", action="store_true", help="also compare Trainer steps with TRL's SFTTrainer")
    parser.add_argument("--trainer-rounds", type=int, default=3, help="alternating blocks per trainer")
    parser.add_argument("--trainer-steps", type=int, default=6, help="steps per block (the first is not timed)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.sizes[0], args.seq, args.batch)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"seq {args.seq}, batch {args.batch}, {args.steps} interleaved steps each")
    print(f"{'size':>5} {'params(M)':>9} {'vanilla ms':>10} {'procon ms':>9} {'step ratio':>10} "
          f"{'mem ratio':>9} {'mem increase ratio':>18}")
    for size in args.sizes:
        r = bench_size(size, args.steps, args.seq, args.batch, device, DTYPES[args.dtype], not args.no_memory)
        memory = f"{r['memory_ratio']:.3f}" if r["memory_ratio"] else "n/a"
        increase = f"{r['memory_increase_ratio']:.3f}" if r["memory_increase_ratio"] else "n/a"
        print(f"{r['size']:>5} {r['parameters_m']:>9} {r['vanilla_ms']:>10.1f} {r['procon_ms']:>9.1f} "
              f"{r['step_ratio']:>10.3f} {memory:>9} {increase:>18}", flush=True)
    if args.trainers:
        print(f"\nTrainer steps, median of {args.trainer_rounds} blocks x {args.trainer_steps - 1} timed steps:")
        print(f"{'size':>5} {'TRL SFT ms':>10} {'vanilla ms':>10} {'procon ms':>9} {'procon/TRL':>10} "
              f"{'vanilla/TRL':>11} {'procon/vanilla':>14}")
        for size in args.sizes:
            r = bench_trainers(size, args.trainer_rounds, args.trainer_steps, args.seq, args.batch, args.dtype)
            print(f"{size:>5} {r['trl_sft_ms']:>10.1f} {r['procon_vanilla_ms']:>10.1f} {r['procon_ms']:>9.1f} "
                  f"{r['procon_vs_trl']:>10.3f} {r['vanilla_vs_trl']:>11.3f} {r['procon_vs_vanilla']:>14.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
