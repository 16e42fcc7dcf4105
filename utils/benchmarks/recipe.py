"""The recipe benchmark (`make bench-recipe`): the shipped `optimizers`, `ablations` and `recipe` experiments on
real prose from the LUMI_DATA_DIR mirror: an equal training-time budget per run for the first two, and for the
recipe pieces (none of which changes the cost of a step) the equal token budget of their experiment file.

Targets (optimizers): Muon, at its best of three learning rates, reaches AdamW's final validation loss (AdamW at its
best of three) with at most 0.75x the tokens, and ends lower at the same training time. The ablations carry no
targets: they are reported against what the literature expects (no norm unstable or clearly worse, post-norm slower
to converge, NoPE worse than RoPE), and a finding that does not reproduce is printed as such. A recipe piece counts
as a gain only when it ends at least RECIPE_MIN_GAIN below the plain recipe (the experiment's first variant).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.benchmarks.common import TargetCheck, format_checks, format_table
from utils.core.artifacts import REPO_ROOT
from utils.core.config import load_config
from utils.core.errors import DataError
from utils.core.hub import mirror_root
from utils.sessions.experiment import ExperimentResult, load_experiment, read_result, run_experiment
from utils.sessions.experiment_report import machine, summary_rows

log = logging.getLogger(__name__)

EXPERIMENTS = {name: REPO_ROOT / "config" / "experiments" / f"{name}.json"
               for name in ("optimizers", "ablations", "recipe")}
TIME_BUDGETED = ("optimizers", "ablations")  # --budget_seconds applies to these; recipe keeps its token budget
PROSE_CONFIG = REPO_ROOT / "config" / "datasets" / "british_fiction.json"
MUON_TOKEN_RATIO_TARGET = 0.75
# Final validation loss, in nats: below this a difference is within what one seed against another moves it.
RECIPE_MIN_GAIN = 0.01


def prepared_prose(data_dir: Path) -> Path:
    """The mirror's British fiction, prepared by stage 01 once into `data_dir` (reused when already there)."""
    from utils.data.config import DataConfig
    from utils.data.prepare import prepare_dataset

    if mirror_root() is None:
        raise DataError("make bench-recipe trains on the prose corpus of a local mirror: set LUMI_DATA_DIR to a "
                        "directory holding prose/british-fiction/*.txt")
    path = data_dir / "british_fiction"
    if (path / "manifest.json").is_file():
        log.info("reusing the prepared corpus %s", path)
        return path
    return prepare_dataset(load_config(DataConfig, PROSE_CONFIG, {"output_dir": str(data_dir)}))


@dataclass
class RecipeResult:
    machine: str
    budget: dict[str, float]
    results: dict[str, ExperimentResult]
    checks: list[TargetCheck]
    findings: list[str]


def _rows(result: ExperimentResult) -> dict[str, dict[str, Any]]:
    return {row["variant"]: row for row in summary_rows(result)}


def optimizer_checks(result: ExperimentResult) -> list[TargetCheck]:
    rows = _rows(result)
    adamw, muon = rows["adamw"], rows["muon"]
    ratio = muon["tokens_ratio"] if muon["tokens_ratio"] is not None else math.inf  # inf: never reached
    checks = [TargetCheck("Muon tokens to AdamW's final validation loss, over AdamW's", ratio,
                          MUON_TOKEN_RATIO_TARGET, "x", higher_is_better=False)]
    if muon["final_val_loss"] is not None and adamw["final_val_loss"] is not None:
        checks.append(TargetCheck("Muon final val loss over AdamW's, equal training time",
                                  muon["final_val_loss"] / adamw["final_val_loss"], 1.0, "x", higher_is_better=False))
    return checks


