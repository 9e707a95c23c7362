"""Refusal-direction drift: cos(r_base, r_tuned) per position for fine-tuned checkpoints.

    procon drift --model M --adapters A1 A2 --harmful FILE --harmless FILE --out DIR

Each adapter is applied to the base model and r is extracted again on the same prompts.
A cosine of 1 means the direction did not move, and lower means more drift.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from procon.directions import Directions, cosine_per_position, extract_directions, json_safe
from procon.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def measure_drift(model, tokenizer, adapters: list[str], harmful: list[str], harmless: list[str],
                  base: Directions | None = None, batch_size: int = 32, progress: bool = True) -> dict:
    """Return {'positions': [...], 'base_degenerate': [...], 'rows': [{'adapter', 'cos': [...]}]}."""
    from procon.run import load_adapter

    if base is None:
        base, _ = extract_directions(model, tokenizer, harmful, harmless, batch_size, progress=progress)
    rows = []
    peft_model = None
    for adapter in adapters:
        if peft_model is None:
            peft_model = load_adapter(model, adapter)
            name = "default"
        else:
            name = f"a{len(rows)}"
            load_adapter(peft_model, adapter, adapter_name=name)
        peft_model.set_adapter(name)
        tuned, _ = extract_directions(peft_model, tokenizer, harmful, harmless, batch_size, progress=progress)
        cos = cosine_per_position(base.vectors, tuned.vectors)
        rows.append({"adapter": str(adapter), "cos": cos})
        logger.info("drift %s: min cos %.4f", adapter, min((c for c in cos if c == c), default=float("nan")))
        if name != "default":
            peft_model.set_adapter("default")  # deleting the active adapter makes PEFT warn
            peft_model.delete_adapter(name)
    if peft_model is not None:
        peft_model.unload()
    return {"positions": list(range(base.n_positions)),
            "base_degenerate": base.metadata.get("degenerate_positions", []),
            "rows": rows,
            "direction": "higher is closer to the base model's refusal direction (1 = no drift)"}


def min_cos(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return min(finite) if finite else float("nan")


def write_drift(out_dir: Path, drift: dict, labels: list[str] | None = None, title: str = "Refusal-direction drift") -> str:
    """Write drift.csv, drift.json and drift.png; return the terminal table."""
    from procon.report import format_table, plot_heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = labels or [row["adapter"] for row in drift["rows"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["checkpoint"] + [f"pos{p}" for p in drift["positions"]])
    table_rows = []
    for label, row in zip(labels, drift["rows"]):
        writer.writerow([label] + [f"{c:.6f}" for c in row["cos"]])
        table_rows.append({"checkpoint": label, **{f"pos{p}": c for p, c in zip(drift["positions"], row["cos"])},
                           "min": min_cos(row["cos"])})
    atomic_write_text(out_dir / "drift.csv", buffer.getvalue())
    atomic_write_json(out_dir / "drift.json", json_safe({**drift, "labels": labels}))
    if drift["rows"]:
        plot_heatmap([row["cos"] for row in drift["rows"]], labels, drift["positions"], out_dir / "drift.png",
                     title=title, xlabel="residual position (block input; last = final block output)")
    return format_table(table_rows, float_format="{:.4f}")
