"""scripts/experiment.py: two 20-step variants write the report table and the curves; a seconds budget is
calibrated per variant; bad experiment files fail before any training."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from utils.core.errors import ConfigError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.sessions.experiment import CALIBRATION_SKIP, CALIBRATION_STEPS, RunResult, load_experiment
from utils.sessions.experiment_report import tokens_to_reach

REPO = Path(__file__).resolve().parents[2]
STEPS = 20
TOKENS_PER_STEP = 4 * 32  # batch 4 x 32 tokens
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = DataConfig(name="demo", source="demo", demo_num_stories=300, vocab_size=400, max_length=64,
                        num_workers=0, output_dir=str(tmp_path_factory.mktemp("data")))
    return prepare_dataset(config)


def _preset(directory: Path) -> Path:
    path = directory / "preset.json"
    path.write_text(json.dumps({
        "name": "test", "label": "test-0.1M", "params_millions": 0.1, "description": "2 layers x 32 for tests",
        "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "vocab_size": 32768, "max_position_embeddings": 64},
        "training": {"learning_rate": 3e-3, "warmup_steps": 2, "batch_size": 4, "max_length": 32, "logging_steps": 1,
                     "eval_batches": 1, "mixed_precision": "no", "seed": 3}}))
    return path


def _experiment(directory: Path, budget: dict, variants: list[dict], **extra: object) -> Path:
    path = directory / "experiment.json"
    path.write_text(json.dumps({"_comment": "a test", "name": "mini", "description": "two variants",
                                "preset": str(_preset(directory)), "budget": budget, "variants": variants, **extra}))
    return path


def _run(path: Path, dataset: Path, sessions: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/experiment.py", "--config_path", str(path), "--data_path",
                           str(dataset), *extra], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LUMI_SESSIONS_DIR": str(sessions), "OMP_NUM_THREADS": "1"})


def test_two_variants_write_the_table_the_sweep_and_the_curves(tmp_path: Path, dataset: Path) -> None:
    path = _experiment(tmp_path, {"tokens": STEPS * TOKENS_PER_STEP}, [
        {"name": "baseline"},
        {"name": "muon", "flags": {"optimizer": "muon"}, "sweep": {"muon_learning_rate": [0.003, 0.01]}}])
    result = _run(path, dataset, tmp_path / "sessions")
    assert result.returncode == 0, result.stderr[-3000:]
    (session,) = (tmp_path / "sessions").iterdir()
    assert session.name.endswith("-mini")
    report = (session / "report.md").read_text()
    summary = report.split("## Sweeps")[0].splitlines()
    table = [line for line in summary if line.startswith("| baseline") or line.startswith("| muon |")]
    assert len(table) == 2
    baseline = table[0].split("|")
    assert baseline[4].strip() == f"{STEPS * TOKENS_PER_STEP:,}" and baseline[5].strip() == "1.00x"  # reaches its own
    assert float(baseline[2]) > 0 and float(baseline[3]) > 0  # final loss, bits per byte
    assert "muon_learning_rate = 0.003" in report and "muon_learning_rate = 0.01" in report and "(best)" in report
    assert (session / "curves.png").read_bytes().startswith(PNG_MAGIC)
    runs = json.loads((session / "results.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["baseline", "muon-muon_learning_rate-0.003", "muon-muon_learning_rate-0.01"]
    for run in runs:
        assert run["status"] == "ok" and run["max_steps"] == STEPS
        assert run["curve"][-1]["tokens_seen"] == STEPS * TOKENS_PER_STEP and len(run["curve"]) == STEPS
        assert run["tokens_per_s"] > 0 and run["peak_memory_mb"] > 0
    # each run is a fresh process with its own preset copy and the same seed
    muon_meta = json.loads((session / runs[1]["name"] / "train" / "final" / "meta.json").read_text())
    assert muon_meta["optimizer"] == "muon"
    assert "outputs:" in result.stderr and "report.md" in result.stderr


def test_a_seconds_budget_is_calibrated_per_variant(tmp_path: Path, dataset: Path) -> None:
    path = _experiment(tmp_path, {"seconds": 2}, [{"name": "baseline"},
                                                  {"name": "nope", "model": {"position_embedding": "none"}}])
    result = _run(path, dataset, tmp_path / "sessions")
    assert result.returncode == 0, result.stderr[-3000:]
    (session,) = (tmp_path / "sessions").iterdir()
    for run in json.loads((session / "results.json").read_text())["runs"]:
        calibration = session / run["name"] / "calibration" / "metrics.jsonl"
        rates = [json.loads(line)["tokens_per_s"] for line in calibration.read_text().splitlines()
                 if json.loads(line)["kind"] == "train"][CALIBRATION_SKIP:]
        assert len(rates) == CALIBRATION_STEPS - CALIBRATION_SKIP
        assert run["max_steps"] == max(1, int(2 * statistics.median(rates) / TOKENS_PER_STEP))
        assert run["status"] == "ok"
    preset = json.loads((session / "nope" / "preset.json").read_text())
    assert preset["model"]["position_embedding"] == "none"


def test_a_failed_run_is_reported_and_the_experiment_goes_on(tmp_path: Path, dataset: Path) -> None:
    path = _experiment(tmp_path, {"tokens": 8 * TOKENS_PER_STEP}, [
        {"name": "baseline"},
        {"name": "diverges", "flags": {"learning_rate": 1e6, "warmup_steps": 0, "max_grad_norm": 0.0}}])
    result = _run(path, dataset, tmp_path / "sessions")
    assert result.returncode == 0, result.stderr[-3000:]
    (session,) = (tmp_path / "sessions").iterdir()
    diverged = next(line for line in (session / "report.md").read_text().splitlines() if line.startswith("| diverges"))
    assert "failed (exit 1)" in diverged
    assert "loss became" in (session / "diverges" / "train.log").read_text()


@pytest.mark.parametrize("change, message", [
    ({"epochs": 1}, "unknown keys \\['epochs'\\]"),
    ({"budget": {"steps": 10}}, "'budget' must be"),
    ({"flags": {"max_steps": 10}}, "set by the experiment runner"),
    ({"flags": {"learning_rte": 1e-3}}, "learning_rte"),
    ({"variants": [{"name": "a", "model": {"norm": "layernorm"}}]}, "norm"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "distinct names"),
    ({"variants": [{"name": "a", "sweep": {"learning_rate": []}}]}, "non-empty list"),
    ({"preset": "no_such_preset"}, "no_such_preset"),
])
def test_bad_experiment_files_fail_naming_the_problem(tmp_path: Path, change: dict, message: str) -> None:
    path = _experiment(tmp_path, {"tokens": 100}, [{"name": "baseline"}])
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_the_shipped_experiments_load() -> None:
    ablations = load_experiment(REPO / "config" / "experiments" / "ablations.json")
    assert [v.name for v in ablations.variants] == ["baseline", "no_norm", "post_norm", "nope"]
    optimizers = load_experiment(REPO / "config" / "experiments" / "optimizers.json")
    assert [len(v.runs()) for v in optimizers.variants] == [3, 3]  # each side at three learning rates


def test_tokens_to_reach_interpolates_between_evaluations() -> None:
    run = RunResult(name="r", variant="r", flags={}, status="ok", max_steps=3, tokens_per_s=1.0, wall_s=1.0,
                    peak_memory_mb=1.0, command="", curve=[
                        {"step": 1, "tokens_seen": 100, "elapsed_s": 1, "val_loss": 4.0},
                        {"step": 2, "tokens_seen": 200, "elapsed_s": 2, "val_loss": 3.0},
                        {"step": 3, "tokens_seen": 300, "elapsed_s": 3, "val_loss": 2.0}])
    assert tokens_to_reach(run, 2.5) == pytest.approx(250)
    assert tokens_to_reach(run, 4.5) == 100
    assert tokens_to_reach(run, 1.0) is None
