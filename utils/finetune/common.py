"""What stages 03 (SFT) and 04 (DPO) share: configuration, the run directory and its outputs, model and adapter
loading with a base check, LoRA settings, TRL arguments, the metrics/time-limit callbacks and resume handling.

Output layout of a run, `<output_dir>/<run_name>/`:
  checkpoint-N/          TRL/Trainer checkpoints (resumable; trainer_state.json is written last)
  adapter/               the PEFT adapter (LoRA runs) with tokenizer files; base_model_name_or_path is absolute
  merged/                a full Hugging Face model (adapter merged) with tokenizer and chat template
  metrics.jsonl loss.png the same records and plot as pretraining (utils.lm.metrics)
  config.resolved.json   every setting; meta.json: stage, base model, data, template, gains, steps, timings
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from utils.core.artifacts import atomic_directory, read_json, write_json, write_meta
from utils.core.distributed import any_process, on_main_process, process_state, refuse_unsupported_distribution
from utils.core.environment import keep_freed_memory, resolve_precision
from utils.core.errors import CheckpointError, ConfigError, DataError
from utils.finetune.datasets import seeded_split, split_count
from utils.lm.export import TOKENIZER_EXTRA_FILES, export_hf_model
from utils.lm.loading import ADAPTER_CONFIG, MODEL_CONFIG, has_tokenizer, load_tokenizer_from
from utils.lm.metrics import MetricsLogger, memory_stats, plot_loss
from utils.lm.templates import PromptTemplate, get_template

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_STATE = "trainer_state.json"  # the Trainer writes it last: its presence marks a finished save
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt")
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
RUN_OUTPUTS = ("adapter", "merged", "metrics.jsonl", "meta.json")
WEIGHT_SUFFIX = ".safetensors"
TRAIN_KEYS = {"learning_rate": "lr"}  # Trainer log keys renamed to the pretraining names
SUMMARY_KEY = "train_runtime"  # present only in the Trainer's end-of-training log
EVAL_PREFIX = "eval_"
MAX_HELD_OUT_DIVISOR = 5  # a held-out draw from the training data takes at most a fifth of it
T = TypeVar("T")


# --help texts of the FinetuneConfig fields whose meaning is the same in stages 03 and 04.
FINETUNE_HELP = {
    "dataset_path": "local .json/.jsonl(.gz) file or directory, or a Hugging Face dataset id",
    "max_time": "stop training after this many seconds and export what was learned",
    "resume_from_checkpoint": "auto (newest complete checkpoint-N of --run_name) or a checkpoint-N path",
    "overwrite": "delete an existing run directory of the same --run_name first",
}


@dataclass
class FinetuneConfig:
    """Settings shared by SFT and DPO; each is a --flag (config file < flags)."""

    model_path: str = "checkpoints/pretrain/tiny/final"
    dataset_path: str = ""
    eval_dataset_path: str | None = None  # held-out set for the before/after gain (default: <name>_eval sibling)
    output_dir: str = "checkpoints/sft"
    run_name: str | None = None  # default: <template>-<lora|full>-<YYYYmmdd-HHMMSS>
    prompt_template: str = "chatml"
    full: bool = False  # full fine-tuning instead of LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int | None = None  # overrides num_train_epochs
    max_time: float | None = None  # seconds of training; stops cleanly and exports what it has
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None  # default: the model's context
    strict: bool = False  # a sequence longer than max_length is an error instead of being truncated
    max_samples: int | None = None  # use the first N training items
    validation_split: float = 0.05  # fraction of the training items held out for eval loss
    gain_eval_size: int = 200  # held-out items for the before/after measurement (0 = skip it)
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping (None = off)
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 100
    save_total_limit: int = 2
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 42
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    resume_from_checkpoint: str | None = None  # auto (newest complete checkpoint-N of the run) or a path
    overwrite: bool = False  # delete an existing run directory of the same name first

    def __post_init__(self) -> None:
        if not self.dataset_path:
            raise ValueError("--dataset_path is required (a .json/.jsonl file, a directory, or a hub dataset id)")
        get_template(self.prompt_template)  # an unknown name is a ConfigError listing the known templates
        for name in ("lora_r", "batch_size", "gradient_accumulation_steps", "logging_steps", "eval_steps",
                     "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.early_stopping_patience is not None and self.validation_split == 0:
            raise ValueError("early_stopping_patience needs a validation split: set validation_split > 0")


# ---------------------------------------------------------------- run directory and resume


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


# ---------------------------------------------------------------- models and adapters


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """Identity of a model directory's weights (sha256 over its safetensors files) and shape, recorded in every
    adapter so that loading it onto another base is caught instead of silently producing a different model."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob(f"*{WEIGHT_SUFFIX}")):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    shape = read_json(model_dir / MODEL_CONFIG)
    return {"path": str(model_dir.resolve()), "weights_sha256": digest.hexdigest(),
            **{key: shape.get(key) for key in ("hidden_size", "num_hidden_layers", "vocab_size")}}


