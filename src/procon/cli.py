"""The `procon` command line: toy build, direction, train, drift, eval, grid and demo.

Bad input ends with one line on stderr (`procon: error: ...`) and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from procon.errors import InputError

logger = logging.getLogger("procon")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; expected an integer >= 1")
    return value


def _add_data_args(parser: argparse.ArgumentParser, name: str, required: bool, help_text: str) -> None:
    parser.add_argument(f"--{name}", required=required, help=help_text)
    parser.add_argument(f"--{name}-field", default=None, help=f"column or key of the prompt text in --{name}")
    parser.add_argument(f"--{name}-limit", type=positive_int, default=None, help=f"use only the first N rows of --{name}")


def _prompts(args, name: str) -> list[str] | None:
    from procon.data import load_prompts

    source = getattr(args, name.replace("-", "_"))
    if source is None:
        return None
    key = name.replace("-", "_")
    return load_prompts(source, field=getattr(args, f"{key}_field"), limit=getattr(args, f"{key}_limit"))


def cmd_toy_build(args) -> None:
    from procon.toy.build import ToyBuildConfig, build_toy

    args.out = args.out or ("runs/micro" if args.recipe == "real" else "runs/toy")
    if args.recipe == "real":
        from procon.toy.real import RealBuildConfig, build_real

        if not args.data:
            raise InputError("--recipe real needs --data, the folder of public datasets (AdvBench, Alpaca, ...)")
        out = build_real(args.out, args.data, RealBuildConfig(seed=args.seed), force=args.force)
        print(f"micro model: {out / 'model'}")
        print(f"data:        {out / 'data'} (build_*, direction_*, eval_*, sst2_*, ag_news_*, attack, "
              "safety_reserved as JSONL)")
    else:
        if args.data:
            raise InputError("--data is only used with --recipe real")
        out = build_toy(args.out, ToyBuildConfig(seed=args.seed), force=args.force)
        print(f"toy model: {out / 'model'}")
        print(f"toy data:  {out / 'data'} (harmful_train/direction_*, eval_*, skill_*, attack, safety as JSONL)")
    checks = _read_json(out / "build_info.json").get("checks")
    if checks:
        from procon.report import format_table

        print(format_table([{"check": key, "value": value} for key, value in checks.items()
                            if isinstance(value, (int, float))]))


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def cmd_direction(args) -> None:
    from procon.directions import extract_directions
    from procon.io import sha256_file, staged_dir
    from procon.report import format_table
    from procon.run import load_model

    harmful = _prompts(args, "harmful")
    harmless = _prompts(args, "harmless")
    model, tokenizer = load_model(args.model)
    directions, report = extract_directions(model, tokenizer, harmful, harmless, batch_size=args.batch_size)
    directions.metadata["model"] = args.model
    directions.metadata["data"] = {
        role: {"source": source, "sha256": sha256_file(source) if Path(source).is_file() else None, "count": count}
        for role, source, count in (("harmful", args.harmful, len(harmful)), ("harmless", args.harmless, len(harmless)))
    }
    with staged_dir(args.out) as stage:
        directions.save(stage)
    print(format_table(report, float_format="{:.3f}"))
    print(f"wrote {Path(args.out) / 'directions.safetensors'} [{directions.n_positions}, {directions.hidden_size}]")


def cmd_train(args) -> None:
    from procon.run import load_run_config, parse_override, train

    flag_fields = {
        "model": args.model, "output_dir": args.out, "method": args.method, "alpha": args.alpha,
        "warmup_epochs": args.warmup_epochs, "layers": args.layers, "directions": args.directions,
        "direction_harmful": args.direction_harmful, "direction_harmless": args.direction_harmless,
        "safety_data": args.safety_data, "safety_samples": args.safety_samples,
        "training.epochs": args.epochs, "training.learning_rate": args.lr, "training.batch_size": args.batch_size,
        "training.seed": args.seed, "lora.r": args.lora_r, "lora.alpha": args.lora_alpha,
        "train_data": args.train_data,
    }
    # Flags first, then --set, so that --set can refine a list given by a flag (train_data.0.limit).
    overrides = {key: value for key, value in flag_fields.items() if value is not None}
    overrides.update(parse_override(item) for item in args.set or [])
    config = load_run_config(args.config, overrides)
    out = train(config)
    print(f"adapter: {out / 'adapter'}")
    print(f"metrics: {out / 'metrics.jsonl'}")


def _expand_adapters(paths: list[str]) -> tuple[list[str], list[str]]:
    """Expand run directories into their per-epoch checkpoints; return (adapters, labels)."""
    from procon.run import epoch_checkpoints

    adapters, labels = [], []
    for path in paths:
        run_dir = Path(path)
        checkpoints = epoch_checkpoints(run_dir) if (run_dir / "checkpoints").is_dir() else []
        if checkpoints:
            for epoch, checkpoint in enumerate(checkpoints, start=1):
                adapters.append(str(checkpoint))
                labels.append(f"{run_dir.name} e{epoch}")
        elif (run_dir / "adapter").is_dir():
            adapters.append(str(run_dir / "adapter"))
            labels.append(run_dir.name)
        else:
            adapters.append(path)
            labels.append(run_dir.name)
    return adapters, labels


def cmd_drift(args) -> None:
    from procon.directions import Directions
    from procon.drift import measure_drift, write_drift
    from procon.io import staged_dir
    from procon.run import load_model

    harmful = _prompts(args, "harmful")
    harmless = _prompts(args, "harmless")
    model, tokenizer = load_model(args.model)
    base = None
    if args.directions:
        base = Directions.load(args.directions)
        base.check_model(model, args.directions)
    adapters, labels = _expand_adapters(args.adapters)
    drift = measure_drift(model, tokenizer, adapters, harmful, harmless, base=base, batch_size=args.batch_size)
    with staged_dir(args.out) as stage:
        table = write_drift(stage, drift, labels)
    print(table)
    print(f"wrote {Path(args.out) / 'drift.csv'} and drift.png")


def cmd_eval(args) -> None:
    from procon.data import load_task
    from procon.evaluate import RefusalPhraseScorer, evaluate_model, write_evaluation
    from procon.io import staged_dir
    from procon.report import format_table
    from procon.run import load_adapter, load_model

    harmful = _prompts(args, "harmful")
    benign = _prompts(args, "benign")
    task = load_task(args.task, prompt_field=args.task_field, answer_field=args.task_answer_field,
                     limit=args.task_limit) if args.task else None
    scorer = RefusalPhraseScorer.from_file(args.refusal_phrases) if args.refusal_phrases else RefusalPhraseScorer()
    model, tokenizer = load_model(args.model)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and args.max_new_tokens >= context:
        raise InputError(f"--max-new-tokens {args.max_new_tokens} is invalid; the model's context is {context} tokens")
    if args.adapter:
        model = load_adapter(model, args.adapter)
    records, metrics = evaluate_model(model, tokenizer, harmful=harmful, benign=benign, task=task, scorer=scorer,
                                      match_mode=args.match, batch_size=args.batch_size,
                                      max_new_tokens=args.max_new_tokens, harmful_name=args.harmful or "harmful",
                                      benign_name=args.benign or "benign", task_name=args.task or "task")
    with staged_dir(args.out) as stage:
        write_evaluation(stage, records, metrics, extra={"model": args.model, "adapter": args.adapter})
    rows = [{"metric": name, "value": m["value"], "n": m["n"], "direction": m["direction"], "scorer": m["scorer"]}
            for name, m in metrics.items() if isinstance(m, dict) and "value" in m]
    print(format_table(rows))
    print(f"wrote {Path(args.out) / 'metrics.json'} and generations.jsonl")


def cmd_grid(args) -> None:
    from procon.grid import run_grid

    summary = run_grid(args.config, quick=args.quick,
                       overrides={"out": args.out, "data": args.data, "model_dir": args.model_dir})
    out = Path(summary["config"]["out"])
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


def cmd_demo(args) -> None:
    from procon.demo import run_demo

    from procon.demo import DemoSettings

    settings = DemoSettings(seed=args.seed, layers=args.layers)
    run_demo(out=Path(args.out), toy_dir=Path(args.toy_dir), methods=args.methods, epochs=args.epochs,
             settings=settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", help="the built-in toy world").add_subparsers(dest="toy_command", required=True)
    toy_build = toy.add_parser("build", help="build the toy aligned chat model and its data (cached)")
    toy_build.add_argument("--out", default=None,
                           help="output directory (model/ and data/); default runs/toy, or runs/micro with --recipe real")
    toy_build.add_argument("--recipe", choices=["toy", "real"], default="toy",
                           help="toy: the synthetic toy world; real: a micro chat model from the real datasets in --data")
    toy_build.add_argument("--data", default=None, help="with --recipe real: the folder of public datasets (advbench/, alpaca_sample_1k/, ...)")
    toy_build.add_argument("--seed", type=int, default=0, help="seed for data and training")
    toy_build.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    toy_build.set_defaults(func=cmd_toy_build)

    direction = sub.add_parser("direction", help="extract per-layer refusal directions")
    direction.add_argument("--model", required=True, help="model directory or hub id")
    _add_data_args(direction, "harmful", True, "harmful instructions (csv, tsv, json, jsonl, txt or hub id)")
    _add_data_args(direction, "harmless", True, "harmless instructions")
    direction.add_argument("--out", required=True, help="output directory")
    direction.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward pass")
    direction.set_defaults(func=cmd_direction)

    tr = sub.add_parser("train", help="LoRA fine-tuning with or without the ProCon constraint")
    tr.add_argument("--config", help="YAML run config; flags below override its fields")
    tr.add_argument("--model", help="base model directory or hub id")
    tr.add_argument("--out", help="output directory for the adapter, config and metrics")
    tr.add_argument("--method", choices=["vanilla", "procon", "procon_wu", "procon_wu_safe"],
                    help="vanilla: plain LoRA; procon: constant alpha (ProCon^s); procon_wu: alpha for the first "
                         "--warmup-epochs, then 0; procon_wu_safe: procon_wu plus --safety-data pairs")
    tr.add_argument("--alpha", type=float, help="weight of the ProCon term")
    tr.add_argument("--warmup-epochs", type=int, help="epochs with the constraint on (warm-up methods)")
    tr.add_argument("--layers", help="paper, paper+output, last, or comma-separated positions")
    tr.add_argument("--directions", help="directions directory from `procon direction`")
    tr.add_argument("--direction-harmful", help="harmful prompts to extract directions from, if --directions is unset")
    tr.add_argument("--direction-harmless", help="harmless prompts to extract directions from")
    tr.add_argument("--train-data", nargs="+", help="prompt/response files to train on")
    tr.add_argument("--safety-data", help="harmful instruction -> refusal pairs, or 'toy'")
    tr.add_argument("--safety-samples", type=int, help="how many safety pairs to mix in")
    tr.add_argument("--epochs", type=float, help="training epochs")
    tr.add_argument("--lr", type=float, help="learning rate")
    tr.add_argument("--batch-size", type=int, help="per-device batch size")
    tr.add_argument("--seed", type=int, help="random seed")
    tr.add_argument("--lora-r", type=int, help="LoRA rank")
    tr.add_argument("--lora-alpha", type=int, help="LoRA scaling numerator")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field, e.g. training.max_length=256")
    tr.set_defaults(func=cmd_train)

    drift = sub.add_parser("drift", help="cos(r_base, r_tuned) per layer for fine-tuned adapters")
    drift.add_argument("--model", required=True, help="base model")
    drift.add_argument("--adapters", nargs="+", required=True,
                       help="adapter directories, or run directories (expanded to per-epoch checkpoints)")
    _add_data_args(drift, "harmful", True, "harmful instructions")
    _add_data_args(drift, "harmless", True, "harmless instructions")
    drift.add_argument("--directions", help="base directions to compare against (default: extract again)")
    drift.add_argument("--out", required=True, help="output directory")
    drift.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward pass")
    drift.set_defaults(func=cmd_drift)

    ev = sub.add_parser("eval", help="generate and score: ASR, over-refusal, task accuracy")
    ev.add_argument("--model", required=True, help="base model")
    ev.add_argument("--adapter", help="PEFT adapter to apply")
    _add_data_args(ev, "harmful", True, "harmful instructions")
    _add_data_args(ev, "benign", False, "benign instructions for over-refusal")
    _add_data_args(ev, "task", False, "task prompts with reference answers")
    ev.add_argument("--task-answer-field", default=None, help="column or key of the answer in --task")
    ev.add_argument("--match", default="prefix", choices=["exact", "prefix", "contains"], help="task answer matching")
    ev.add_argument("--refusal-phrases", help="file with one refusal phrase per line (default: built-in list)")
    ev.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per response")
    ev.add_argument("--batch-size", type=positive_int, default=32, help="prompts per generation batch")
    ev.add_argument("--out", required=True, help="output directory")
    ev.set_defaults(func=cmd_eval)

    grid = sub.add_parser("grid", help="micro-reproduction grid on real data: every method, scenario and seed")
    grid.add_argument("--config", required=True, help="grid YAML file, e.g. configs/micro_repro.yaml")
    grid.add_argument("--quick", action="store_true", help="apply the config's 'quick' section (a reduced grid)")
    grid.add_argument("--out", default=None, help="output directory (overrides the config's 'out')")
    grid.add_argument("--data", default=None, help="shared data folder (overrides the config's 'data')")
    grid.add_argument("--model-dir", default=None, help="micro model directory (overrides 'model_dir')")
    grid.set_defaults(func=cmd_grid)

    demo = sub.add_parser("demo", help="toy model end to end: vanilla vs ProCon under a fine-tuning attack")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--toy-dir", default="runs/toy", help="where the toy model is built or cached")
    demo.add_argument("--methods", nargs="+", default=["vanilla", "procon", "procon_wu", "procon_wu_safe"],
                      help="methods to compare; safety_mix is vanilla tuning with the safety pairs mixed in")
    demo.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed of LoRA initialisation and data order")
    demo.add_argument("--layers", default="paper+output", help="anchored positions: paper, paper+output, last")
    demo.set_defaults(func=cmd_demo)
    return parser


def _close_progress_bars() -> None:
    # Closing open bars ends their line, so the next message starts on a line of its own.
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def _fail(message: str) -> int:
    _close_progress_bars()
    print(f"procon: error: {message}", file=sys.stderr)
    return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that staged output directories are removed."""


def _raise_interrupt(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # SIGTERM ends the run like Ctrl-C, so staged output directories are removed on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if getattr(args, "out", None):
            from procon.io import check_output_dir

            check_output_dir(args.out)
        args.func(args)
    except (InputError, FloatingPointError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        print("procon: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
