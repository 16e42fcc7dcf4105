"""Equal-budget experiments: named variants of one preset trained on the same data, seed and budget.

An experiment file (config/experiments/*.json) names a preset, a budget (tokens or seconds), flags shared by every
variant, and the variants: each a name, `model` overrides (preset model keys, e.g. the ablation switches), `flags`
(stage 02 settings) and optionally a `sweep` of one setting over several values, of which the best (lowest final
validation loss) represents the variant. Every run is a fresh `scripts/02_pretrain.py` process.

A budget in tokens fixes max_steps. A budget in seconds is turned into max_steps per variant by a short calibration
run of that variant (its own tokens/s, so a slower optimizer gets fewer steps): the LR schedule then completes inside
the budget, as it would not if max_time cut the run short. The budget counts training time; the evaluations the
curves need are extra and equal for every variant.

A run that fails (a diverging ablation stops with a non-finite loss) is a result, not the end of the experiment:
it is reported with its curve up to the failure.
"""

from __future__ import annotations

import logging
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from utils.core.artifacts import git_sha, read_json, write_json
from utils.core.config import COMMENT_PREFIX, read_json_config, validate_mapping
from utils.core.errors import ConfigError
from utils.lm.metrics import read_metrics
from utils.lm.model import ModelConfig, load_preset, preset_path
from utils.sessions.runner import REPO_ROOT, SESSIONS_DIR
from utils.train.pretrain import PretrainConfig, load_pretrain_config
from utils.train.windows import load_dataset_info

log = logging.getLogger(__name__)

CALIBRATION_STEPS = 30  # enough steps that one slow step (a VM hiccup) does not move the median
CALIBRATION_SKIP = 6  # the first steps allocate and warm caches: not the rate of the run
DEFAULT_EVALUATIONS = 20  # validation points per curve
EXPERIMENT_KEYS = {"name", "description", "preset", "budget", "flags", "variants"}
VARIANT_KEYS = {"name", "model", "flags", "sweep"}
BUDGET_KINDS = ("tokens", "seconds")
# Set by the runner for every run: the budget, the curve's resolution and no samples or intermediate checkpoints.
RUNNER_FLAGS = ("max_steps", "eval_steps", "save_steps", "output_dir", "data_path", "resume_from_checkpoint")


@dataclass
class Variant:
    name: str
    model: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(run name, flags) for each point of the sweep, or the variant itself."""
        if not self.sweep:
            return [(self.name, self.flags)]
        ((key, values),) = self.sweep.items()
        return [(f"{self.name}-{key}-{_label(value)}", {**self.flags, key: value}) for value in values]


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


@dataclass
class Experiment:
    name: str
    description: str
    preset: str
    budget_kind: str
    budget: float
    flags: dict[str, Any]
    variants: list[Variant]
    evaluations: int = DEFAULT_EVALUATIONS


def _check_flags(flags: dict[str, Any], source: str) -> dict[str, Any]:
    reserved = sorted(set(flags) & set(RUNNER_FLAGS))
    if reserved:
        raise ConfigError(f"{source}: {reserved} are set by the experiment runner (from the budget); remove them")
    return validate_mapping(PretrainConfig, flags, source)


def _parse_variant(raw: Any, index: int, path: Path) -> Variant:
    source = f"{path} (variants[{index}])"
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{source}: each variant must be an object with a 'name'")
    unknown = sorted(k for k in set(raw) - VARIANT_KEYS if not k.startswith(COMMENT_PREFIX))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; a variant has {sorted(VARIANT_KEYS)}")
    model = validate_mapping(ModelConfig, raw.get("model", {}), f"{source} model")
    flags = _check_flags(raw.get("flags", {}), f"{source} flags")
    sweep = raw.get("sweep", {})
    if sweep:
        if not isinstance(sweep, dict) or len(sweep) != 1:
            raise ConfigError(f"{source}: 'sweep' sweeps one setting, e.g. {{\"learning_rate\": [1e-3, 2e-3]}}")
        ((key, values),) = sweep.items()
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: sweep '{key}' needs a non-empty list of values")
        for value in values:
            _check_flags({key: value}, f"{source} sweep")
    return Variant(name=raw["name"], model=model, flags=flags, sweep=sweep)


def load_experiment(path: Path, budget_override: tuple[str, float] | None = None) -> Experiment:
    """Read and validate an experiment file: unknown keys, flags and model keys are errors naming the file."""
    data = read_json_config(path)
    unknown = sorted(k for k in set(data) - EXPERIMENT_KEYS if not k.startswith(COMMENT_PREFIX))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; an experiment has {sorted(EXPERIMENT_KEYS)}")
    missing = sorted({"name", "preset", "budget", "variants"} - set(data))
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}")
    budget = data["budget"]
    if not (isinstance(budget, dict) and len(budget) == 1 and next(iter(budget)) in BUDGET_KINDS):
        raise ConfigError(f"{path}: 'budget' must be {{\"tokens\": N}} or {{\"seconds\": N}}, got {budget!r}")
    kind, amount = budget_override or next(iter(budget.items()))
    if not isinstance(amount, (int, float)) or amount <= 0:
        raise ConfigError(f"{path}: the budget must be a positive number, got {amount!r}")
    variants = [_parse_variant(raw, i, path) for i, raw in enumerate(data["variants"])]
    names = [v.name for v in variants]
    if not variants or len(set(names)) != len(names):
        raise ConfigError(f"{path}: 'variants' must be a non-empty list with distinct names, got {names}")
    load_preset(data["preset"])  # a missing or broken preset fails now, not after the first variant
    return Experiment(name=data["name"], description=data.get("description", ""), preset=data["preset"],
                      budget_kind=kind, budget=float(amount), flags=_check_flags(data.get("flags", {}), str(path)),
                      variants=variants)


@dataclass
class RunResult:
    """One training run, read back from its metrics.jsonl."""

    name: str
    variant: str
    flags: dict[str, Any]
    status: str
    max_steps: int
    curve: list[dict[str, float]]  # eval points: step, tokens_seen, elapsed_s, val_loss
    tokens_per_s: float | None
    wall_s: float | None
    peak_memory_mb: float | None
    command: str

    @property
    def final_val_loss(self) -> float | None:
        return self.curve[-1]["val_loss"] if self.curve and self.status == "ok" else None


def _derived_preset(experiment: Experiment, variant: Variant, directory: Path) -> Path:
    """The preset with the variant's model overrides, written beside the run (the run records it)."""
    data = read_json(preset_path(experiment.preset))
    data["model"] = {**data["model"], **variant.model}
    path = directory / "preset.json"
    write_json(path, data)
    return path


