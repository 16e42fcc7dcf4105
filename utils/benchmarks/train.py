"""Training-throughput benchmark (stage 02): tokens/s and MFU of our training step for tiny, small and base, eager and
compiled, beside a plain-PyTorch reference step of the same shape (utils/benchmarks/reference_llama.py); peak memory;
checkpoint save time; GPU rows under CUDA.

    make bench-train                   # make bench-train ARGS='--quick': tiny only

Each configuration runs in a freshly spawned process (its own peak memory, its own Accelerate singleton). There
our real pipeline (`TrainingLoop.train_step` over `PretrainData`, wired as `utils.train.pretrain.pretrain` wires it)
and the reference step are timed in alternating blocks, so machine noise hits both. torch is imported inside these
functions only (see common.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.benchmarks.common import (
    MB,
    MIB,
    TargetCheck,
    format_checks,
    format_number,
    format_table,
    machine_info,
    run_in_fresh_process,
)
from utils.benchmarks.reference_llama import TrainReference
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.lm.model import ModelConfig, count_parameters, load_preset

log = logging.getLogger(__name__)

REFERENCE_RATIO_TARGET = 0.9  # our step's tokens/s over the reference's, at equal precision on CPU
GPU_MFU_TARGET = 0.40  # base at max_length 1024, bf16, compiled
GPU_MFU_TARGET_DEVICE = "H100"  # the MFU target is set for this GPU; others get the figure without a verdict
GPU_CHECKPOINT_TARGET_S = 5.0  # one save of base (weights, AdamW state, RNG) on a GPU machine
CPU_CHECKPOINT_LIMIT_S = 30.0  # base is saved again on CPU only while one save takes less than this
CHECKPOINT_REPEATS = 3
PRESETS = ("tiny", "small", "base")
# (batch, max_length) per preset on CPU. tiny trains at its own default shape; small and base are GPU presets whose
# defaults (32 and 16 sequences of 1024 tokens, with accumulation) take minutes per step on 2 cores.
CPU_SHAPES = {"tiny": (16, 256), "small": (4, 256), "base": (2, 256)}
# (preset, --mixed_precision, --compile) rows measured on CPU; bf16 is the pipeline's CPU default.
CPU_ROWS = (("tiny", "bf16", False), ("tiny", "no", False), ("tiny", "bf16", True),
                  ("small", "bf16", False), ("small", "bf16", True), ("base", "bf16", False), ("base", "bf16", True))
CPU_NOT_MEASURED = {
    ("base", "bf16", True): "compiling base and the reference (~1.5 min more) would take make bench-train past "
                            "~10 min on 2 CPU cores; the compiled tiny and small rows stand for it",
}
CHECKPOINT_PRESETS = ("tiny", "base")  # saved after their eager bf16 rows
GPU_PRESET = "base"
GPU_SHAPE = (16, 1024)
DEMO_STORIES = 4000  # ~200k tokens: enough windows for every shape above
DATA_VOCAB = 1024
WARMUP_STEPS = 2  # the first step allocates optimizer state (and compiles under --compile)
ROUNDS = 8
STEPS_PER_ROUND = 1
PRECISION_NAMES = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}
TERA = 1e12


@dataclass(frozen=True)
class Case:
    """One configuration. `precision` is a --mixed_precision value; `reference` times the plain step beside ours."""

    preset: str
    batch_size: int
    max_length: int
    precision: str
    compile: bool = False
    gradient_checkpointing: bool = False
    device: str = "cpu"
    reference: bool = True
    checkpoint_saves: int = 0
    rounds: int = ROUNDS

    @property
    def label(self) -> str:
        parts = [self.preset, f"{self.batch_size}x{self.max_length}", PRECISION_NAMES[self.precision],
                 "compile" if self.compile else "eager"]
        return " ".join(parts + (["grad-ckpt"] if self.gradient_checkpointing else []))


@dataclass
class Skipped:
    label: str
    reason: str


@dataclass
class CaseResult:
    """Step times (seconds) of one configuration; tokens/s from the median step, MFU against `peak_flops`."""

    case: Case
    params: int
    flops_per_token: float
    peak_flops: float | None
    peak_source: str
    first_step_s: float
    reference_first_step_s: float | None
    ours_step_s: list[float]
    reference_step_s: list[float]
    peak_memory_mib: float
    checkpoint_save_s: list[float]
    checkpoint_mib: float | None
    peak_reserved_mib: float | None = None  # what the CUDA caching allocator held at peak (None on a CPU)
    ours_tokens_per_s: float = field(init=False)
    reference_tokens_per_s: float | None = field(init=False)
    ours_mfu: float | None = field(init=False)
    reference_mfu: float | None = field(init=False)
    ratio: float | None = field(init=False)
    best_ratio: float | None = field(init=False)  # of the fastest steps: the least slowed by other work

    def __post_init__(self) -> None:
        tokens = self.case.batch_size * self.case.max_length
        self.ours_tokens_per_s = tokens / statistics.median(self.ours_step_s)
        self.reference_tokens_per_s = (tokens / statistics.median(self.reference_step_s)
                                       if self.reference_step_s else None)
        self.ours_mfu = self.mfu(self.ours_tokens_per_s)
        self.reference_mfu = self.mfu(self.reference_tokens_per_s)
        self.ratio = self.ours_tokens_per_s / self.reference_tokens_per_s if self.reference_tokens_per_s else None
        self.best_ratio = min(self.reference_step_s) / min(self.ours_step_s) if self.reference_step_s else None

    def mfu(self, tokens_per_s: float | None) -> float | None:
        if tokens_per_s is None or not self.peak_flops:
            return None
        return tokens_per_s * self.flops_per_token / self.peak_flops


@dataclass
class BenchResult:
    machine: dict[str, str]
    load_average: tuple[float, float]  # 1-minute load before and after: other work on the machine skews figures
    torch_version: str
    gpu: str | None
    results: list[CaseResult]
    skipped: list[Skipped]
    checks: list[TargetCheck]


def data_config(work_dir: Path) -> DataConfig:
    return DataConfig(name="bench_train", source="demo", demo_num_stories=DEMO_STORIES,
                      vocab_size=DATA_VOCAB, max_length=GPU_SHAPE[1], num_workers=0,
                      output_dir=str(work_dir), force=True)


def plan(quick: bool, gpu: str | None, rounds: int = ROUNDS) -> tuple[list[Case], list[Skipped]]:
    """The CPU rows (tiny only under --quick), then the GPU rows when a CUDA device is present."""
    cases: list[Case] = []
    skipped: list[Skipped] = []
    for preset, precision, compiled in CPU_ROWS:
        batch, length = CPU_SHAPES[preset]
        saves = CHECKPOINT_REPEATS if preset in CHECKPOINT_PRESETS and precision == "bf16" \
            and not compiled else 0
        case = Case(preset, batch, length, precision, compiled, checkpoint_saves=saves, rounds=rounds)
        reason = "--quick measures tiny only" if quick and preset != "tiny" else \
            CPU_NOT_MEASURED.get((preset, precision, compiled))
        if reason:
            skipped.append(Skipped(f"CPU {case.label}", reason))
        else:
            cases.append(case)
    if gpu is None:
        skipped.append(Skipped("GPU rows", "no CUDA device on this machine (torch.cuda.is_available() is "
                                                "False): GPU figures were not measured"))
        return cases, skipped
    batch, length = GPU_SHAPE
    for compiled in (False, True):
        for checkpointing in (False, True):
            saves = CHECKPOINT_REPEATS if not (compiled or checkpointing) else 0
            cases.append(Case(GPU_PRESET, batch, length, "bf16", compiled, checkpointing, device="cuda",
                                   reference=False, checkpoint_saves=saves, rounds=rounds))
    return cases, skipped


def _never_called(*_: Any) -> Any:
    raise AssertionError("the training benchmark never evaluates or exports")


def pipeline_loop(case: Case, data_path: Path, run_dir: Path) -> Any:
    """Our stage 02 pieces, wired as `utils.train.pretrain.pretrain` wires them, minus evaluation and exports."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from utils.core.environment import choose_attention, resolve_precision
    from utils.lm.metrics import flops_per_token
    from utils.lm.model import build_model
    from utils.lm.tokenizer import PAD_ID
    from utils.train.loop import Evaluator, RunContext, TrainingLoop, set_determinism
    from utils.train.pretrain import PretrainData, load_pretrain_config, resolve_model
    from utils.train.windows import SampleOrder, TokenWindows, load_dataset_info

    cli = {"data_path": str(data_path), "output_dir": str(run_dir), "batch_size": case.batch_size,
           "max_length": case.max_length, "gradient_accumulation_steps": 1, "mixed_precision": case.precision,
           "compile": case.compile, "gradient_checkpointing": case.gradient_checkpointing}
    preset, config = load_pretrain_config(case.preset, cli)
    info = load_dataset_info(data_path)
    model_config, max_length = resolve_model(preset, config, info)
    # The demo tokenizer has 1,024 pieces; the presets are sized for 32,768. Keeping the preset's embedding and tied
    # head makes parameters and FLOPs the preset's, and ids < 1,024 are valid rows of the larger table.
    model_config = dataclasses.replace(model_config, vocab_size=preset.model.vocab_size)
    set_determinism(config.deterministic)
    accelerator = Accelerator(mixed_precision=resolve_precision(config.mixed_precision, case.device),
                              cpu=case.device == "cpu")
    set_seed(config.seed)
    model = build_model(model_config, attn_implementation=choose_attention(no_flash_attn=not config.flash_attn),
                        bos_token_id=info.bos_id, eos_token_id=info.eos_id, pad_token_id=PAD_ID, use_cache=False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    train = TokenWindows(info, "train", max_length)
    data = PretrainData(train, SampleOrder(train.num_windows, config.seed), config.batch_size,
                        accelerator.process_index, accelerator.num_processes)
    shape = model_config.shape()
    context = RunContext(run_dir=run_dir, resolved_config={"preset": case.preset, "model": shape,
                                                           "max_length": max_length, **dataclasses.asdict(config)},
                         model_shape=shape, meta={"stage": "bench-train"}, tokens_per_sample=max_length,
                         flops_per_token=flops_per_token(model_config, max_length), export_final=_never_called,
                         run_name=f"bench-train-{case.preset}")
    return TrainingLoop(accelerator, model, config, data, Evaluator(evaluate=_never_called), context)


def _time_steps(step: Callable[[], object], count: int, device: Any) -> list[float]:
    import torch

    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _interleave(steps: dict[str, Callable[[], object]], rounds: int, device: Any) -> dict[str, list[float]]:
    """Blocks of STEPS_PER_ROUND steps in ABBA order, so slow drift in the machine hits every step alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(rounds):
        for name in (list(steps) if index % 2 == 0 else list(reversed(steps))):
            times[name] += _time_steps(steps[name], STEPS_PER_ROUND, device)
    return times


def _checkpoint_saves(loop: Any, run_dir: Path, count: int, limit_s: float) -> tuple[list[float], float | None]:
    """`save_checkpoint` of the live pipeline state, each into a new directory; stops early after a save > limit_s."""
    from utils.train.checkpoint import save_checkpoint

    times: list[float] = []
    size = None
    accelerator, context = loop.accelerator, loop.context
    for index in range(count):
        target = run_dir / f"save-{index}"
        start = time.perf_counter()
        path = save_checkpoint(target, accelerator, accelerator.unwrap_model(loop.model), loop.optimizer,
                               loop.scheduler, accelerator.scaler, loop.state, context.model_shape,
                               context.resolved_config, context.meta)
        times.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in path.iterdir()) / MIB
        shutil.rmtree(target)  # base checkpoints are ~1.5 GB each
        log.info("checkpoint save %d: %.2f s, %.0f MiB", index + 1, times[-1], size)
        if times[-1] > limit_s:
            break
    return times, size


def measure_case(case: Case, data_path: Path) -> CaseResult:
    """Warm up ours, note its peak memory (before the reference exists), then time ours and the reference."""
    from utils.lm.metrics import memory_stats

    with tempfile.TemporaryDirectory(prefix="lumi-bench-train-") as run_dir:
        loop = pipeline_loop(case, data_path, Path(run_dir))
        # The loop's own step, private but exactly what `TrainingLoop.run` calls: data, forward, backward, clip, step.
        ours = loop.train_step
        warmup = _time_steps(ours, WARMUP_STEPS, loop.device)
        memory = memory_stats(loop.device)
        steps: dict[str, Callable[[], object]] = {"ours": ours}
        reference_first = None
        shape = ModelConfig(**loop.context.model_shape)
        if case.reference:
            reference = TrainReference(shape, loop, case.precision, case.compile, loop.data.micro_batches(0, 1)[0])
            reference_first = _time_steps(reference.step, WARMUP_STEPS, loop.device)[0]
            steps["reference"] = reference.step
        log.info("%s: warmed up (first step %.1f s); timing %d rounds of %d steps", case.label, warmup[0],
                 case.rounds, STEPS_PER_ROUND)
        times = _interleave(steps, case.rounds, loop.device)
        limit = CPU_CHECKPOINT_LIMIT_S if case.device == "cpu" else float("inf")
        saves, size = _checkpoint_saves(loop, Path(run_dir), case.checkpoint_saves, limit)
    return CaseResult(case, count_parameters(shape).total, loop.context.flops_per_token, loop.peak_flops,
                           loop.peak_source, warmup[0], reference_first, times["ours"], times.get("reference", []),
                           memory["memory_mb"], saves, size, memory.get("memory_reserved_mb"))


def run_case(case: Case, data_path: Path) -> CaseResult:
    """Measure one configuration in a freshly spawned interpreter."""
    log.info("measuring %s on %s in a fresh process", case.label, case.device)
    return run_in_fresh_process(measure_case, (case, data_path),
                                f"training benchmark {case.label} on {case.device}")


def _checks(results: Sequence[CaseResult], gpu: str | None) -> list[TargetCheck]:
    checks = [TargetCheck(f"ours / reference tokens/s, CPU {r.case.label}", r.ratio, REFERENCE_RATIO_TARGET,
                          "x") for r in results if r.ratio is not None]
    for result in results:
        case = result.case
        if case.device != "cuda":
            continue
        if case.compile and not case.gradient_checkpointing and result.ours_mfu is not None \
                and GPU_MFU_TARGET_DEVICE in (gpu or ""):
            checks.append(TargetCheck(f"MFU {case.label}, {gpu}", 100 * result.ours_mfu,
                                      100 * GPU_MFU_TARGET, "%"))
        if result.checkpoint_save_s:
            checks.append(TargetCheck(f"checkpoint save {case.preset}, GPU machine",
                                      statistics.median(result.checkpoint_save_s), GPU_CHECKPOINT_TARGET_S, "s",
                                      higher_is_better=False))
    return checks


def run_benchmark(work_dir: Path, quick: bool, rounds: int = ROUNDS) -> BenchResult:
    """Prepare a demo dataset once, then measure every planned configuration, each in a fresh process."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load_before = os.getloadavg()[0]
    data_path = prepare_dataset(data_config(work_dir))
    cases, skipped = plan(quick, gpu, rounds)
    results = [run_case(case, data_path) for case in cases]
    return BenchResult(machine_info(), (load_before, os.getloadavg()[0]), torch.__version__, gpu, results,
                            skipped, _checks(results, gpu))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _speed_table(results: Sequence[CaseResult]) -> str:
    rows = [[r.case.label, format_number(r.params / MB, 1), format_number(r.ours_tokens_per_s, 0), _percent(r.ours_mfu),
             format_number(r.reference_tokens_per_s, 0), _percent(r.reference_mfu), format_number(r.ratio, 2),
             format_number(r.best_ratio, 2), format_number(r.peak_flops / TERA if r.peak_flops else None, 2),
             f"{r.first_step_s:.1f} / {format_number(r.reference_first_step_s, 1)}",
             format_number(r.peak_memory_mib, 0), format_number(r.peak_reserved_mib, 0)]
            for r in results]
    return format_table(["configuration (batch x seq)", "params M", "ours tok/s", "ours MFU", "ref tok/s", "ref MFU",
                         "ours/ref", "best ours/ref", "peak TFLOP/s", "1st step s ours/ref", "peak MiB",
                         "reserved MiB"], rows)


def _checkpoint_table(results: Sequence[CaseResult]) -> str:
    rows = [[f"{r.case.preset} ({r.case.device})", format_number(r.checkpoint_mib, 0), str(len(r.checkpoint_save_s)),
             format_number(statistics.median(r.checkpoint_save_s), 2),
             f"{min(r.checkpoint_save_s):.2f}-{max(r.checkpoint_save_s):.2f}"]
            for r in results if r.checkpoint_save_s]
    return format_table(["checkpoint save (weights, AdamW, RNG)", "MiB", "saves", "median s", "range s"], rows)


def _notes(result: BenchResult) -> str:
    sources = sorted({f"{PRECISION_NAMES[r.case.precision]}: {r.peak_source}" for r in result.results})
    vocab = load_preset(PRESETS[0]).model.vocab_size
    steps = result.results[0].case.rounds * STEPS_PER_ROUND if result.results else 0
    return "\n".join([
        f"data: the demo corpus ({DEMO_STORIES:,} stories, a {DATA_VOCAB:,}-piece tokenizer) through "
        f"PretrainData; the models keep the presets' {vocab:,}-row embedding and tied head (ids < "
        f"{DATA_VOCAB:,} are valid rows), so parameters and FLOPs are the presets'.",
        "ours: TrainingLoop.train_step of the real pipeline (Accelerate autocast, HF LlamaForCausalLM with SDPA, "
        "the fused linear cross-entropy of utils/train/loss.py, fused AdamW, clipping, LR schedule), one "
        "micro-batch per optimizer step. ref: the plain-PyTorch step in utils/benchmarks/reference_llama.py (same "
        "shape, parameter count, optimizer settings, precision and batch; F.cross_entropy over materialised logits). "
        "On CPU the loop sets glibc to keep freed memory (utils/core/environment.py keep_freed_memory) for the whole "
        "process, so the reference, timed in the same process, gains from it as well.",
        f"tokens/s from the median of {steps} steps each, timed in alternating blocks of {STEPS_PER_ROUND} "
        f"after {WARMUP_STEPS} warm-up steps; targets use the medians, 'best ours/ref' compares the fastest "
        f"step of each (the one least slowed by other work). peak MiB: the process's peak RSS (CPU) or max "
        f"allocated (GPU) after our warm-up, before the reference is built; reserved MiB: the CUDA caching "
        f"allocator's peak (GPU only).",
        "MFU = tokens/s x (6 x matmul params + 12 x layers x heads x head_dim x seq) / peak; peak: "
        + "; ".join(sources) + ".",
    ])


def format_report(result: BenchResult) -> str:
    machine = result.machine
    cpu = [r for r in result.results if r.case.device == "cpu"]
    gpu = [r for r in result.results if r.case.device == "cuda"]
    sections = [
        f"Lumi training benchmark (stage 02)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}, torch {result.torch_version}; GPU: {result.gpu or 'none'}\n"
        f"load average (1 min): {result.load_average[0]:.2f} before, {result.load_average[1]:.2f} after "
        f"({machine['cpus']} CPUs; other work on the machine slows both sides of each comparison)",
        _notes(result),
        "CPU\n" + _speed_table(cpu),
    ]
    if gpu:
        sections.append(f"GPU ({result.gpu})\n" + _speed_table(gpu))
    if result.skipped:
        sections.append("\n".join(f"not measured: {s.label}: {s.reason}" for s in result.skipped))
    if any(r.checkpoint_save_s for r in result.results):
        sections.append(_checkpoint_table(result.results))
    sections.append(format_checks(result.checks))
    return "\n\n".join(sections)
