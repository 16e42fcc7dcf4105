"""make bench-recipe's verdicts from experiment results: Muon's two targets and the ablation findings, stated
whether or not they reproduce; an earlier experiment directory is reported again without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.benchmarks.recipe import (
    EXPERIMENTS,
    RecipeResult,
    ablation_findings,
    format_report,
    optimizer_checks,
    prepared_prose,
    recipe_findings,
)
from utils.core.errors import ConfigError, DataError
from utils.sessions.experiment import ExperimentResult, RunResult, load_experiment, read_result


def _run(name: str, variant: str, losses: list[float], status: str = "ok") -> RunResult:
    curve = [{"step": i + 1, "tokens_seen": 1000 * (i + 1), "elapsed_s": 10.0 * (i + 1), "val_loss": loss}
             for i, loss in enumerate(losses)]
    return RunResult(name=name, variant=variant, flags={}, status=status, max_steps=len(losses), curve=curve,
                     tokens_per_s=100.0, wall_s=10.0 * len(losses), peak_memory_mb=1.0, command="python ...")


def _result(name: str, runs: list[RunResult], directory: Path) -> ExperimentResult:
    return ExperimentResult(load_experiment(EXPERIMENTS[name]), directory, directory, runs)


def test_muon_targets_use_each_sides_best_run(tmp_path: Path) -> None:
    runs = [_run("adamw-a", "adamw", [5.0, 4.5, 4.0]), _run("adamw-b", "adamw", [5.0, 4.8, 4.6]),
            _run("muon-a", "muon", [4.6, 4.0, 3.5]), _run("muon-b", "muon", [9.0], status="failed (exit 1)")]
    checks = optimizer_checks(_result("optimizers", runs, tmp_path))
    ratio, lower = checks
    assert ratio.value == pytest.approx(2000 / 3000) and ratio.passed  # muon reaches 4.0 at step 2
    assert lower.value == pytest.approx(3.5 / 4.0) and lower.passed


def test_muon_that_never_reaches_adamw_misses_the_target(tmp_path: Path) -> None:
    runs = [_run("adamw", "adamw", [5.0, 4.0]), _run("muon", "muon", [5.0, 4.5])]
    ratio, lower = optimizer_checks(_result("optimizers", runs, tmp_path))
    assert not ratio.passed and not lower.passed


def test_ablation_findings_say_when_they_do_not_reproduce(tmp_path: Path) -> None:
    runs = [_run("baseline", "baseline", [5.0, 4.0]), _run("no_norm", "no_norm", [5.0], status="failed (exit 1)"),
            _run("post_norm", "post_norm", [4.5, 3.9]), _run("nope", "nope", [5.0, 4.2])]
    findings = ablation_findings(_result("ablations", runs, tmp_path))
    assert findings[0].startswith("no norm unstable or worse: reproduced (no_norm failed")
    assert findings[1].startswith("post-norm slower to converge: NOT reproduced")
    assert findings[2].startswith("NoPE worse than RoPE: reproduced")


def test_a_recipe_piece_is_a_gain_only_past_the_noise_margin(tmp_path: Path) -> None:
    runs = [_run("plain", "plain", [5.0, 4.0]), _run("wsd", "wsd", [5.0, 3.98]),
            _run("zero_init", "zero_init", [5.0, 3.995]), _run("default", "default", [5.0], status="failed (exit 1)")]
    assert recipe_findings(_result("recipe", runs, tmp_path)) == [
        "wsd: gain (3.9800 vs plain 4.0000, -0.0200)",
        "zero_init: no gain (3.9950 vs plain 4.0000, -0.0050)",
        "default: no verdict (failed (exit 1))"]


def test_an_earlier_experiment_directory_is_reported_again(tmp_path: Path) -> None:
    runs = [_run("adamw", "adamw", [5.0, 4.0]), _run("muon", "muon", [4.5, 3.5])]
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "optimizers", "data_path": "d",
                                                       "machine": "AMD EPYC, 2 CPUs", "git_sha": "fe7f3b4",
                                                       "runs": [r.__dict__ for r in runs]}))
    experiment = load_experiment(EXPERIMENTS["optimizers"])
    again = read_result(tmp_path, experiment)
    assert [r.final_val_loss for r in again.runs] == [4.0, 3.5]
    report = format_report(RecipeResult("cpu", {"seconds": 600}, {"optimizers": again},
                                        optimizer_checks(again), []))
    assert "muon" in report and "PASS" in report.upper()
    assert "read back from an earlier run: machine AMD EPYC, 2 CPUs, git_sha fe7f3b4" in report
    with pytest.raises(ConfigError, match="not 'ablations'"):
        read_result(tmp_path, load_experiment(EXPERIMENTS["ablations"]))


def test_without_the_mirror_the_benchmark_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUMI_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="LUMI_DATA_DIR"):
        prepared_prose(tmp_path)
