"""The TRL/Trainer side of stages 03 and 04: the TrainingArguments SFTConfig and DPOConfig share, the callbacks
(metrics.jsonl and loss.png in the pretraining format, the --max_time limit, early stopping), and what the trainer
tells after training (why it stopped, the final validation metrics)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from utils.core.distributed import any_process
from utils.core.environment import resolve_precision
from utils.finetune.config import FinetuneConfig
from utils.lm.metrics import MetricsLogger, memory_stats, plot_loss

log = logging.getLogger(__name__)

TRAIN_KEYS = {"learning_rate": "lr"}  # Trainer log keys renamed to the pretraining names
SUMMARY_KEY = "train_runtime"  # present only in the Trainer's end-of-training log
EVAL_PREFIX = "eval_"


def trainer_arguments(config: FinetuneConfig, run_dir: Path, best_metric: str | None = None,
                      greater_is_better: bool = False, has_eval: bool = True) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and DPOConfig. Logging goes through MetricsCallback (report_to none
    here), evaluation and checkpoints every eval_steps/save_steps, early stopping on `best_metric`."""
    cpu = not torch.cuda.is_available()
    precision = resolve_precision(config.mixed_precision, "cpu" if cpu else "cuda")
    early = config.early_stopping_patience is not None and has_eval
    save_steps = config.eval_steps if early else config.save_steps  # best-model tracking needs a save per eval
    args: dict[str, Any] = dict(
        output_dir=str(run_dir), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1, warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, logging_steps=config.logging_steps,
        eval_strategy="steps" if has_eval else "no", eval_steps=config.eval_steps, save_strategy="steps",
        save_steps=save_steps, save_total_limit=config.save_total_limit, seed=config.seed,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=cpu, report_to="none",
        activation_checkpointing=config.gradient_checkpointing, dataloader_num_workers=0)
    if early:
        args.update(load_best_model_at_end=True, metric_for_best_model=best_metric,
                    greater_is_better=greater_is_better)
    return args


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def log_record(logs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A Trainer log -> (kind, values) with pretraining's names: loss, lr, grad_norm; eval_loss -> val_loss and
    the other eval_* keys without their prefix (DPO's rewards/* keep theirs); the end-of-training log -> summary."""
    values = {k: v for k, v in logs.items() if _scalar(v)}
    if SUMMARY_KEY in values:
        return "summary", values
    if any(k.startswith(EVAL_PREFIX) for k in values):
        return "eval", {("val_loss" if k == "eval_loss" else k.removeprefix(EVAL_PREFIX)): v
                        for k, v in values.items()}
    return "train", {TRAIN_KEYS.get(k, k): v for k, v in values.items()}


def metrics_callback(metrics: MetricsLogger, run_dir: Path, title: str) -> Any:
    """A TrainerCallback writing every Trainer log to metrics.jsonl (the pretraining format) and loss.png."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.summary: dict[str, Any] = {}
            self.last_eval_step: int | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            kind, values = log_record(logs)
            if kind == "summary":
                self.summary = values
                return
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            metrics.log(kind, state.global_step, **values, **memory_stats(device),
                        elapsed_s=time.perf_counter() - self.started)
            if kind == "eval":
                plot_loss(metrics.path, run_dir / "loss.png", title)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # On every process (on_log runs its body on the main one only): whether final_evaluation evaluates
            # again must be the same decision everywhere, since evaluation is collective under DDP.
            self.last_eval_step = state.global_step

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                plot_loss(metrics.path, run_dir / "loss.png", title)

    return MetricsCallback()


def time_limit_callback(max_time: float) -> Any:
    """Stops training cleanly once `max_time` seconds of it have passed (the run then exports what it has)."""
    from transformers import TrainerCallback

    class TimeLimitCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.fired = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if any_process(time.perf_counter() - self.started >= max_time):  # all processes stop at one step
                log.info("max_time %.0f s reached at step %d: stopping cleanly", max_time, state.global_step)
                self.fired = True
                control.should_training_stop = True

    return TimeLimitCallback()


def training_callbacks(config: FinetuneConfig, metrics_cb: Any, has_eval: bool) -> tuple[list[Any], Any]:
    """[metrics, time limit?, early stopping?] and the time-limit callback (None without --max_time)."""
    from transformers import EarlyStoppingCallback

    callbacks = [metrics_cb]
    timer = time_limit_callback(config.max_time) if config.max_time is not None else None
    if timer is not None:
        callbacks.append(timer)
    if config.early_stopping_patience is not None and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return callbacks, timer


def stop_reason(trainer: Any, timer: Any) -> str:
    if timer is not None and timer.fired:
        return "max_time"
    if trainer.state.global_step < trainer.state.max_steps:
        return "early_stopping"
    return "completed"


def final_evaluation(trainer: Any, metrics_cb: Any, has_eval: bool) -> dict[str, float]:
    """Validation metrics of the final model (val_loss, DPO's rewards/*): the last evaluation when it ran at the
    final step on the final weights, else a new one."""
    if not has_eval:
        return {}
    if metrics_cb.last_eval_step != trainer.state.global_step or trainer.args.load_best_model_at_end:
        logs = trainer.evaluate()
    else:
        logs = next(r for r in reversed(trainer.state.log_history) if "eval_loss" in r)
    return {k: v for k, v in log_record(logs)[1].items() if k not in ("step", "epoch")}