def _tokens_per_step(preset: Path, data_path: Path, flags: dict[str, Any]) -> int:
    from utils.train.pretrain import resolve_model

    preset_obj, config = load_pretrain_config(str(preset), {**flags, "data_path": str(data_path)})
    _, max_length = resolve_model(preset_obj, config, load_dataset_info(data_path))
    return config.batch_size * config.gradient_accumulation_steps * max_length


def _command(preset: Path, data_path: Path, out: Path, flags: dict[str, Any]) -> list[str]:
    command = [sys.executable, "scripts/02_pretrain.py", "--config_path", str(preset), "--data_path", str(data_path),
               "--output_dir", str(out)]
    for key, value in flags.items():
        if isinstance(value, bool):
            command.append(f"--{key}" if value else f"--no_{key}")
        else:
            command += [f"--{key}", str(value)]
    return command


def _train(command: list[str], log_path: Path) -> int:
    with log_path.open("w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        return subprocess.run(command, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode


def _calibrate(preset: Path, data_path: Path, directory: Path, flags: dict[str, Any]) -> float:
    """Tokens/s of this variant on this machine: the median step of a short run after its warm-up steps."""
    out = directory / "calibration"
    steps = {"max_steps": CALIBRATION_STEPS, "logging_steps": 1, "eval_steps": CALIBRATION_STEPS,
             "save_steps": CALIBRATION_STEPS, "num_samples": 0, "eval_batches": 1}
    code = _train(_command(preset, data_path, out, {**flags, **steps}), directory / "calibration.log")
    rates = [r["tokens_per_s"] for r in read_metrics(out / "metrics.jsonl", "train")][CALIBRATION_SKIP:]
    if code != 0 or not rates:
        raise ConfigError(f"the calibration run of {directory.name} failed (exit {code}): read "
                          f"{directory / 'calibration.log'}")
    return statistics.median(rates)


def _read_result(name: str, variant: str, flags: dict[str, Any], out: Path, code: int, max_steps: int,
                 command: list[str]) -> RunResult:
    metrics = out / "metrics.jsonl"
    train, evals = read_metrics(metrics, "train"), read_metrics(metrics, "eval")
    end = read_metrics(metrics, "end")
    curve = [{"step": r["step"], "tokens_seen": r["tokens_seen"], "elapsed_s": r["elapsed_s"],
              "val_loss": r["val_loss"]} for r in evals]
    rates = [r["tokens_per_s"] for r in train]
    memory = [r["memory_mb"] for r in train if "memory_mb" in r]
    wall = end[-1]["elapsed_s"] if end else (train[-1]["elapsed_s"] if train else None)
    status = "ok" if code == 0 and end else f"failed (exit {code})"
    return RunResult(name=name, variant=variant, flags=flags, status=status, max_steps=max_steps, curve=curve,
                     tokens_per_s=statistics.median(rates) if rates else None, wall_s=wall,
                     peak_memory_mb=max(memory) if memory else None, command=" ".join(command))


def run_one(experiment: Experiment, variant: Variant, run_name: str, flags: dict[str, Any], data_path: Path,
            directory: Path) -> RunResult:
    run_dir = directory / run_name
    run_dir.mkdir(parents=True)
    preset = _derived_preset(experiment, variant, run_dir)
    flags = {**experiment.flags, **flags}
    tokens_per_step = _tokens_per_step(preset, data_path, flags)
    if experiment.budget_kind == "tokens":
        max_steps = max(1, math.ceil(experiment.budget / tokens_per_step))
    else:
        rate = _calibrate(preset, data_path, run_dir, flags)
        max_steps = max(1, int(experiment.budget * rate / tokens_per_step))
        log.info("%s: %.0f tokens/s calibrated -> %d steps in %.0f s", run_name, rate, max_steps, experiment.budget)
    every = max(1, max_steps // experiment.evaluations)
    budgeted = {**flags, "max_steps": max_steps, "eval_steps": every, "save_steps": max_steps,
                "save_total_limit": 1, "num_samples": 0}
    command = _command(preset, data_path, run_dir / "train", budgeted)
    log.info("%s: %d steps (%s tokens): %s", run_name, max_steps, f"{max_steps * tokens_per_step:,}",
             " ".join(command[2:]))
    started = time.perf_counter()
    code = _train(command, run_dir / "train.log")
    result = _read_result(run_name, variant.name, flags, run_dir / "train", code, max_steps, command)
    log.info("%s: %s in %.0f s, final validation loss %s", run_name, result.status, time.perf_counter() - started,
             f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a")
    return result


@dataclass
class ExperimentResult:
    experiment: Experiment
    directory: Path
    data_path: Path
    runs: list[RunResult]
    provenance: str = ""  # machine, commit and date of a finished run read back from its results.json

    def best(self, variant: Variant) -> RunResult:
        """The variant's run with the lowest final validation loss (a failed run only if every one failed)."""
        mine = [r for r in self.runs if r.variant == variant.name]
        finished = [r for r in mine if r.final_val_loss is not None]
        return min(finished, key=lambda r: r.final_val_loss) if finished else mine[0]


def read_result(directory: Path, experiment: Experiment) -> ExperimentResult:
    """An earlier run of `experiment` from its results.json (to report it again without retraining)."""
    path = directory / "results.json"
    if not path.is_file():
        raise ConfigError(f"{directory} holds no results.json: not a finished experiment directory")
    data = read_json(path)
    if data["experiment"] != experiment.name:
        raise ConfigError(f"{directory} is experiment {data['experiment']!r}, not {experiment.name!r}")
    provenance = ", ".join(f"{key} {data[key]}" for key in ("machine", "git_sha", "finished") if data.get(key))
    return ExperimentResult(experiment, directory, Path(data["data_path"]), [RunResult(**r) for r in data["runs"]],
                            provenance)


def run_experiment(experiment: Experiment, data_path: Path, root: Path = SESSIONS_DIR) -> ExperimentResult:
    from utils.sessions.experiment_report import machine, write_report

    load_dataset_info(data_path)  # a missing dataset fails before any run
    directory = root / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{experiment.name}"
    directory.mkdir(parents=True)
    log.info("experiment %s: %d variants, budget %g %s each, in %s", experiment.name, len(experiment.variants),
             experiment.budget, experiment.budget_kind, directory)
    runs = [run_one(experiment, variant, name, flags, data_path, directory)
            for variant in experiment.variants for name, flags in variant.runs()]
    result = ExperimentResult(experiment, directory, data_path, runs)
    write_json(directory / "results.json", {"experiment": experiment.name, "data_path": str(data_path),
                                            "budget": {experiment.budget_kind: experiment.budget},
                                            "machine": machine(), "git_sha": git_sha(),
                                            "finished": datetime.now().isoformat(timespec="seconds"),
                                            "runs": [run.__dict__ for run in runs]})
    report = write_report(result)
    log.info("report: %s (plot %s)", report, directory / "curves.png")
    return result


@dataclass
class ExperimentArgs:
    """scripts/experiment.py's flags besides --config_path (the experiment file)."""

    data_path: str = "data/processed/demo_tiny"
    budget_tokens: int | None = None  # replaces the file's budget
    budget_seconds: float | None = None  # replaces the file's budget


def experiment_from_args(config_path: Path, args: ExperimentArgs) -> Experiment:
    if args.budget_tokens is not None and args.budget_seconds is not None:
        raise ConfigError("give --budget_tokens or --budget_seconds, not both")
    override = (("tokens", args.budget_tokens) if args.budget_tokens is not None else
                ("seconds", args.budget_seconds) if args.budget_seconds is not None else None)
    return load_experiment(config_path, override)
