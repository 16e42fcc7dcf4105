"""The training loop every stage shares: Accelerate, mixed precision, accumulation, clipping, schedule,
telemetry, periodic evaluation, atomic checkpoints with exact resume, and loud failures.

A stage supplies a `StepData` (the micro-batches of step k, a pure function of the data position) and an
`Evaluator`; the loop owns everything else, so no stage copies it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import xxhash
from tqdm import tqdm

from utils.core.distributed import any_process, on_main_process
from utils.core.environment import keep_freed_memory
from utils.core.errors import ConfigError, LumiError
from utils.lm.metrics import MetricsLogger, device_peak_flops, memory_stats, plot_loss
from utils.train.checkpoint import (
    LoadedCheckpoint,
    TrainerState,
    check_compatible,
    check_same_optimizer,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    warn_schedule_change,
)
from utils.train.loss import CausalLMLoss
from utils.train.optimizers import build_optimizer, learning_rates, lr_fraction

log = logging.getLogger(__name__)

MIN_LR_RATIO = 0.1  # cosine decays to 10 % of the peak learning rate
WSD_DECAY_FRACTION = 0.2  # warmup-stable-decay: the last 20 % of the steps decay linearly to zero
# A wsd schedule fitted to --max_time ends when this share of it has passed: the rest is for the last evaluation
# and save, and for the step time varying.
SCHEDULE_TIME_SHARE = 0.95
LR_FLOOR = {"cosine": MIN_LR_RATIO, "wsd": 0.0}
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"  # what cuBLAS documents for reproducible results
DETERMINISM_ALERT = "use_deterministic_algorithms"  # in PyTorch's error for an op without a deterministic kernel
OOM_ADVICE = ("out of memory. Lower --batch_size (and raise --gradient_accumulation_steps to keep the "
              "effective batch), add --gradient_checkpointing, or lower --max_length.")


class TrainingError(LumiError):
    """Training cannot continue (non-finite loss, out of memory)."""


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping settings shared by every training stage."""

    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for hidden matrices, AdamW for the rest
    learning_rate: float = 3e-4  # AdamW's (with muon: the embedding's and the norms')
    weight_decay: float = 0.1
    # Muon's, on AdamW's scale (adjust_lr_fn match_rms_adamw): on tiny its best of three equalled AdamW's best.
    muon_learning_rate: float = 3e-4
    muon_weight_decay: float = 0.1
    muon_momentum: float = 0.95
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_steps: int = 1000
    # After the warmup: wsd (the peak held, then linear to zero) or cosine to MIN_LR_RATIO. wsd is the default
    # because it measured better at equal tokens (make bench-recipe; README "Training recipe").
    lr_schedule: Literal["cosine", "wsd"] = "wsd"
    max_steps: int = 5000
    max_time: float | None = None  # seconds; stop cleanly (checkpoint + final model) when exceeded
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    logging_steps: int = 50
    eval_steps: int = 500
    save_steps: int = 2000
    save_total_limit: int = 3
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    compile: bool = False
    seed: int = 42
    deterministic: bool = True
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    resume_from_checkpoint: str | None = None

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps", "eval_steps",
                     "save_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "muon_learning_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


class StepData(Protocol):
    def micro_batches(self, samples_seen: int, count: int) -> list[dict[str, torch.Tensor]]:
        """`count` micro-batches starting at global sample index `samples_seen` (a pure function of it)."""
        ...


@dataclass
class Evaluator:
    """Called at each evaluation: returns scalars to log (must include `val_loss`) and may write samples."""

    evaluate: Callable[[Any], dict[str, float]]
    samples: Callable[[Any, int], None] | None = None
    # An extra benchmark on its own cadence (e.g. multiple choice every N steps), logged beside the loss.
    benchmark: Callable[[Any], dict[str, float]] | None = None
    benchmark_steps: int = 0