def ablation_findings(result: ExperimentResult) -> list[str]:
    """Each ablation against the expected finding, stated whether or not it reproduced."""
    rows = _rows(result)
    base = rows["baseline"]["final_val_loss"]

    def worse(name: str) -> tuple[bool, str]:
        row = rows[name]
        if row["final_val_loss"] is None:
            return True, f"{name} {row['status']}"
        return row["final_val_loss"] > base, f"{name} {row['final_val_loss']:.4f} vs baseline {base:.4f}"

    findings = []
    no_norm, text = worse("no_norm")
    findings.append(f"no norm unstable or worse: {'reproduced' if no_norm else 'NOT reproduced'} ({text})")
    post = rows["post_norm"]
    slower = post["tokens_ratio"] is None or post["tokens_ratio"] > 1.0
    ratio = "never reached" if post["tokens_ratio"] is None else f"{post['tokens_ratio']:.2f}x the tokens"
    findings.append(f"post-norm slower to converge: {'reproduced' if slower else 'NOT reproduced'} "
                    f"(to the baseline's final loss: {ratio})")
    nope, text = worse("nope")
    findings.append(f"NoPE worse than RoPE: {'reproduced' if nope else 'NOT reproduced'} ({text})")
    return findings


def recipe_findings(result: ExperimentResult) -> list[str]:
    """Each recipe variant against the first (the plain recipe): a gain past the noise margin, or not."""
    rows = list(_rows(result).values())
    base_name, base = rows[0]["variant"], rows[0]["final_val_loss"]
    findings = []
    for row in rows[1:]:
        loss = row["final_val_loss"]
        if loss is None or base is None:
            findings.append(f"{row['variant']}: no verdict ({row['status']})")
            continue
        verdict = "gain" if base - loss >= RECIPE_MIN_GAIN else "no gain"
        findings.append(f"{row['variant']}: {verdict} ({loss:.4f} vs {base_name} {base:.4f}, {loss - base:+.4f})")
    return findings


def run_benchmark(data_dir: Path, budget_seconds: float, which: list[str],
                  reuse: dict[str, Path] | None = None) -> RecipeResult:
    data_path = prepared_prose(data_dir) if set(which) - set(reuse or {}) else Path()
    results = {}
    for name in which:
        budget = ("seconds", budget_seconds) if name in TIME_BUDGETED else None
        experiment = load_experiment(EXPERIMENTS[name], budget)
        if reuse and name in reuse:
            results[name] = read_result(reuse[name], experiment)
        else:
            results[name] = run_experiment(experiment, data_path)
    checks = optimizer_checks(results["optimizers"]) if "optimizers" in results else []
    findings = ablation_findings(results["ablations"]) if "ablations" in results else []
    findings += recipe_findings(results["recipe"]) if "recipe" in results else []
    return RecipeResult(machine(), {"seconds": budget_seconds}, results, checks, findings)


def _table(result: ExperimentResult) -> str:
    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    rows = [[r["run"], number(r["final_val_loss"], 4), number(r["bits_per_byte"], 3),
             number(r["tokens_to_baseline"], 0), number(r["tokens_ratio"], 2), number(r["tokens"], 0),
             number(r["tokens_per_s"], 0), number(r["wall_s"], 0), number(r["peak_memory_mb"], 0), r["status"]]
            for r in summary_rows(result)]
    headers = ["run", "val loss", "bits/byte", "tokens to base", "ratio", "tokens", "tok/s", "wall s", "MiB",
               "status"]
    sweep = [[run.name, number(run.final_val_loss, 4), str(run.max_steps), number(run.tokens_per_s, 0), run.status]
             for run in result.runs]
    return (f"{format_table(headers, rows)}\n\nevery run ({result.directory}):\n"
            f"{format_table(['run', 'val loss', 'steps', 'tok/s', 'status'], sweep)}")


def format_report(result: RecipeResult) -> str:
    parts = [f"Lumi recipe benchmark (stage 02, tiny preset)\nmachine: {result.machine}\n"
             f"budget: {result.budget['seconds']:g} s of training per run (recipe: its file's token budget), same "
             f"data, seed and batch"]
    for name, experiment in result.results.items():
        earlier = f"\nread back from an earlier run: {experiment.provenance}" if experiment.provenance else ""
        parts.append(f"experiment {name} (baseline: first row; data {experiment.data_path}){earlier}\n"
                     f"{_table(experiment)}")
    if result.findings:
        parts.append("findings\n" + "\n".join(f"  {line}" for line in result.findings))
    if result.checks:
        parts.append(format_checks(result.checks))
    return "\n\n".join(parts)
