"""The stage run stages 03 (SFT) and 04 (DPO) share: run_finetune loads the model, prepares the data, measures the
gain, trains (resumable), measures again and exports; a StageSpec holds what differs between the two stages.
The outputs are listed in utils.finetune.rundir."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.core.artifacts import write_json, write_meta
from utils.core.distributed import on_main_process, process_state, refuse_unsupported_distribution
from utils.core.environment import keep_freed_memory
from utils.finetune.config import FinetuneConfig
from utils.finetune.gain import Measurement, format_score
from utils.finetune.models import (
    TrainingModel,
    base_meta,
    export_outputs,
    load_training_model,
    resolve_max_length,
    unwrap_trained,
)
from utils.finetune.rundir import open_metrics, prepare_run_dir
from utils.finetune.trainer import final_evaluation, metrics_callback, stop_reason, training_callbacks
from utils.lm.templates import PromptTemplate, get_template

log = logging.getLogger(__name__)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class StageData:
    """Training rows in TRL's format, validation rows (eval loss, early stopping), held-out items for the gain."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    held_out: list[Any]
    report: dict[str, Any]


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