def set_determinism(enabled: bool) -> None:
    """--deterministic: PyTorch's strict mode, so that a resumed run repeats the uninterrupted one. With
    warn_only=True the CUDA SDPA flash and memory-efficient backwards stay non-deterministic (they only warn);
    strict mode makes PyTorch pick their deterministic variants, flash-attn reads FLASH_ATTENTION_DETERMINISTIC
    (transformers passes it to every call), and cuBLAS needs a fixed workspace. An op with no deterministic kernel
    then raises, and the loop turns that into advice (--no_deterministic) at the step it happens."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
        os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
        torch.use_deterministic_algorithms(True, warn_only=False)
        # Deterministic mode also NaN-fills every new tensor, a debugging aid for kernels that read memory they
        # never wrote; ours do not, and the fill cost ~30 % of a tiny CPU step (make bench-train).
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        os.environ.pop("FLASH_ATTENTION_DETERMINISTIC", None)
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True


def wsd_decay_start(warmup_steps: int, total_steps: int) -> int:
    return max(warmup_steps, total_steps - round(WSD_DECAY_FRACTION * total_steps))


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str = "cosine") -> Callable[[int], float]:
    """Linear warmup to the peak, then either cosine to MIN_LR_RATIO of it at `total_steps`, or (wsd) the peak
    held until the last WSD_DECAY_FRACTION of the steps and a linear decay to zero over them."""
    decay_start = wsd_decay_start(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "wsd":
            return 1.0 if step < decay_start else max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class RunContext:
    """Everything the loop needs besides the model: where to write, what to record, how to count FLOPs."""

    run_dir: Path
    resolved_config: dict[str, Any]
    model_shape: dict[str, Any]
    meta: dict[str, Any]
    tokens_per_sample: int
    flops_per_token: float
    export_final: Callable[[Any, TrainerState, str], Path]
    run_name: str


def _batch_hash(micro: list[dict[str, torch.Tensor]]) -> str:
    """A fingerprint of a step's input ids, logged so a resumed run can be checked batch by batch."""
    digest = xxhash.xxh64()
    for batch in micro:
        digest.update(batch["input_ids"].numpy().tobytes())
    return digest.hexdigest()


