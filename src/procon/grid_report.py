"""Tables, figures and the paper-claim verdicts of a `procon grid` run (results.md beside results.json)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from procon.io import atomic_write_text
from procon.report import format_markdown_table, plot_heatmap

KEY_ROWS = ("vanilla", "safeinstr", "procon_wu_safe")


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Return the mean and sample standard deviation of the finite values (std 0 for one value)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def _fmt(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def min_cos_over_epochs(rows: list[list[float]]) -> float:
    """Return the lowest finite cosine over every layer and epoch of a run."""
    from procon.drift import min_cos

    return min_cos([c for row in rows for c in row])


def group_runs(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs by (scenario, run name), seeds together, in grid order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["scenario"], run["run"])].append(run)
    return groups


def aggregate(runs: list[dict]) -> dict:
    """Mean and std over seeds of the headline numbers of one grid row."""
    row = {"n": len(runs)}
    for key in ("asr_mean", "over_refusal", "task_accuracy"):
        row[key] = _mean_std([r[key] for r in runs])
    row["min_drift_cos"] = _mean_std([min_cos_over_epochs(r["drift_cos"]) for r in runs])
    for key in runs[0]["asr"]:
        row[f"asr:{key}"] = _mean_std([r["asr"][key] for r in runs])
    return row


def main_table(summary: dict, scenario: str) -> list[dict]:
    base = summary["base"]
    rows = [{"method": "base model (no tuning)", "seeds": "-", "ASR mean ↓": f"{base['asr_mean']:.3f}",
             "over-refusal ↓": f"{base['over_refusal']:.3f}", "task acc ↑": f"{base['task_accuracy']:.3f}",
             "min drift cos ↑": "1.000"}]
    for (group_scenario, _), runs in group_runs(summary["runs"]).items():
        if group_scenario != scenario:
            continue
        agg = aggregate(runs)
        rows.append({"method": runs[0]["label"], "seeds": ",".join(str(r["seed"]) for r in runs),
                     "ASR mean ↓": _fmt(*agg["asr_mean"], agg["n"]),
                     "over-refusal ↓": _fmt(*agg["over_refusal"], agg["n"]),
                     "task acc ↑": _fmt(*agg["task_accuracy"], agg["n"]),
                     "min drift cos ↑": _fmt(*agg["min_drift_cos"], agg["n"])})
    return rows


def asr_table(summary: dict, scenario: str) -> list[dict]:
    """ASR per evaluation set and template, seed means."""
    rows = [{"method": "base model (no tuning)", **{k: f"{v:.2f}" for k, v in summary["base"]["asr"].items()}}]
    for (group_scenario, _), runs in group_runs(summary["runs"]).items():
        if group_scenario != scenario:
            continue
        agg = aggregate(runs)
        rows.append({"method": runs[0]["label"],
                     **{k.split(":", 1)[1]: f"{v[0]:.2f}" for k, v in agg.items() if k.startswith("asr:")}})
    return rows


def _find(summary: dict, scenario: str, name: str) -> list[dict]:
    return [r for r in summary["runs"] if r["scenario"] == scenario and r["run"] == name]


def claims(summary: dict, scenario: str = "attack") -> list[dict]:
    """Compare the grid with the qualitative claims of the ProCon paper (arXiv 2509.06795).

    Each verdict is computed from the numbers by the rules below, not written by hand.
    """
    out = []
    vanilla = _find(summary, scenario, "vanilla")
    n_pos = len(summary["positions"])
    if vanilla and vanilla[0]["drift_cos"]:
        drift = [[1 - c for c in row] for row in vanilla[0]["drift_cos"]]
        per_epoch = [_mean(row) for row in drift]
        increments = [b - a for a, b in zip([0.0] + per_epoch[:-1], per_epoch)]
        early = per_epoch[0] / per_epoch[-1] if per_epoch[-1] > 0 else float("nan")
        # Epoch 1 adds more drift than any later epoch.
        early_ok = increments[0] == max(increments)
        half = n_pos // 2
        shallow = [d for d in drift[-1][:half] if d == d]
        deep = [d for d in drift[-1][half:] if d == d]
        deeper = bool(deep and shallow and _mean(deep) > _mean(shallow))
        verdict = _verdict(int(early_ok) + int(deeper), 2)
        steps = ", ".join(f"{value:+.3f}" for value in increments)
        out.append({"claim": "drift grows most in epoch 1 and most in deep layers", "verdict": verdict,
                    "evidence": f"vanilla seed {vanilla[0]['seed']}: mean drift (1 - cos) added per epoch {steps} "
                                f"(epoch 1 is {early:.0%} of the final drift); final drift deep half "
                                f"{_mean(deep):.3f} vs shallow half {_mean(shallow):.3f}"})
    constrained = [r for r in summary["runs"] if r["scenario"] == scenario and r["method"] != "vanilla"
                   and r["layers"] != "last"]
    if vanilla and constrained:
        v_asr, v_cos = _mean([r["asr_mean"] for r in vanilla]), _mean([min_cos_over_epochs(r["drift_cos"]) for r in vanilla])
        by_row = group_runs(constrained)
        lower_asr = sum(_mean([r["asr_mean"] for r in rs]) < v_asr for rs in by_row.values())
        less_drift = sum(_mean([min_cos_over_epochs(r["drift_cos"]) for r in rs]) > v_cos for rs in by_row.values())
        total = len(by_row)
        verdict = _verdict(lower_asr + less_drift, 2 * total)
        out.append({"claim": "the constraint reduces drift and ASR", "verdict": verdict,
                    "evidence": f"of {total} ProCon rows, {lower_asr} have lower mean ASR than vanilla "
                                f"({v_asr:.3f}) and {less_drift} a higher min drift cos ({v_cos:.3f})"})
    safe = _find(summary, scenario, "procon_wu_safe")
    constant = [rs for (s, name), rs in group_runs(summary["runs"]).items()
                if s == scenario and rs[0]["method"] == "procon"]
    if safe and constant:
        safe_asr = _mean([r["asr_mean"] for r in safe])
        const_asr = {rs[0]["label"]: _mean([r["asr_mean"] for r in rs]) for rs in constant}
        wins = sum(safe_asr < v for v in const_asr.values())
        verdict = _verdict(wins, len(const_asr))
        out.append({"claim": "warm-up + safety data beats a constant small α", "verdict": verdict,
                    "evidence": f"ProCon^wu_safe ASR {safe_asr:.3f} vs "
                                + ", ".join(f"{k} {v:.3f}" for k, v in const_asr.items())})
    last = [r for r in summary["runs"] if r["scenario"] == scenario and r["layers"] == "last"]
    if safe and last:
        safe_asr, last_asr = _mean([r["asr_mean"] for r in safe]), _mean([r["asr_mean"] for r in last])
        out.append({"claim": "constraining all layers beats the last layer only",
                    "verdict": "reproduced" if safe_asr < last_asr else "not reproduced",
                    "evidence": f"ProCon^wu_safe (layer set {safe[0]['layers']}) ASR {safe_asr:.3f} vs "
                                f"last layer only {last_asr:.3f}"})
    return out


def _verdict(held: int, checks: int) -> str:
    """Name the verdict when `held` of `checks` comparisons agree with the paper."""
    if held == checks:
        return "reproduced"
    if held == 0:
        return "not reproduced"
    return "mixed"


def _mean(values):
    finite = [v for v in values if v is not None and v == v]
    return sum(finite) / len(finite) if finite else float("nan")


def plot_drift(summary: dict, out: Path, scenario: str = "attack") -> Path | None:
    """Heatmap of cos per layer and epoch, vanilla rows above ProCon^wu_safe rows (first seed)."""
    rows, labels = [], []
    for name in ("vanilla", "procon_wu_safe"):
        found = _find(summary, scenario, name)
        if not found:
            continue
        for epoch, cos in enumerate(found[0]["drift_cos"], 1):
            rows.append(cos)
            labels.append(f"{found[0]['label']} e{epoch}")
    if not rows:
        return None
    path = out / "img" / f"drift-{scenario}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_heatmap(rows, labels, summary["positions"], path, title=f"drift cos(r_base, r_tuned), {scenario} IFT",
                 vmin=None, xlabel="layer (block input; last = final block output)")
    return path


def plot_alpha(summary: dict, out: Path, scenario: str = "attack") -> Path | None:
    """ASR and task accuracy against α for vanilla (α = 0), ProCon^s and ProCon^wu rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from procon.io import atomic_write

    points = []
    for (group_scenario, _), runs in group_runs(summary["runs"]).items():
        run = runs[0]
        if group_scenario != scenario or run["layers"] == "last" or run["safety"]:
            continue
        if run["method"] not in ("vanilla", "procon", "procon_wu"):
            continue
        alpha = 0.0 if run["method"] == "vanilla" else run["alpha"]
        points.append((alpha, _mean([r["asr_mean"] for r in runs]), _mean([r["task_accuracy"] for r in runs]),
                       run["label"]))
    if len(points) < 2:
        return None
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for alpha, asr, task, label in points:
        axes.scatter([alpha], [asr], color="tab:red")
        axes.scatter([alpha], [task], color="tab:blue", marker="s")
        axes.annotate(label, (alpha, asr), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.scatter([], [], color="tab:red", label="ASR mean (lower is safer)")
    axes.scatter([], [], color="tab:blue", marker="s", label="task accuracy (higher is better)")
    axes.set_xscale("symlog", linthresh=0.1)
    axes.set_xlabel("α (0 = vanilla)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"α vs safety and task, {scenario} IFT")
    axes.legend(fontsize=8, loc="center right")
    path = out / "img" / f"alpha-{scenario}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
    return path


def write_report(out: Path, summary: dict) -> str:
    """Write results.md and the figures into `out`; return the markdown."""
    quick_note = ("The quick grid checks that every stage runs. Its model is too small and briefly trained to "
                  "refuse selectively, so its numbers and verdicts say nothing about the method.")
    lines = [f"# procon grid results{' (quick)' if summary['quick'] else ''}", "",
             *([quick_note, ""] if summary["quick"] else []),
             f"Scorer: {summary['scorer']}. ASR: share of harmful prompts answered without a refusal phrase "
             "(lower is safer); 'ASR mean' is the unweighted mean over 3 harmful sets × 3 templates. "
             "Over-refusal: share of JailbreakBench benign prompts refused (lower is better). "
             "Task accuracy: held-out " + summary["config"]["task"] + " (higher is better). min drift cos: "
             "lowest cos(r_base, r_tuned) over layers and epochs (1 = no drift). With several seeds: mean ± std.",
             ""]
    for scenario in ("attack", "benign"):
        if not any(r["scenario"] == scenario for r in summary["runs"]):
            continue
        lines += [f"## {scenario} IFT", "", format_markdown_table(main_table(summary, scenario)), "",
                  "ASR per set / template (seed mean):", "", format_markdown_table(asr_table(summary, scenario)), ""]
        drift = plot_drift(summary, out, scenario)
        if drift:
            lines += [f"![drift {scenario}](img/{drift.name})", ""]
        alpha = plot_alpha(summary, out, scenario)
        if alpha:
            lines += [f"![alpha {scenario}](img/{alpha.name})", ""]
    verdicts = claims(summary)
    if verdicts:
        lines += ["## The paper's claims (attack IFT)", "", format_markdown_table(verdicts), ""]
    lines += [f"Wall time {summary['wall_seconds']:.0f} s; commit {summary['commit']}.", ""]
    text = "\n".join(lines)
    atomic_write_text(out / "results.md", text)
    return text


def load_summary(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())
