"""`make gpu-check`: every CUDA path of the pipeline in one run (<= 10 minutes on one H100/H200), one table, one JSON.

Rows, in order; each is timed and ends ok, failed (the error is recorded and the next row runs) or skipped (why):
  environment     check-env, and which installed versions differ from requirements.txt
  data            the demo corpus through stage 01
  tiny-resume     tiny at batch 64 for 300 steps, evaluation (samples, multiple choice) and saves every 100; then a
                  second run resumed from step 100: per-step losses compared (exact or the largest difference)
  base-eager, base-grad-ckpt, base-compile
                  base at 16x1024 bf16 (the real training step, utils/benchmarks/train.measure_case): tokens/s, MFU
                  against the device peak, peak allocated and reserved memory against a 4090's 22 GiB, the
                  estimate of utils/lm/memory, one checkpoint save
  fused-loss      our fused linear cross-entropy against HF's loss: values, gradients, time, memory
  sft-full, sft-lora-grad-ckpt, dpo-lora
                  20 steps each from tiny-resume's model: steps/s, memory, the gain before and after
  evaluate        stage 05 --fast_mode (demo multiple choice, smoke prompts) on the DPO model
  serve           the API (bf16 on a GPU) with 8 concurrent streaming requests
  flash-attn      tiny with flash_attention_2 through evaluations with samples, against SDPA; skipped unless
                  flash-attn imports and runs (utils/core/environment.flash_attn_problem says why not)
Rows run in this one process, one after another (the Accelerate state, determinism flags and CUDA peak counters
are reset between them): a fresh interpreter per row would pay the ~15 s of imports nine times.
--dry_run runs the same rows with tiny sizes on whatever device there is (a CPU: about a minute); its figures
say nothing about a GPU. This module holds the sizes, the plan, the run and the report; utils/benchmarks/gpu_rows.py
(environment, data, pretraining) and gpu_stage_rows.py (fine-tuning, evaluation, serving, flash-attn) the checks.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.benchmarks.common import TargetCheck, format_checks, format_table, machine_info
from utils.benchmarks.gpu_rows import (
    CheckSizes,
    Context,
    NotRun,
    check_base,
    check_environment,
    check_fused_loss,
    check_tiny_resume,
    prepare_data,
)
from utils.benchmarks.gpu_stage_rows import check_dpo, check_evaluate, check_flash_attn, check_serve, check_sft
from utils.core.errors import LumiError

log = logging.getLogger(__name__)


class CheckFailed(LumiError):
    """At least one gpu-check row failed."""


GPU_SIZES = CheckSizes(
    demo_stories=20_000, vocab_size=1024, data_max_length=1024,
    tiny_preset="tiny", tiny_batch=64, tiny_max_length=512, tiny_steps=300, tiny_every=100, mc_limit=100,
    sample_tokens=48, base_preset="base", base_batch=16, base_max_length=1024, base_rounds=20, base_compile=True,
    loss_tokens=16 * 1024, loss_hidden=768, loss_vocab=32768, finetune_steps=20, finetune_batch=16,
    finetune_samples=2000, gain_items=50, eval_limit=200, eval_new_tokens=64, serve_streams=8, serve_tokens=64)
DRY_RUN_SIZES = CheckSizes(
    demo_stories=600, vocab_size=400, data_max_length=64,
    tiny_preset="dry-run", tiny_batch=4, tiny_max_length=32, tiny_steps=6, tiny_every=3, mc_limit=2,
    sample_tokens=4, base_preset="dry-run", base_batch=1, base_max_length=32, base_rounds=1, base_compile=False,
    loss_tokens=64, loss_hidden=32, loss_vocab=400, finetune_steps=2, finetune_batch=2,
    finetune_samples=24, gain_items=2, eval_limit=4, eval_new_tokens=4, serve_streams=8, serve_tokens=4)


@dataclass
class GpuCheckConfig:
    """gpu-check settings; each is a --flag."""

    dry_run: bool = False  # tiny sizes on any device: tests the plumbing, measures nothing about a GPU
    json: str = "gpu_check.json"  # the full results (every figure, every error)
    work_dir: str = "checkpoints/gpu_check"  # data, checkpoints and exports of the check (replaced each run)


@dataclass
class Row:
    name: str
    status: str = "skipped"  # ok, failed, skipped
    seconds: float = 0.0
    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ---------------------------------------------------------------- the run


def plan() -> list[tuple[str, Callable[[Context], tuple[dict[str, Any], str]]]]:
    return [("environment", check_environment), ("data", prepare_data), ("tiny-resume", check_tiny_resume),
            ("base-eager", lambda ctx: check_base(ctx, compiled=False, checkpointing=False)),
            ("base-grad-ckpt", lambda ctx: check_base(ctx, compiled=False, checkpointing=True)),
            ("base-compile", lambda ctx: check_base(ctx, compiled=True, checkpointing=False)),
            ("fused-loss", check_fused_loss), ("sft-full", lambda ctx: check_sft(ctx, full=True)),
            ("sft-lora-grad-ckpt", lambda ctx: check_sft(ctx, full=False)), ("dpo-lora", check_dpo),
            ("evaluate", check_evaluate), ("serve", check_serve), ("flash-attn", check_flash_attn)]


class ProcessState:
    """Process-wide settings a row may change (Accelerate's state, determinism, CUDA peak counters): reset before
    every row so that each runs as a fresh stage process would."""

    def __init__(self) -> None:
        import torch

        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.environ = {k: os.environ.get(k) for k in ("FLASH_ATTENTION_DETERMINISTIC",)}

    def reset(self) -> None:
        import torch
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        torch.use_deterministic_algorithms(self.deterministic)
        for key, value in self.environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def run_row(name: str, check: Callable[[Context], tuple[dict[str, Any], str]], ctx: Context) -> Row:
    row = Row(name)
    log.info("gpu-check: %s", name)
    started = time.perf_counter()
    try:
        row.figures, row.summary = check(ctx)
        row.status = "ok"
    except NotRun as reason:
        row.summary = str(reason)
    except Exception as exc:  # an acceptance run records every failure and goes on to the next row
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        row.status, row.summary = "failed", f"{type(exc).__name__}: {first_line}"
        row.error = traceback.format_exc()
        log.error("gpu-check: %s failed: %s", name, row.summary)
    row.seconds = time.perf_counter() - started
    return row


def cuda_broken() -> str | None:
    """After a failed row: a CUDA error that poisons the context makes every later row fail the same way."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        torch.cuda.synchronize()
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    return None


@dataclass
class GpuCheckReport:
    dry_run: bool
    machine: dict[str, str]
    device: str
    precision: str
    sizes: dict[str, Any]
    rows: list[Row]
    checks: list[TargetCheck]

    def raise_for_failures(self, json_path: str) -> None:
        """CheckFailed when a row failed (exit 1), TargetMissed when a figure missed its target (exit 3)."""
        from utils.benchmarks.common import TargetMissed

        failed = [r.name for r in self.rows if r.status == "failed"]
        if failed:
            raise CheckFailed(f"{len(failed)} row(s) failed: {', '.join(failed)}; tracebacks in {json_path}")
        missed = [c.name for c in self.checks if not c.passed]
        if missed:
            raise TargetMissed(f"{len(missed)} target(s) missed: {'; '.join(missed)}")


def run_gpu_check(config: GpuCheckConfig) -> GpuCheckReport:
    """Every row in order, each after a reset of the process-wide state; a failed row does not stop the others
    unless it left CUDA unusable."""
    import shutil

    import torch

    from utils.core.environment import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not config.dry_run:
        raise LumiError("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False); on a CPU run it with "
                        "--dry_run, which tests the plumbing with tiny sizes")
    sizes = DRY_RUN_SIZES if config.dry_run else GPU_SIZES
    work = Path(config.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ctx = Context(sizes, work, device, resolve_precision("auto", device))
    state, rows, broken = ProcessState(), [], None
    for name, check in plan():
        if broken is not None:
            rows.append(Row(name, summary=f"not run: CUDA is unusable after an earlier row ({broken})"))
            continue
        state.reset()
        rows.append(run_row(name, check, ctx))
        broken = cuda_broken() if rows[-1].status == "failed" else None
    state.reset()  # leave the process as it was found
    return GpuCheckReport(config.dry_run, machine_info(), device, ctx.precision, dataclasses.asdict(sizes), rows,
                          ctx.checks)


def format_report(report: GpuCheckReport, json_path: str) -> str:
    table = format_table(["check", "status", "s", "result"],
                         [[r.name, r.status, f"{r.seconds:.1f}", r.summary] for r in report.rows])
    title = (f"gpu-check on {report.device} ({report.precision})" +
             (": dry run, tiny sizes, no GPU figures" if report.dry_run else ""))
    checks = format_checks(report.checks) if report.checks else "no targets"
    return "\n\n".join([title, table, checks, f"every figure and error: {json_path}"])