class TrainingLoop:
    def __init__(self, accelerator: Any, model: torch.nn.Module, config: LoopConfig, data: StepData,
                 evaluator: Evaluator, context: RunContext) -> None:
        self.accelerator = accelerator
        self.config = config
        self.data = data
        self.evaluator = evaluator
        self.context = context
        self.device = accelerator.device
        if self.device.type == "cpu":
            keep_freed_memory()
        self.optimizer = build_optimizer(model, config, self.device.type)
        self.state = TrainerState()
        # A plain function over self.state: the schedule's length can be fitted to --max_time during the run
        # (fit_schedule_to_time), and LambdaLR saves no state for functions, so resume rebuilds it from the state.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self._lr_factor(step))
        # The loop trains model + fused loss as one module (see utils/train/loss.py); `lm()` is the HF model.
        # The scheduler is not prepared: Accelerate's wrapper steps it once per process on each optimizer step, which
        # would run the warmup and cosine num_processes times faster under DDP. Our step is the optimizer step.
        self.model, self.optimizer = accelerator.prepare(CausalLMLoss(model, fused=not config.compile),
                                                         self.optimizer)
        if config.compile:
            self.model = torch.compile(self.model)
        self.last_batch_hash = ""
        self.metrics = MetricsLogger(context.run_dir, config.report_to, accelerator.is_main_process,
                                     context.run_name, context.resolved_config)
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
        self.peak_flops, self.peak_source = device_peak_flops(self.device, precision)

    def end_step(self) -> int:
        return self.state.schedule_steps or self.config.max_steps

    def _lr_factor(self, step: int) -> float:
        return lr_lambda(self.config.warmup_steps, self.end_step(), self.config.lr_schedule)(step)

    def fit_schedule_to_time(self) -> None:
        """wsd under --max_time: when the steps that fit in the time come before max_steps, the decay starts early
        enough to end by then, so a time-bound run still ends annealed (the point of WSD: the stable phase can
        end whenever). The main process's projection decides for every process."""
        config, state = self.config, self.state
        if (config.lr_schedule != "wsd" or config.max_time is None or state.schedule_steps is not None
                or state.step <= config.warmup_steps):
            return

        def projected() -> int:
            seconds_left = config.max_time * SCHEDULE_TIME_SHARE - state.elapsed_seconds
            return state.step + max(0, int(seconds_left * state.step / state.elapsed_seconds))

        total = on_main_process(self.accelerator, projected)
        if total < config.max_steps and state.step >= wsd_decay_start(config.warmup_steps, total):
            state.schedule_steps = max(total, state.step + 1)
            log.info("max_time %.0f s fits about %d of max_steps %d: the wsd decay starts now (step %d) and ends at "
                     "step %d", config.max_time, state.schedule_steps, config.max_steps, state.step,
                     state.schedule_steps)

    # ---------------------------------------------------------------- resume
    def resume(self, checkpoint: LoadedCheckpoint) -> None:
        check_compatible(checkpoint.model_config, self.context.model_shape, checkpoint.path)
        check_same_optimizer(checkpoint, self.config.optimizer)
        warn_schedule_change(checkpoint, self.config.lr_schedule)
        load_weights(self.lm(), checkpoint.path)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.scheduler.load_state_dict(checkpoint.scheduler_state)
        scaler = self.accelerator.scaler
        if scaler is not None and checkpoint.scaler_state is not None:
            scaler.load_state_dict(checkpoint.scaler_state)
        if checkpoint.rng_state is not None:
            restore_rng_state(checkpoint.rng_state)
        self.state = checkpoint.state
        self.metrics.truncate_after(self.state.step)
        log.info("resumed from %s: step %d, %s tokens seen, next sample index %d", checkpoint.path,
                 self.state.step, f"{self.state.tokens_seen:,}", self.state.samples_seen)

    def lm(self, keep_fp32_wrapper: bool = True) -> torch.nn.Module:
        """The Hugging Face model being trained, without the loss wrapper, DDP or compile."""
        return self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=keep_fp32_wrapper).lm

    def resume_from(self, path: Path) -> None:
        self.resume(load_checkpoint(path, self.accelerator.process_index))

    # ---------------------------------------------------------------- one step
    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; returns (loss, grad norm)."""
        config = self.config
        micro = self.data.micro_batches(self.state.samples_seen, config.gradient_accumulation_steps)
        self.last_batch_hash = _batch_hash(micro)
        # Normalise by the tokens of the whole step so every token weighs the same under accumulation.
        step_tokens = sum(int((b["shift_labels"] != -100).sum()) for b in micro)
        step_tokens = max(1, step_tokens)
        total_loss = 0.0
        for index, batch in enumerate(micro):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            is_last = index == len(micro) - 1
            with self._sync_context(is_last):
                loss = self.model(batch["input_ids"], batch["shift_labels"], normalizer=step_tokens)
                self.accelerator.backward(loss)
            total_loss += loss.item()
        grad_norm = self._clip()
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # fp16: the grad scaler skipped a step with inf/nan gradients
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.samples_seen += sum(len(b["input_ids"]) for b in micro) * self.accelerator.num_processes
        return total_loss, grad_norm

    def _sync_context(self, is_last: bool):
        import contextlib

        return contextlib.nullcontext() if is_last else self.accelerator.no_sync(self.model)

    def _clip(self) -> float:
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        return float(norm)

    # ---------------------------------------------------------------- the loop
    def run(self) -> Path:
        config, state = self.config, self.state
        started = time.perf_counter() - state.elapsed_seconds
        window_start, window_tokens, window_steps, window_loss = time.perf_counter(), 0, 0, 0.0
        tokens_per_step = (self.context.tokens_per_sample * config.batch_size
                           * config.gradient_accumulation_steps * self.accelerator.num_processes)
        progress = tqdm(total=config.max_steps, initial=state.step, desc=self.context.run_name, unit="step",
                        disable=not self.accelerator.is_local_main_process, mininterval=1.0)
        self.model.train()
        stop_reason = "max_steps"
        while state.step < self.end_step():
            try:
                loss, grad_norm = self.train_step()
            except torch.OutOfMemoryError as exc:
                raise TrainingError(f"step {state.step + 1}: {OOM_ADVICE}") from exc
            except RuntimeError as exc:
                if DETERMINISM_ALERT not in str(exc):
                    raise
                raise TrainingError(f"step {state.step + 1}: {str(exc).splitlines()[0][:300]} -- an operation "
                                    f"has no deterministic kernel on this device. Rerun with --no_deterministic "
                                    f"(resume then continues the run, but not bit for bit)") from exc
            state.step += 1
            state.tokens_seen += tokens_per_step
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at step {state.step}; stopping without saving. The last "
                                    f"good checkpoint is kept: lower --learning_rate or raise --warmup_steps, then "
                                    f"--resume_from_checkpoint auto")
            window_tokens += tokens_per_step
            window_steps += 1
            window_loss += loss
            state.elapsed_seconds = time.perf_counter() - started
            self.fit_schedule_to_time()
            last = state.step == self.end_step()
            if last and state.schedule_steps is not None:
                stop_reason = "max_time"  # the schedule fitted to it has ended
            progress.total = self.end_step()
            if state.step % config.logging_steps == 0 or last:
                seconds = time.perf_counter() - window_start
                self._log_train(window_loss / window_steps, grad_norm, window_tokens / seconds, progress)
                window_start, window_tokens, window_steps, window_loss = time.perf_counter(), 0, 0, 0.0
            progress.update(1)
            # Every process stops at the same step, or one would wait in the next all-reduce forever.
            out_of_time = config.max_time is not None and any_process(state.elapsed_seconds >= config.max_time)
            if out_of_time:
                stop_reason = "max_time"
            paused = time.perf_counter()
            if state.step % config.eval_steps == 0 or last or out_of_time:
                self._evaluate()
            if self.evaluator.benchmark_steps and state.step % self.evaluator.benchmark_steps == 0:
                self._benchmark()
            if state.step % config.save_steps == 0 or last or out_of_time:
                self._save()
            window_start += time.perf_counter() - paused  # tokens/s measures training, not evaluation or saving
            if out_of_time:
                self._warn_unannealed()
                break
        progress.close()
        return self._finish(stop_reason)

    def _warn_unannealed(self) -> None:
        """max_time stopped the run before max_steps: the learning rate never decayed to its floor."""
        config, step = self.config, self.state.step
        lr_ratio = lr_fraction(self.optimizer)
        log.warning("max_time %.0f s reached at step %d of max_steps %d: stopping cleanly, with the learning rate "
                    "at %.0f%% of its peak (the %s schedule ends at %.0f%%). For an annealed model, set --max_steps "
                    "to about %d for this time budget", config.max_time, step, config.max_steps, 100 * lr_ratio,
                    config.lr_schedule, 100 * LR_FLOOR[config.lr_schedule], step)

    def _log_train(self, loss: float, grad_norm: float, tokens_per_s: float, progress: tqdm) -> None:
        mfu = (tokens_per_s * self.context.flops_per_token / self.peak_flops) if self.peak_flops else None
        rates = learning_rates(self.optimizer)
        lr = rates["lr"]
        self.metrics.log("train", self.state.step, loss=loss, **rates, grad_norm=grad_norm, tokens_per_s=tokens_per_s,
                         mfu=mfu, **memory_stats(self.device), tokens_seen=self.state.tokens_seen,
                         samples_seen=self.state.samples_seen, batch_hash=self.last_batch_hash,
                         elapsed_s=self.state.elapsed_seconds)
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                             mfu=f"{mfu:.1%}" if mfu is not None else "n/a", refresh=False)

    def _evaluate(self) -> None:
        unwrapped = self.lm()
        # Unwrapped: DDP's forward would broadcast buffers, a collective that processes with unequal shares of the
        # validation windows would not all reach. Every evaluator call runs under the training autocast: outside it
        # the weights are fp32 and flash-attn (flash_attention_2) refuses fp32 queries.
        with self.accelerator.autocast():
            results = self.evaluator.evaluate(self.accelerator.unwrap_model(self.model))
        self.model.train()
        self.metrics.log("eval", self.state.step, **results, tokens_seen=self.state.tokens_seen,
                         elapsed_s=self.state.elapsed_seconds)
        log.info("step %d: %s", self.state.step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        if self.evaluator.samples is not None and self.accelerator.is_main_process:
            with self.accelerator.autocast():
                self.evaluator.samples(unwrapped, self.state.step)
        if self.accelerator.is_main_process:
            plot_loss(self.metrics.path, self.context.run_dir / "loss.png", self.context.run_name)
        best = self.state.best_val_loss
        if best is None or results["val_loss"] < best:
            self.state.best_val_loss = results["val_loss"]
            if self.accelerator.is_main_process:
                self.context.export_final(unwrapped, self.state, "best")

    def _benchmark(self) -> None:
        assert self.evaluator.benchmark is not None
        with self.accelerator.autocast():  # as in _evaluate: the training precision, never bare fp32
            results = self.evaluator.benchmark(self.lm())
        self.model.train()
        self.metrics.log("benchmark", self.state.step, **results)
        log.info("step %d: %s", self.state.step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def _save(self) -> None:
        start = time.perf_counter()
        path = save_checkpoint(self.context.run_dir, self.accelerator, self.lm(),
                               self.optimizer, self.scheduler, self.accelerator.scaler, self.state,
                               self.context.model_shape, self.context.resolved_config, self.context.meta)
        if self.accelerator.is_main_process:
            prune_checkpoints(self.context.run_dir, self.config.save_total_limit)
        log.info("saved %s in %.2f s", path, time.perf_counter() - start)

    def _finish(self, stop_reason: str) -> Path:
        self.accelerator.wait_for_everyone()
        final = self.context.run_dir / "final"
        if self.accelerator.is_main_process:
            # keep_fp32_wrapper=False strips the autocast wrapper (training is over), so the export and any
            # later use of this object compute in fp32 like a reloaded model.
            unwrapped = self.lm(keep_fp32_wrapper=False)
            self.context.export_final(unwrapped, self.state, "final")
        self.metrics.log("end", self.state.step, stop_reason=stop_reason, tokens_seen=self.state.tokens_seen,
                         elapsed_s=self.state.elapsed_seconds, best_val_loss=self.state.best_val_loss)
        self.metrics.close()
        return final
