"""Fine-tuning benchmark (stages 03/04): LoRA vs full SFT of the tiny model (and of base on a GPU when present),
steps/s, tokens/s and peak memory, each in a fresh process. Figures only, no targets.

    make bench-finetune
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.benchmarks.common import (
    KIB_PER_MIB,
    format_number,
    format_table,
    machine_info,
    peak_rss_kib,
    run_in_fresh_process,
)
from utils.core.artifacts import REPO_ROOT, read_json
from utils.core.config import load_config
from utils.core.errors import DataError
from utils.lm.model import load_preset

log = logging.getLogger(__name__)

MODEL = REPO_ROOT / "checkpoints" / "pretrain" / "tiny" / "final"
DATASET = REPO_ROOT / "data" / "processed" / "demo_tiny" / "demo" / "sft_train.json"
STEPS = 40
WARMUP_STEPS = 5  # not timed: the first steps allocate optimizer state and warm the kernels
BATCH = 16
METHODS = ("lora", "full")
GPU_PRESET = "base"  # measured with random weights on a GPU: speed and memory do not depend on them


@dataclass
class Case:
    method: str  # lora or full
    model: str  # a model directory, or "preset:<name>" for a random model of that preset (GPU rows)
    device: str


@dataclass
class CaseResult:
    case: Case
    params_total: int
    params_trainable: int
    steps_per_s: float
    tokens_per_s: float  # unpadded tokens of the timed steps over their time
    peak_memory_mib: float
    memory_kind: str  # "peak RSS" (CPU, the whole fresh process) or "peak allocated" (GPU)


@dataclass
class BenchResult:
    machine: dict[str, str]
    gpu: str | None
    dataset: str
    results: list[CaseResult]
    load_average: tuple[float, float]


def plan(model_path: Path) -> list[Case]:
    """LoRA and full SFT of the tiny model on CPU; on a CUDA machine, the same for the base preset on the GPU."""
    import torch

    cases = [Case(method, str(model_path), "cpu") for method in METHODS]
    if torch.cuda.is_available():
        cases += [Case(method, f"preset:{GPU_PRESET}", "cuda") for method in METHODS]
    return cases


def _model_dir(case: Case, work_dir: Path) -> Path:
    """The case's model directory; a preset gets random weights and the tiny model's tokenizer (its vocabulary)."""
    if not case.model.startswith("preset:"):
        return Path(case.model)
    from utils.lm.model import build_model

    out = work_dir / case.model.replace(":", "_")
    if out.is_dir():
        return out
    preset = load_preset(str(REPO_ROOT / "config" / f"{case.model.removeprefix('preset:')}.json"))
    tokenizer_dir = MODEL
    vocab = read_json(tokenizer_dir / "config.json")["vocab_size"]
    model = build_model(dataclasses.replace(preset.model, vocab_size=vocab), bos_token_id=1, eos_token_id=2,
                        pad_token_id=3)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    return out


def measure_case(case: Case, dataset: Path, work_dir: Path) -> CaseResult:
    """STEPS steps of the stage 03 trainer (TRL SFTTrainer); steps after the warm-up are timed."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    from utils.finetune.models import load_training_model
    from utils.finetune.sft import SFTStageConfig, build_sft_trainer, prepare_sft_data
    from utils.lm.metrics import memory_mb
    from utils.lm.templates import get_template

    config = load_config(SFTStageConfig, None, {
        "model_path": str(_model_dir(case, work_dir)), "dataset_path": str(dataset),
        "output_dir": str(work_dir), "run_name": f"{case.method}-{case.device}", "full": case.method == "full",
        "max_steps": STEPS, "batch_size": BATCH, "gain_eval_size": 0, "validation_split": 0.0,
        "logging_steps": STEPS, "save_steps": STEPS * 10, "overwrite": True})
    loaded = load_training_model(config.model_path, config.full)
    data = prepare_sft_data(config, loaded.tokenizer, get_template(config.prompt_template), loaded.context)
    marks: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (WARMUP_STEPS, STEPS):
                if case.device == "cuda":
                    torch.cuda.synchronize()
                marks[str(state.global_step)] = time.perf_counter()

    trainer = build_sft_trainer(config, loaded, data, loaded.context, work_dir / config.run_name, [StepTimer()])
    trainer.remove_callback(ProgressCallback)  # its progress bar and log lines would interleave with the report
    trainer.train()
    seconds = marks[str(STEPS)] - marks[str(WARMUP_STEPS)]
    timed = STEPS - WARMUP_STEPS
    mean_tokens = sum(len(row["input_ids"]) for row in data.train) / len(data.train)
    device = torch.device(case.device)
    memory = memory_mb(device) if device.type == "cuda" else peak_rss_kib() / KIB_PER_MIB
    return CaseResult(case, sum(p.numel() for p in trainer.model.parameters()),
                              sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                              timed / seconds, timed * BATCH * mean_tokens / seconds, memory,
                              "peak allocated" if device.type == "cuda" else "peak RSS")


def run_case(case: Case, dataset: Path, work_dir: Path) -> CaseResult:
    """One case in a freshly spawned interpreter, so that its peak memory is its own."""
    value = run_in_fresh_process(measure_case, (case, dataset, work_dir),
                                 f"fine-tuning benchmark case {case.method} on {case.device}")
    log.info("%s SFT on %s: %.2f steps/s, %.0f tokens/s, %s %.0f MiB", case.method, case.device, value.steps_per_s,
             value.tokens_per_s, value.memory_kind, value.peak_memory_mib)
    return value


def run_benchmark(work_dir: Path, model_path: Path = MODEL,
                           dataset: Path = DATASET) -> BenchResult:
    import torch

    for needed, make in ((model_path, "make pretrain-tiny"), (dataset, "make prepare-demo")):
        if not needed.exists():
            raise DataError(f"the fine-tuning benchmark needs {needed}: run {make} first, or pass another path")
    load_before = os.getloadavg()[0]
    results = [run_case(case, dataset, work_dir) for case in plan(model_path)]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return BenchResult(machine_info(), gpu, str(dataset), results, (load_before, os.getloadavg()[0]))


def _label(case: Case) -> str:
    model = (f"random {case.model.removeprefix('preset:')}" if case.model.startswith("preset:")
             else Path(case.model).parent.name + "/" + Path(case.model).name)
    return f"{case.method} ({model}, {case.device})"


def format_report(result: BenchResult) -> str:
    machine = result.machine
    rows = [[_label(r.case), f"{r.params_trainable:,} / {r.params_total:,}", format_number(r.steps_per_s, 2),
             format_number(r.tokens_per_s, 0), f"{format_number(r.peak_memory_mib, 0)} ({r.memory_kind})"]
            for r in result.results]
    notes = (f"{STEPS} steps of batch {BATCH} from {result.dataset} through the stage 03 trainer "
             f"(TRL SFTTrainer, the default precision), the first {WARMUP_STEPS} not timed; tokens/s counts "
             f"unpadded tokens; each row runs in a fresh process.")
    gpu = ("" if result.gpu else "\nGPU: not measured (no CUDA device here); on a GPU machine this adds LoRA and full "
                                 f"rows for a random {GPU_PRESET} model.")
    return "\n\n".join([
        f"Lumi fine-tuning benchmark (stages 03/04)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}; GPU: {result.gpu or 'none'}\nload average (1 min): {result.load_average[0]:.2f} "
        f"before, {result.load_average[1]:.2f} after (other work on the machine slows every figure)",
        format_table(["SFT method (model, device)", "trainable / total params", "steps/s", "tokens/s", "memory MiB"],
                     rows) + "\n" + notes + gpu,
    ])