def check_adapter_base(adapter_dir: Path, base_dir: Path) -> None:
    """The base an adapter names must be the one it was trained on (weights and shape)."""
    meta = adapter_dir / "meta.json"
    recorded = read_json(meta).get("base_fingerprint") if meta.is_file() else None
    if not recorded:
        log.warning("%s records no base fingerprint (not made by Lumi): trusting %s", adapter_dir, base_dir)
        return
    current = model_fingerprint(base_dir)
    if current["weights_sha256"] != recorded["weights_sha256"]:
        shape = ", ".join(f"{k} {recorded.get(k)} vs {current.get(k)}" for k in ("hidden_size", "num_hidden_layers",
                                                                                 "vocab_size"))
        raise DataError(f"adapter {adapter_dir} was trained on base {recorded['path']} (weights "
                        f"{recorded['weights_sha256'][:12]}), but its base_model_name_or_path points at {base_dir} "
                        f"(weights {current['weights_sha256'][:12]}; {shape}). Point base_model_name_or_path in "
                        f"{adapter_dir / ADAPTER_CONFIG} at the original base model, or retrain the adapter.")


def adapter_base_dir(adapter_dir: Path) -> Path:
    base = read_json(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path")
    base_dir = Path(base) if base else Path()
    if not base_dir.is_absolute() and not base_dir.exists():
        base_dir = (adapter_dir / str(base)).resolve()
    if not base or not (base_dir / MODEL_CONFIG).is_file():
        raise DataError(f"the base model of adapter {adapter_dir} ({base}) is not a model directory: edit "
                        f"base_model_name_or_path in {adapter_dir / ADAPTER_CONFIG} to point at it")
    return base_dir


@dataclass
class TrainingModel:
    model: Any  # a PreTrainedModel, or a PeftModel whose adapter keeps training (adapter input)
    tokenizer: Any
    tokenizer_dir: Path  # where export_hf_model copies the tokenizer from
    base_dir: Path  # the full model directory the weights start from
    adapter_dir: Path | None = None  # set when --model_path is an adapter

    @property
    def context(self) -> int:
        return int(self.model.config.max_position_embeddings)


def load_training_model(model_path: str, full: bool) -> TrainingModel:
    """Tokenizer first (a directory without one fails before any weights load), then the model in float32.
    An adapter directory is checked against its base, then merged (full fine-tuning) or trained further."""
    from transformers import AutoModelForCausalLM

    path = Path(model_path)
    if not path.is_dir():
        raise DataError(f"model directory not found: {path}; pass a pretraining final/, an SFT merged/ or adapter/")
    is_adapter = (path / ADAPTER_CONFIG).is_file()
    if not is_adapter and not (path / MODEL_CONFIG).is_file():
        raise DataError(f"{path} is neither a model directory ({MODEL_CONFIG}) nor a PEFT adapter ({ADAPTER_CONFIG})")
    base_dir = adapter_base_dir(path) if is_adapter else path
    tokenizer_dir = path if has_tokenizer(path) or not is_adapter else base_dir
    tokenizer = load_tokenizer_from(tokenizer_dir)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("the tokenizer of %s has no chat template; the merged model will carry none", tokenizer_dir)
    if is_adapter:
        check_adapter_base(path, base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if is_adapter:
        model = _attach_adapter(model, path, trainable=not full)
    log.info("loaded %s (%s parameters%s)", path, f"{sum(p.numel() for p in model.parameters()):,}",
             f", adapter on {base_dir}" if is_adapter else "")
    return TrainingModel(model, tokenizer, tokenizer_dir, base_dir, path if is_adapter else None)


def _attach_adapter(model: Any, adapter_dir: Path, trainable: bool) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    except RuntimeError as exc:  # PEFT reports a base of another shape as a state-dict size mismatch
        raise DataError(f"adapter {adapter_dir} does not fit its base model ({str(exc).splitlines()[0][:200]}): "
                        f"point base_model_name_or_path at the model it was trained on") from exc
    return peft_model if trainable else peft_model.merge_and_unload()


def lora_config(config: FinetuneConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=list(config.lora_target_modules))


def peft_config_for(config: FinetuneConfig, loaded: TrainingModel) -> Any:
    """A new LoRA adapter, or None: full fine-tuning, or an input adapter that keeps training."""
    if config.full:
        return None
    if loaded.adapter_dir is not None:
        log.info("training the adapter of %s further (its own LoRA settings apply)", loaded.adapter_dir)
        return None
    return lora_config(config)


def resolve_max_length(config: FinetuneConfig, loaded: TrainingModel) -> int:
    if config.max_length is not None and config.max_length > loaded.context:
        raise ConfigError(f"--max_length {config.max_length} exceeds the context of {config.model_path} "
                          f"({loaded.context} positions); lower --max_length")
    return config.max_length or loaded.context


# ---------------------------------------------------------------- trainer arguments and callbacks


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


def open_metrics(config: FinetuneConfig, run_dir: Path, resume: Path | None, stage: str,
                 resolved: dict[str, Any], enabled: bool) -> MetricsLogger:
    """metrics.jsonl (and TensorBoard/W&B) of the run, written when `enabled`: on the main process only; on
    resume, the events after the checkpoint are forgotten (they will recur)."""
    metrics = MetricsLogger(run_dir, config.report_to, enabled=enabled, run_name=f"{stage}-{run_dir.name}",
                            config=resolved)
    if resume is not None:
        metrics.truncate_after(checkpoint_step(resume))
    return metrics


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


# ---------------------------------------------------------------- outputs


def unwrap_trained(trainer: Any) -> Any:
    """The trained model without the mixed-precision wrapper, so exports and measurements run in float32."""
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def save_adapter(model: Any, loaded: TrainingModel, adapter_dir: Path, meta: dict[str, Any]) -> Path:
    """adapter/: the PEFT weights, the tokenizer, and meta.json with the base fingerprint; base_model_name_or_path
    is the absolute base directory so utils.lm.loading.load_model and PEFT's Auto classes find it from anywhere."""
    with atomic_directory(adapter_dir) as tmp:
        model.save_pretrained(tmp, selected_adapters=["default"])
        config_path = tmp / ADAPTER_CONFIG
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = str(loaded.base_dir.resolve())
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        loaded.tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_EXTRA_FILES:
            if (loaded.tokenizer_dir / name).is_file():
                shutil.copy2(loaded.tokenizer_dir / name, tmp / name)
        write_meta(tmp, **meta, base_fingerprint=model_fingerprint(loaded.base_dir))
    return adapter_dir


def export_outputs(model: Any, loaded: TrainingModel, run_dir: Path, resolved: dict[str, Any],
                   meta: dict[str, Any]) -> Path:
    """Write adapter/ (LoRA runs) and merged/ (what stages 05 and 06 load); returns merged/."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        save_adapter(model, loaded, run_dir / "adapter", meta)
        model = model.merge_and_unload()
    merged = export_hf_model(model, loaded.tokenizer_dir, run_dir / "merged", resolved, meta)
    log.info("wrote %s", ", ".join(str(run_dir / n) for n in ("adapter", "merged") if (run_dir / n).is_dir()))
    return merged


def base_meta(stage: str, config: FinetuneConfig, loaded: TrainingModel) -> dict[str, Any]:
    """What merged/ and adapter/ record about their origin; the dataset of the base model travels along so that
    evaluation finds the demo multiple-choice set of the corpus the model was pretrained on."""
    base = read_json(loaded.base_dir / "meta.json") if (loaded.base_dir / "meta.json").is_file() else {}
    return {"stage": stage, "base_model": str(Path(config.model_path)), "dataset": base.get("dataset"),
            "finetune_dataset": config.dataset_path, "template": config.prompt_template,
            "method": "full" if config.full else "lora", "tokenizer_sha256": base.get("tokenizer_sha256")}


def held_out_set(config: FinetuneConfig, items: list[T], load: Callable[[str], list[T]],
                 usable: Callable[[T], bool]) -> tuple[list[T], list[T], str | None]:
    """(training items, held-out items for the before/after gain, their source). The held-out set is
    --eval_dataset_path, else the `<name>_eval` sibling of the dataset, else a seeded draw from the training items
    (at most a fifth of them, removed from training). Items the measurement cannot use are skipped."""
    if config.gain_eval_size == 0:
        return items, [], None
    source = config.eval_dataset_path or eval_sibling(config.dataset_path)
    if source is not None:
        return items, [x for x in load(str(source)) if usable(x)][:config.gain_eval_size], str(source)
    if not any(usable(x) for x in items):
        return items, [], None
    rest, held = seeded_split(items, min(config.gain_eval_size, len(items) // MAX_HELD_OUT_DIVISOR), config.seed)
    return rest, [x for x in held if usable(x)], f"seeded draw from {config.dataset_path}"


def validation_set(config: FinetuneConfig, items: list[T]) -> tuple[list[T], list[T]]:
    """(train, validation): a seeded `validation_split` fraction of the training items, for eval loss."""
    return seeded_split(items, split_count(len(items), config.validation_split), config.seed + 1)


def eval_sibling(dataset_path: str) -> Path | None:
    """`<name>_train.<ext>` -> an existing `<name>_eval.<ext>` beside it (the demo's held-out sets)."""
    path = Path(dataset_path)
    if not path.is_file() or "_train" not in path.name:
        return None
    sibling = path.with_name(path.name.replace("_train", "_eval"))
    return sibling if sibling.is_file() else None


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


# ---------------------------------------------------------------- the stage run both scripts share


@dataclass
class StageData:
    """Training rows in TRL's format, validation rows (eval loss, early stopping), held-out items for the gain."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    held_out: list[Any]
    report: dict[str, Any]


@dataclass
class Measurement:
    scores: dict[str, float]  # the stage's gain metric first
    records: list[dict[str, Any]]  # one per held-out item, each with its "index"
    seconds: float = 0.0  # set by the runner


@dataclass
class StageSpec:
    """What distinguishes SFT from DPO; everything else in `run_finetune` is shared."""

    name: str
    gain_metric: str
    gain_rule: str
    prepare: Callable[[Any, Any, PromptTemplate, int], StageData]  # (config, tokenizer, template, max_length)
    measure: Callable[[Any, Any, PromptTemplate, list[Any], Any], Measurement]  # (model, tok, template, items, cfg)
    build_trainer: Callable[[Any, TrainingModel, StageData, int, Path, list[Any]], Any]
    extra_meta: Callable[[Any, Any, dict[str, float]], dict[str, Any]]  # (config, trainer, final_eval)


def _measure(spec: StageSpec, model: Any, loaded: TrainingModel, template: PromptTemplate, data: StageData,
             config: FinetuneConfig, when: str) -> Measurement | None:
    if not data.held_out:
        return None
    start = time.perf_counter()
    result = spec.measure(model, loaded.tokenizer, template, data.held_out, config)
    result.seconds = time.perf_counter() - start
    shown = ", ".join(f"{k} {format_score(k, v)}" for k, v in result.scores.items())
    log.info("%s %s: %s on %d held-out items (%.1f s)", when, spec.name.upper(), shown, len(result.records),
             result.seconds)
    return result


def format_score(name: str, value: float) -> str:
    """Losses in nats, rates (accuracies, matches) in percent."""
    return f"{value:.3f} nats" if name.endswith("loss") else f"{100 * value:.1f}%"


def gain_record(spec: StageSpec, before: Measurement | None, after: Measurement | None) -> dict[str, Any] | None:
    """The stage's metric (or, where the held-out items cannot give it, the first one measured) before and after."""
    if before is None or after is None:
        return None
    metric = spec.gain_metric if spec.gain_metric in before.scores else next(iter(before.scores))
    extra = {k: {"before": before.scores[k], "after": after.scores[k]} for k in before.scores if k != metric}
    return {"metric": metric, "before": before.scores[metric], "after": after.scores[metric],
            "n": len(before.records), "rule": spec.gain_rule, **extra}


def _write_gain_items(path: Path, before: Measurement, after: Measurement) -> None:
    with path.open("w") as fh:
        for b, a in zip(before.records, after.records, strict=True):
            fh.write(json.dumps({"index": b["index"], "before": b, "after": a}) + "\n")


def run_finetune(spec: StageSpec, config: FinetuneConfig) -> Path:
    """Load, prepare data, measure, train (resumable), measure again, export; returns the run directory.

    Under torchrun every process trains; only the main process creates the run directory, measures the gain and
    writes metrics, meta.json and the exports (the others would race it: rmtree, renames, appends)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    refuse_unsupported_distribution()
    process = process_state()
    main = process.is_main_process
    if process.num_processes > 1:
        log.info("%s on %d processes (DDP); this is process %d", spec.name, process.num_processes,
                 process.process_index)
    if not torch.cuda.is_available():
        keep_freed_memory()
    template = get_template(config.prompt_template)
    run_dir, resume = on_main_process(process, lambda: prepare_run_dir(config))
    loaded = load_training_model(config.model_path, config.full)
    max_length = resolve_max_length(config, loaded)
    data = spec.prepare(config, loaded.tokenizer, template, max_length)
    resolved = {**dataclasses.asdict(config), "max_length": max_length, "run_dir": str(run_dir)}
    if main:
        write_json(run_dir / "config.resolved.json", resolved)
        write_meta(run_dir, stage=spec.name, status="training")

    has_eval = bool(data.validation)
    metrics = open_metrics(config, run_dir, resume, spec.name, resolved, enabled=main)
    metrics_cb = metrics_callback(metrics, run_dir, f"{spec.name.upper()} {run_dir.name}")
    callbacks, timer = training_callbacks(config, metrics_cb, has_eval)
    trainer = spec.build_trainer(config, loaded, data, max_length, run_dir, callbacks)
    # After the trainer has placed the model on its device (the GPU), so that before and after run alike.
    before = _measure(spec, trainer.model, loaded, template, data, config, "before") if main else None
    train_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.perf_counter() - train_start
    final_eval = final_evaluation(trainer, metrics_cb, has_eval)  # every process: evaluation is collective
    if not main:
        return run_dir
    model = unwrap_trained(trainer)
    after = _measure(spec, model, loaded, template, data, config, "after")

    gain = gain_record(spec, before, after)
    if gain is not None:
        _write_gain_items(run_dir / "gain.jsonl", before, after)
    meta = {**base_meta(spec.name, config, loaded), "steps": trainer.state.global_step, "gain": gain,
            "data": data.report, "stop_reason": stop_reason(trainer, timer), "final_eval": final_eval,
            **spec.extra_meta(config, trainer, final_eval)}
    merged = export_outputs(model, loaded, run_dir, resolved, meta)
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu, "train_s": train_seconds,
              "steps_per_s": metrics_cb.summary.get("train_steps_per_second"),
              "gain_before_s": before.seconds if before else None, "gain_after_s": after.seconds if after else None}
    metrics.log("end", trainer.state.global_step, stop_reason=meta["stop_reason"], **final_eval, **timing)
    metrics.close()
    write_meta(run_dir, **meta, status="done", timing=timing, merged=str(merged))
    _summarize(spec, run_dir, meta, timing)
    return run_dir


def _summarize(spec: StageSpec, run_dir: Path, meta: dict[str, Any], timing: dict[str, Any]) -> None:
    gain = meta["gain"]
    if gain is not None:
        log.info("%s %s on %d held-out items: before %s, after %s", spec.name.upper(), gain["metric"], gain["n"],
                 format_score(gain["metric"], gain["before"]), format_score(gain["metric"], gain["after"]))
    else:
        log.info("no usable held-out items: the %s gain was not measured", spec.name.upper())
    log.info("trained %d steps in %.0f s (stage: %.0f s wall, %.0f s CPU); stop: %s", meta["steps"],
             timing["train_s"], timing["wall_s"], timing["cpu_s"], meta["stop_reason"])
    log.info("outputs: %s", ", ".join(str(run_dir / n) for n in ("adapter", "merged", "metrics.jsonl", "loss.png",
                                                                 "meta.json") if (run_dir / n).exists()))
