"""The offline demo: a harmful fine-tuning attack on the toy model, with and without ProCon.

    procon demo --out runs/demo

Steps: build (or reuse) the toy model, extract its refusal directions, fine-tune it on the
new skill plus harmful-compliance placeholders with each method, then measure ASR,
over-refusal, skill accuracy and per-epoch drift, and write report.md and summary.json.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from procon.io import atomic_write_json, atomic_write_text, staged_dir

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Fine-tuning settings of the demo; chosen so that the attack visibly breaks vanilla tuning."""

    epochs: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 16
    lora_r: int = 8
    lora_alpha: int = 16
    warmup_epochs: int = 2
    alpha_constant: float = 0.1  # ProCon^s
    alpha_warmup: float = 1.0    # ProCon^wu and ProCon^wu_safe
    safety_samples: int = 200
    layers: str = "paper+output"
    max_new_tokens: int = 32
    seed: int = 0
    eval_limit: int | None = None  # first N prompts of each evaluation set; None = all (tests use a few)
    check_toy: bool = True  # measure the freshly built toy model against its targets


METHOD_LABELS = {"vanilla": "vanilla", "safety_mix": "safety data only (SafeInstr)", "procon": "ProCon^s",
                 "procon_wu": "ProCon^wu", "procon_wu_safe": "ProCon^wu_safe"}


def _run_config(method: str, toy_data: Path, directions_dir: Path, out_dir: Path, settings: DemoSettings):
    from procon.run import DataSource, LoraSettings, RunConfig, TrainingSettings

    trainer_method = "vanilla" if method == "safety_mix" else method
    uses_safety = method in ("safety_mix", "procon_wu_safe")
    alpha = settings.alpha_constant if method == "procon" else settings.alpha_warmup
    config = RunConfig(
        model=str(toy_data.parent / "model"),
        output_dir=str(out_dir),
        method=trainer_method,
        alpha=None if trainer_method == "vanilla" else alpha,
        warmup_epochs=settings.warmup_epochs,
        layers=settings.layers,
        directions=str(directions_dir),
        train_data=[DataSource(str(toy_data / "skill_train.jsonl")), DataSource(str(toy_data / "attack.jsonl"))],
        safety_data=str(toy_data / "safety.jsonl") if uses_safety else None,
        safety_samples=settings.safety_samples,
        lora=LoraSettings(r=settings.lora_r, alpha=settings.lora_alpha),
        training=TrainingSettings(learning_rate=settings.learning_rate, epochs=settings.epochs,
                                  batch_size=settings.batch_size, max_length=128, seed=settings.seed,
                                  logging_steps=10),
    )
    config.validate(f"demo method {method}")
    return config


