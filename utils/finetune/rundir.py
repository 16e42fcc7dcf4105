"""The run directory of stages 03 and 04: its default name, checkpoint-N discovery and completeness, resume checks
(same base model, method and template), no silent overwrite, and metrics.jsonl opened for the run.

Output layout of a run, `<output_dir>/<run_name>/`:
  checkpoint-N/          TRL/Trainer checkpoints (resumable; trainer_state.json is written last)
  adapter/               the PEFT adapter (LoRA runs) with tokenizer files; base_model_name_or_path is absolute
  merged/                a full Hugging Face model (adapter merged) with tokenizer and chat template
  metrics.jsonl loss.png the same records and plot as pretraining (utils.lm.metrics)
  config.resolved.json   every setting; meta.json: stage, base model, data, template, gains, steps, timings
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from utils.core.artifacts import read_json
from utils.core.errors import CheckpointError, ConfigError
from utils.finetune.config import FinetuneConfig
from utils.lm.metrics import MetricsLogger

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_STATE = "trainer_state.json"  # the Trainer writes it last: its presence marks a finished save
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt")
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
RUN_OUTPUTS = ("adapter", "merged", "metrics.jsonl", "meta.json")


def default_run_name(config: FinetuneConfig) -> str:
    method = "full" if config.full else "lora"
    return f"{config.prompt_template}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_RE.match(path.name)
    if not match:
        raise CheckpointError(f"{path} is not a checkpoint-N directory written by the trainer")
    return int(match.group(1))


def checkpoint_problems(path: Path) -> list[str]:
    """What a checkpoint-N directory lacks to be resumed from (empty when complete)."""
    if not path.is_dir():
        return ["the directory does not exist"]
    missing = [name for name in (*CHECKPOINT_FILES, CHECKPOINT_STATE) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in CHECKPOINT_WEIGHTS):
        missing.append(" or ".join(CHECKPOINT_WEIGHTS))
    return [f"{name} is missing" for name in missing]


def resolve_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """`auto` -> the newest complete checkpoint-N of the run; a path -> that checkpoint if complete."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        problems = checkpoint_problems(path)
        if problems:
            raise CheckpointError(f"--resume_from_checkpoint {path} is incomplete or missing ({'; '.join(problems)}"
                                  f"): the run stopped while writing it. Resume from an earlier checkpoint-N or "
                                  f"use --resume_from_checkpoint auto.")
        checkpoint_step(path)
        return path
    found = sorted((p for p in run_dir.glob("checkpoint-*") if CHECKPOINT_RE.match(p.name)), key=checkpoint_step)
    complete = [p for p in found if not checkpoint_problems(p)]
    skipped = sorted(set(found) - set(complete))
    if skipped:
        log.warning("auto-resume: ignoring incomplete checkpoints %s", ", ".join(p.name for p in skipped))
    if not complete:
        raise CheckpointError(f"--resume_from_checkpoint auto: no complete checkpoint-N in {run_dir}. Start a new run "
                              f"without --resume_from_checkpoint, or pass the --run_name of the run to continue.")
    return complete[-1]


def prepare_run_dir(config: FinetuneConfig) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from. A directory holding outputs is never overwritten
    silently: resume it, pick another --run_name, or pass --overwrite."""
    run_dir = Path(config.output_dir) / (config.run_name or default_run_name(config))
    resume = resolve_checkpoint(run_dir, config.resume_from_checkpoint)
    if resume is not None:
        _check_same_run(run_dir, config)
        return run_dir, resume
    existing = [name for name in RUN_OUTPUTS if (run_dir / name).exists()] + [p.name for p in
                                                                           run_dir.glob("checkpoint-*")]
    if existing and not config.overwrite:
        raise ConfigError(f"{run_dir} already holds outputs ({', '.join(sorted(existing))}). Continue it with "
                          f"--resume_from_checkpoint auto, choose another --run_name, or pass --overwrite to "
                          f"replace it.")
    if existing:
        log.warning("--overwrite: deleting the previous run in %s", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None


def _check_same_run(run_dir: Path, config: FinetuneConfig) -> None:
    """Resuming trains the checkpoint's weights further: the base model and method must be the run's own."""
    resolved = run_dir / "config.resolved.json"
    if not resolved.is_file():
        return
    previous = read_json(resolved)
    changed = {"model_path": Path(previous.get("model_path", "")).resolve() != Path(config.model_path).resolve(),
               "full": previous.get("full") != config.full,
               "prompt_template": previous.get("prompt_template") != config.prompt_template}
    for key in (k for k, differs in changed.items() if differs):
        raise CheckpointError(f"{run_dir} was started with {key}={previous.get(key)!r}, but this run has "
                              f"{getattr(config, key)!r}: resume with the original --{key}, or start a new run "
                              f"with another --run_name")


def open_metrics(config: FinetuneConfig, run_dir: Path, resume: Path | None, stage: str,
                 resolved: dict[str, Any], enabled: bool) -> MetricsLogger:
    """metrics.jsonl (and TensorBoard/W&B) of the run, written when `enabled`: on the main process only; on
    resume, the events after the checkpoint are forgotten (they will recur)."""
    metrics = MetricsLogger(run_dir, config.report_to, enabled=enabled, run_name=f"{stage}-{run_dir.name}",
                            config=resolved)
    if resume is not None:
        metrics.truncate_after(checkpoint_step(resume))
    return metrics
