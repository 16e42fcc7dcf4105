"""Full-state checkpoints with exact resume (the Hugging Face-format exports are utils/lm/export.py).

A checkpoint `step-NNNNNN/` holds model weights (safetensors), optimizer, scheduler and grad-scaler state,
every RNG state (python, numpy, torch, cuda; one file per process), the trainer state (step, sample position,
tokens seen, best validation loss), the model shape, resolved config and meta. It is written to
`step-NNNNNN.tmp/`, fsynced, and `COMPLETE` — a JSON list of every file's sha256 — is written last before the
rename. Only then is `latest` updated and the oldest checkpoints beyond the limit deleted. Auto-resume ignores
directories without COMPLETE; an explicit resume of an incomplete or corrupt checkpoint is a hard error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from utils.core.artifacts import read_json, write_json, write_meta
from utils.core.errors import CheckpointError
from utils.lm.shards import file_sha256

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
STATE_FILE = "trainer_state.json"
MODEL_CONFIG_FILE = "model_config.json"
RESOLVED_FILE = "config.resolved.json"
SCHEDULE_BEFORE_DEFAULT = "cosine"  # checkpoints written before --lr_schedule existed, or under its old default
STEP_DIR_RE = re.compile(r"^step-(\d+)$")
DEFAULT_OPTIMIZER = "adamw"  # what a checkpoint without an "optimizer" entry in its meta was trained with


class ProcessInfo(Protocol):
    """The slice of `accelerate.Accelerator` the checkpoint code needs (tests pass a stand-in)."""

    is_main_process: bool
    process_index: int

    def wait_for_everyone(self) -> None: ...


@dataclass
class TrainerState:
    step: int = 0
    samples_seen: int = 0  # the data position: global sample index of the next batch
    tokens_seen: int = 0
    best_val_loss: float | None = None
    elapsed_seconds: float = 0.0
    # wsd under --max_time: the step the schedule ends at when fewer than max_steps fit in the time (see
    # TrainingLoop.fit_schedule_to_time); None = max_steps. Saved, so a resumed run keeps the same schedule.
    schedule_steps: int | None = None


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _rng_file(process_index: int) -> str:
    return f"rng_state_{process_index}.pt"


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Every RNG as saved. CUDA states are restored for the GPUs visible now: set_rng_state_all with more saved
    states than devices fails on an invalid device index, so a resume on fewer GPUs restores the first ones and
    says that the run can no longer be exact."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    saved = state["cuda"]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if saved and len(saved) != visible:
        log.warning("the checkpoint holds CUDA RNG states of %d GPU(s), %d are visible now: restoring %d; "
                    "dropout draws on the others will differ from the uninterrupted run", len(saved), visible,
                    min(len(saved), visible))
    for index, cuda_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(cuda_state, index)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(run_dir: Path, process: ProcessInfo, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, state: TrainerState,
                    model_config: dict[str, Any], resolved_config: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write step-N atomically on every process (each saves its RNG), then finalize on the main process."""
    final = run_dir / step_dir_name(state.step)
    tmp = run_dir / f"{final.name}.tmp"
    if process.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    process.wait_for_everyone()
    torch.save(capture_rng_state(), tmp / _rng_file(process.process_index))
    if process.is_main_process:
        save_model(model, str(tmp / MODEL_FILE))  # handles tied embeddings (shared tensors)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / SCALER_FILE)
        write_json(tmp / STATE_FILE, asdict(state))
        write_json(tmp / MODEL_CONFIG_FILE, model_config)
        write_json(tmp / RESOLVED_FILE, resolved_config)
        write_meta(tmp, **meta, step=state.step, tokens_seen=state.tokens_seen)
    process.wait_for_everyone()
    if process.is_main_process:
        _finalize(run_dir, tmp, final)
    process.wait_for_everyone()
    return final


