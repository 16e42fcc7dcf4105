"""An experiment's report.md and curves.png: final validation loss and bits per byte, tokens to the baseline's
final loss, tokens/s, wall time and peak memory per variant, the sweep behind each, and every validation curve
against tokens and against wall-clock time."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

from utils.core.artifacts import git_sha, read_json
from utils.sessions.experiment import ExperimentResult, RunResult

PLOT_NAME = "curves.png"


def tokens_to_reach(run: RunResult, target: float) -> float | None:
    """Tokens at which the validation curve first reaches `target`, linearly interpolated between the two
    evaluations around the crossing (None if it never does)."""
    previous: dict[str, float] | None = None
    for point in run.curve:
        if point["val_loss"] <= target:
            if previous is None:
                return float(point["tokens_seen"])
            span = previous["val_loss"] - point["val_loss"]
            fraction = (previous["val_loss"] - target) / span if span > 0 else 1.0
            return previous["tokens_seen"] + fraction * (point["tokens_seen"] - previous["tokens_seen"])
        previous = point
    return None


def bytes_per_token(data_path: Path) -> float | None:
    """Stage 01's measure of the corpus (kept bytes over content tokens), to turn nats/token into bits/byte."""
    stats = data_path / "stats.json"
    return read_json(stats).get("bytes_per_token") if stats.is_file() else None


def bits_per_byte(loss: float | None, per_token: float | None) -> float | None:
    return loss / math.log(2) / per_token if loss is not None and per_token else None


def _number(value: float | None, digits: int, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def summary_rows(result: ExperimentResult) -> list[dict[str, Any]]:
    """One row per variant (its best run), the first variant as the baseline."""
    bests = [result.best(variant) for variant in result.experiment.variants]
    baseline = bests[0].final_val_loss
    per_token = bytes_per_token(result.data_path)
    rows = []
    for run in bests:
        reached = tokens_to_reach(run, baseline) if baseline is not None else None
        baseline_tokens = tokens_to_reach(bests[0], baseline) if baseline is not None else None
        rows.append({"variant": run.variant, "run": run.name, "status": run.status,
                     "final_val_loss": run.final_val_loss, "bits_per_byte": bits_per_byte(run.final_val_loss,
                                                                                          per_token),
                     "tokens_to_baseline": reached,
                     "tokens_ratio": reached / baseline_tokens if reached and baseline_tokens else None,
                     "tokens_per_s": run.tokens_per_s, "wall_s": run.wall_s, "peak_memory_mb": run.peak_memory_mb,
                     "tokens": run.curve[-1]["tokens_seen"] if run.curve else None})
    return rows


def _summary_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | final val loss | bits/byte | tokens to baseline's final loss | vs baseline | tokens "
             "trained | tokens/s | wall time | peak memory | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {_number(row['final_val_loss'], 4)} | {_number(row['bits_per_byte'], 3)} "
                     f"| {_number(row['tokens_to_baseline'], 0)} | {_number(row['tokens_ratio'], 2, 'x')} "
                     f"| {_number(row['tokens'], 0)} | {_number(row['tokens_per_s'], 0)} "
                     f"| {_number(row['wall_s'], 0, ' s')} | {_number(row['peak_memory_mb'], 0, ' MiB')} "
                     f"| {row['status']} |")
    return lines


def _sweep_table(result: ExperimentResult) -> list[str]:
    swept = [v for v in result.experiment.variants if v.sweep]
    if not swept:
        return []
    lines = ["", "## Sweeps", "", "Each variant above is its best run here (lowest final validation loss).", "",
             "| variant | setting | final val loss | steps | tokens/s | status |", "|---|---|---:|---:|---:|---|"]
    for variant in swept:
        ((key, _),) = variant.sweep.items()
        best = result.best(variant).name
        for run in (r for r in result.runs if r.variant == variant.name):
            mark = " (best)" if run.name == best else ""
            lines.append(f"| {variant.name} | {key} = {run.flags[key]}{mark} | {_number(run.final_val_loss, 4)} "
                         f"| {run.max_steps} | {_number(run.tokens_per_s, 0)} | {run.status} |")
    return lines


def plot_curves(result: ExperimentResult, path: Path) -> Path:
    """Validation loss of every variant's best run against tokens (left) and wall-clock seconds (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_tokens, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for variant in result.experiment.variants:
        run = result.best(variant)
        if not run.curve:
            continue
        label = run.name if run.status == "ok" else f"{run.name} ({run.status})"
        losses = [p["val_loss"] for p in run.curve]
        by_tokens.plot([p["tokens_seen"] / 1e6 for p in run.curve], losses, "o-", markersize=3, label=label)
        by_time.plot([p["elapsed_s"] for p in run.curve], losses, "o-", markersize=3, label=label)
    by_tokens.set_xlabel("tokens (millions)")
    by_time.set_xlabel("wall-clock seconds (training and evaluation)")
    by_tokens.set_ylabel("validation loss (nats/token)")
    for axis in (by_tokens, by_time):
        axis.grid(alpha=0.3)
    by_tokens.legend()
    fig.suptitle(f"experiment {result.experiment.name}")
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def machine() -> str:
    """The device the runs trained on: the GPU's name, or the CPU's model and core count."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"{model}, {os.cpu_count()} CPUs, no GPU"


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


def write_report(result: ExperimentResult) -> Path:
    experiment = result.experiment
    rows = summary_rows(result)
    plot_curves(result, result.directory / PLOT_NAME)
    info = machine()
    lines = [f"# Experiment `{experiment.name}`", "", experiment.description, "",
             f"Preset `{experiment.preset}`, data `{result.data_path}`, budget {experiment.budget:g} "
             f"{experiment.budget_kind} per run, same seed for every run, each in a fresh process. Machine: {info}. "
             f"Code: commit {(git_sha() or 'unknown')[:10]}.",
             f"Baseline: `{experiment.variants[0].name}`. Bits per byte use the corpus' bytes per token "
             f"(stage 01 stats.json).", "", *_summary_table(rows), *_sweep_table(result), "",
             f"![validation curves]({PLOT_NAME})", "", "## Commands", ""]
    lines += [f"- `{run.name}`: `{run.command}`" for run in result.runs]
    path = result.directory / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