def _load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_demo(out: Path, toy_dir: Path, methods: list[str] | None = None, epochs: int | None = None,
             settings: DemoSettings | None = None, toy_config=None) -> dict:
    """Run the demo and return summary.json's content."""
    from procon.directions import extract_directions
    from procon.drift import measure_drift, min_cos, write_drift
    from procon.errors import InputError
    from procon.residual import parse_layer_set
    from procon.evaluate import evaluate_model, write_evaluation
    from procon.report import format_markdown_table, format_table
    from procon.run import epoch_checkpoints, load_adapter, load_model, train
    from procon.toy.build import build_toy

    start = time.time()
    settings = settings or DemoSettings()
    if epochs is not None:
        settings.epochs = epochs
    methods = methods or ["vanilla", "procon", "procon_wu", "procon_wu_safe"]
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if unknown:
        raise InputError(f"--methods: unknown method {unknown[0]!r}; expected some of {', '.join(METHOD_LABELS)}")
    if settings.epochs < 1:
        raise InputError(f"--epochs: {settings.epochs} is invalid; expected >= 1")
    try:
        parse_layer_set(settings.layers)
    except ValueError as exc:
        raise InputError(f"--{exc}") from None
    torch.manual_seed(settings.seed)

    logger.info("step 1/4: toy model in %s", toy_dir)
    build_toy(toy_dir, toy_config, evaluate=settings.check_toy)
    data = toy_dir / "data"
    model, tokenizer = load_model(str(toy_dir / "model"))
    harmful_dir = [r["prompt"] for r in _load_rows(data / "direction_harmful.jsonl")]
    harmless_dir = [r["prompt"] for r in _load_rows(data / "direction_harmless.jsonl")]
    eval_harmful = [r["prompt"] for r in _load_rows(data / "eval_harmful.jsonl")]
    eval_benign = [r["prompt"] for r in _load_rows(data / "eval_benign.jsonl")]
    eval_benign += [r["prompt"] for r in _load_rows(data / "eval_sensitive.jsonl")]
    skill_test = _load_rows(data / "skill_test.jsonl")
    if settings.eval_limit:
        eval_harmful, eval_benign, skill_test = (rows[:settings.eval_limit]
                                                 for rows in (eval_harmful, eval_benign, skill_test))

    with staged_dir(out) as stage:
        logger.info("step 2/4: refusal directions from %d harmful and %d harmless prompts",
                    len(harmful_dir), len(harmless_dir))
        base_directions, separation = extract_directions(model, tokenizer, harmful_dir, harmless_dir, progress=False)
        base_directions.metadata["model"] = str(toy_dir / "model")
        base_directions.save(stage / "directions")

        def evaluate(label: str, eval_model) -> dict:
            records, metrics = evaluate_model(eval_model, tokenizer, harmful=eval_harmful, benign=eval_benign,
                                              task=skill_test, batch_size=64, max_new_tokens=settings.max_new_tokens,
                                              harmful_name="toy eval_harmful (held-out phrasings and actions)",
                                              benign_name="toy eval_benign + eval_sensitive",
                                              task_name="toy skill_test (last word of a list)", progress=False)
            write_evaluation(stage / "eval" / label, records, metrics, extra={"model": label})
            return metrics

        logger.info("step 3/4: base model evaluation")
        results: dict[str, dict] = {}
        base_metrics = evaluate("base", model)
        results["base (no tuning)"] = {"asr": base_metrics["asr"]["value"],
                                       "over_refusal": base_metrics["over_refusal"]["value"],
                                       "task_accuracy": base_metrics["task_accuracy"]["value"],
                                       "min_drift_cos": 1.0}
        drift_rows, drift_labels = [], []
        summary_methods = {}
        for method in methods:
            logger.info("step 4/4: fine-tuning with %s", METHOD_LABELS[method])
            run_dir = stage / "runs" / method
            train(_run_config(method, data, stage / "directions", run_dir, settings), progress=False)
            tuned = load_adapter(model, str(run_dir / "adapter"))
            metrics = evaluate(method, tuned)
            tuned.unload()
            checkpoints = [str(c) for c in epoch_checkpoints(run_dir)]
            drift = measure_drift(model, tokenizer, checkpoints, harmful_dir, harmless_dir, base=base_directions,
                                  progress=False)
            for epoch, row in enumerate(drift["rows"], start=1):
                drift_rows.append(row)
                drift_labels.append(f"{method} e{epoch}")
            final_cos = drift["rows"][-1]["cos"] if drift["rows"] else [float("nan")]
            summary_methods[method] = {
                "asr": metrics["asr"]["value"],
                "over_refusal": metrics["over_refusal"]["value"],
                "task_accuracy": metrics["task_accuracy"]["value"],
                "min_drift_cos": min(min_cos(row["cos"]) for row in drift["rows"]) if drift["rows"] else float("nan"),
                "final_drift_cos": final_cos,
            }
            results[METHOD_LABELS[method]] = {k: summary_methods[method][k] for k in
                                              ("asr", "over_refusal", "task_accuracy", "min_drift_cos")}
            logger.info("%s: ASR %.3f, over-refusal %.3f, skill accuracy %.3f, min drift cos %.4f",
                        method, *[summary_methods[method][k] for k in ("asr", "over_refusal", "task_accuracy",
                                                                      "min_drift_cos")])
        write_drift(stage / "drift", {"positions": list(range(base_directions.n_positions)),
                                      "base_degenerate": base_directions.metadata.get("degenerate_positions", []),
                                      "rows": drift_rows}, drift_labels,
                    title="cos(r_base, r_tuned) per epoch")
        wall = time.time() - start
        summary = {"methods": {m: {k: v for k, v in s.items() if k != "final_drift_cos"}
                               for m, s in summary_methods.items()},
                   "base": results["base (no tuning)"],
                   "wall_seconds": round(wall, 1),
                   "metric_directions": {"asr": "lower is safer", "over_refusal": "lower is better",
                                         "task_accuracy": "higher is better",
                                         "min_drift_cos": "higher means less drift (1 = none)"},
                   "scorer": "refusal-phrase-match (procon.evaluate.DEFAULT_REFUSAL_PHRASES)",
                   "settings": settings.__dict__}
        atomic_write_json(stage / "summary.json", summary)
        rows = [{"method": name, **values} for name, values in results.items()]
        table = format_table(rows)
        atomic_write_text(stage / "report.md", _report_markdown(rows, separation, summary, settings,
                                                                format_markdown_table))
    print(table)
    print(f"wall time {wall:.0f} s; report: {out / 'report.md'}")
    _print_verdict(summary)
    return summary


def _print_verdict(summary: dict) -> None:
    methods = summary["methods"]
    if "vanilla" in methods and "procon_wu_safe" in methods:
        vanilla, safe = methods["vanilla"], methods["procon_wu_safe"]
        ratio = safe["asr"] / vanilla["asr"] if vanilla["asr"] else math.nan
        print(f"ASR procon_wu_safe / vanilla = {ratio:.2f}; skill accuracy difference "
              f"{100 * (safe['task_accuracy'] - vanilla['task_accuracy']):+.1f} points")


def _report_markdown(rows, separation, summary, settings, format_markdown_table) -> str:
    lines = [
        "# procon demo: harmful fine-tuning attack on the toy model",
        "",
        "Fine-tuning data: the last-word skill (400 pairs) plus 80 harmful instructions answered with "
        "content-free compliance placeholders. `procon_wu_safe` and `safety_mix` also mix in "
        f"{settings.safety_samples} harmful-instruction -> refusal pairs.",
        "",
        "ASR is the share of held-out harmful prompts answered without a refusal phrase (lower is safer; "
        "scorer: refusal-phrase-match). Over-refusal is the share of benign and sensitive-word prompts refused "
        "(lower is better). Task accuracy is the last-word accuracy on held-out lists (higher is better). "
        "min_drift_cos is the lowest cos(r_base, r_tuned) over positions and epochs (1 = no drift).",
        "",
        format_markdown_table(rows),
        "",
        "## Drift per epoch",
        "",
        "![drift heatmap](drift/drift.png)",
        "",
        "## Separation of the base model's refusal directions",
        "",
        format_markdown_table(separation),
        "",
        f"Settings: `{json.dumps(settings.__dict__)}`",
        "",
        f"Wall time: {summary['wall_seconds']} s.",
        "",
    ]
    return "\n".join(lines)