def _finalize(run_dir: Path, tmp: Path, final: Path) -> None:
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    for path in files:
        _fsync(path)
    write_json(tmp / COMPLETE, {p.name: file_sha256(p) for p in files})
    _fsync(tmp / COMPLETE)
    if final.exists():  # a rerun of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = run_dir / f"{LATEST}.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, run_dir / LATEST)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (never the newest)."""
    if keep <= 0:
        return
    for path in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path)
        log.info("deleted old checkpoint %s (save_total_limit %d)", path.name, keep)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step-N directories, oldest first."""
    found = []
    for path in run_dir.glob("step-*"):
        match = STEP_DIR_RE.match(path.name)
        if match and path.is_dir() and (path / COMPLETE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_resume_path(run_dir: Path, resume: str | None) -> Path | None:
    """`auto` -> newest complete checkpoint in run_dir; a path -> that checkpoint, verified; None -> None."""
    if resume is None:
        return None
    if resume == "auto":
        candidates = complete_checkpoints(run_dir)
        skipped = [p.name for p in run_dir.glob("step-*") if p.is_dir() and p not in candidates]
        if skipped:
            log.warning("auto-resume: ignoring incomplete checkpoint directories %s", ", ".join(sorted(skipped)))
        if not candidates:
            raise CheckpointError(f"--resume_from_checkpoint auto: no complete checkpoint in {run_dir} to resume. "
                                  f"Start a new run without --resume_from_checkpoint, or point --output_dir at "
                                  f"the run to continue.")
        return candidates[-1]
    path = Path(resume)
    if path.is_file() and path.name == LATEST:
        path = path.parent / path.read_text().strip()
    verify_checkpoint(path)
    return path


def verify_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such checkpoint directory. Use a step-N "
                              f"directory of a run, or 'auto' to resume the newest complete one.")
    marker = path / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{path} is incomplete (no {COMPLETE} marker: the run stopped while writing it). "
                              f"Resume from an earlier step-N directory or use --resume_from_checkpoint auto.")
    try:
        expected = json.loads(marker.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{marker} is corrupt ({exc.msg}); resume from another checkpoint") from exc
    for name, sha in expected.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path} is corrupt: {name} is missing; resume from another checkpoint")
        if file_sha256(file) != sha:
            raise CheckpointError(f"{path} is corrupt: {name} does not match its checksum in {COMPLETE}; "
                                  f"resume from another checkpoint")


@dataclass
class LoadedCheckpoint:
    path: Path
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    scaler_state: dict[str, Any] | None
    rng_state: dict[str, Any] | None
    state: TrainerState
    model_config: dict[str, Any]
    meta: dict[str, Any]
    resolved_config: dict[str, Any]


def _load_on_cpu(path: Path) -> Any:
    """Tensors land in host memory whatever device saved them: a GPU checkpoint resumes on a machine without that
    GPU, and under torchrun no process loads rank 0's AdamW state onto GPU 0. Optimizer.load_state_dict moves the
    state to each parameter's device."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path, process_index: int) -> LoadedCheckpoint:
    rng_path = path / _rng_file(process_index)
    scaler_path = path / SCALER_FILE
    return LoadedCheckpoint(
        path=path,
        optimizer_state=_load_on_cpu(path / OPTIMIZER_FILE),
        scheduler_state=_load_on_cpu(path / SCHEDULER_FILE),
        scaler_state=_load_on_cpu(scaler_path) if scaler_path.is_file() else None,
        rng_state=_load_on_cpu(rng_path) if rng_path.is_file() else None,
        state=TrainerState(**read_json(path / STATE_FILE)),
        model_config=read_json(path / MODEL_CONFIG_FILE),
        meta=read_json(path / "meta.json"),
        resolved_config=read_json(path / RESOLVED_FILE) if (path / RESOLVED_FILE).is_file() else {},
    )


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    missing, unexpected = load_model(model, str(checkpoint / MODEL_FILE), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")


def check_same_optimizer(checkpoint: LoadedCheckpoint, optimizer: str) -> None:
    """Optimizer state only fits the optimizer that wrote it (checkpoints from before --optimizer are AdamW's)."""
    saved = checkpoint.meta.get("optimizer", DEFAULT_OPTIMIZER)
    if saved != optimizer:
        raise CheckpointError(f"{checkpoint.path} was trained with --optimizer {saved}, but this run asks for "
                              f"--optimizer {optimizer}: resume with --optimizer {saved}, or start a new run in "
                              f"another --output_dir to train with {optimizer}")


def warn_schedule_change(checkpoint: LoadedCheckpoint, schedule: str) -> None:
    """The LR schedule may change on resume like the LR itself, but since wsd became the default a run started
    under cosine would switch shape mid-run without a word: say so, and how to keep the old one."""
    saved = checkpoint.resolved_config.get("lr_schedule", SCHEDULE_BEFORE_DEFAULT)
    if saved != schedule:
        log.warning("%s was trained with --lr_schedule %s; this run continues with --lr_schedule %s (pass "
                    "--lr_schedule %s to keep the original schedule)", checkpoint.path, saved, schedule, saved)


def check_compatible(checkpoint_config: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """The model shape must match; anything else (learning rate, batch size...) may change on resume."""
    differing = sorted(k for k in set(checkpoint_config) | set(current) if checkpoint_config.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: checkpoint {checkpoint_config.get(k)!r} vs now {current.get(k)!r}"
                            for k in differing)
        raise CheckpointError(f"the model in {path} does not match the configured model ({details}). Use the "
                              f"preset the run was started with, or start a new run in another --output_dir.")
