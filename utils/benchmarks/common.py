"""Benchmarks: measured figures, and PASS/FAIL against named targets. Figures are printed, never asserted in tests.

Shared helpers (targets, tables, machine description) come first; each benchmark then has its own section
whose public names share a prefix:

  data_*  stage 01 on the prose corpus of the LUMI_DATA_DIR mirror, at 1x and Nx size (throughput per stage, end to
          end, peak memory of a fresh process), plus a MinHash microbenchmark on short documents.
  train_* stage 02: tokens/s and MFU of our training step for tiny, small and base, eager and compiled, beside a
          plain-PyTorch reference step of the same shape; peak memory; checkpoint save time; GPU rows under CUDA.
  serve_* stage 06: batch-1 time to first token and decode tokens/s (engine and HTTP), and 64 concurrent streaming
          requests against a real server: statuses (200/429 only), latency percentiles, tokens/s, memory.
  finetune_* stages 03/04: LoRA vs full SFT of the tiny model (and of base on a GPU when present), steps/s,
          tokens/s and peak memory, each in a fresh process. Figures only, no targets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from datasketch import MinHash

from utils.core.artifacts import REPO_ROOT, read_json
from utils.core.cli import setup_logging
from utils.core.config import load_config
from utils.core.errors import DataError, LumiError
from utils.core.hub import mirror_root
from utils.data.config import DataConfig
from utils.data.dedup import SCHEME, MinHasher, shingles
from utils.data.prepare import prepare_dataset
from utils.data.sources import resolve_input_files
from utils.lm.model import ModelConfig, count_parameters, load_preset

log = logging.getLogger(__name__)

KIB_PER_MIB = 1024
FIGURE_INTEGER_FROM = 1000
MB = 1e6


class TargetMissed(LumiError):
    """A benchmark ran to completion but at least one figure missed its target."""

    exit_code = 3


@dataclass
class TargetCheck:
    """One figure against its target; `passed` is computed."""

    name: str
    value: float
    target: float
    unit: str
    higher_is_better: bool = True
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.value >= self.target if self.higher_is_better else self.value <= self.target

    def headroom(self) -> str:
        """How far the value is on the good side of the target, as a percentage of it (negative: missed by)."""
        ratio = self.value / self.target
        return f"{ratio - 1 if self.higher_is_better else 1 - ratio:+.0%}"


def machine_info() -> dict[str, str]:
    return {"processor": platform.processor() or platform.machine(), "cpus": str(os.cpu_count()),
            "python": f"{platform.python_implementation()} {platform.python_version()}"}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def format_checks(checks: Sequence[TargetCheck]) -> str:
    rows = [[c.name, f"{_figure(c.value)} {c.unit}", f"{'>=' if c.higher_is_better else '<='} {_figure(c.target)} "
             f"{c.unit}", c.headroom(), "PASS" if c.passed else "FAIL"] for c in checks]
    return format_table(["target", "measured", "required", "headroom", "result"], rows)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _figure(value: float) -> str:
    """Large figures as whole numbers, small ones with two decimals."""
    return _number(value, 0 if abs(value) >= FIGURE_INTEGER_FROM else 2)


# --- Data preparation (stage 01) -------------------------------------------------------------------------------

DATA_MINHASH_TARGET_DOCS_PER_S = 30_000.0
DATA_END_TO_END_TARGET_MB_PER_S = 1.0  # excluding tokenizer training
DATA_MEMORY_RATIO_TARGET = 1.5  # peak memory of the Nx run over the 1x run
DATA_CONFIG_PATH = REPO_ROOT / "config" / "datasets" / "british_fiction.json"
DATA_PROSE_SUBDIR = Path("data") / "prose" / "british-fiction"
DATA_TINYSTORIES_FILE = Path("data") / "tinystories" / "TinyStories-train.first_stories.txt"
DATA_MINHASH_BOOK = "Dickens_Bleak.txt"
DATA_MINHASH_NUM_PERM = 128
DATA_MINHASH_SHINGLE_SIZE = 5
DATA_MINHASH_DOCS = 20_000
DATA_MINHASH_REPEATS = 3
DATA_MINHASH_MIN_LINE_CHARS = 50
DATA_MINHASH_PROSE_DOC_CHARS = 300
DATA_DATASKETCH_DOCS = 5_000
DATA_END_TO_END_STAGE = "end_to_end_excluding_tokenizer_training"
# Pipeline order for the per-stage table (stats.json stores them sorted); stages not listed go last.
DATA_STAGE_ORDER = ("clean_worker_cpu", "filter_worker_cpu", "exact_dedup", "near_dedup", "pass1_wall",
                    "tokenizer_training", "tokenization", "end_to_end", DATA_END_TO_END_STAGE)


@dataclass
class DataStageRun:
    """One fresh-process run of stage 01: parent-measured wall time, peak RSS, and the run's stats.json."""

    name: str
    copies: int
    wall_seconds: float
    peak_rss_mib: float
    stats: dict[str, Any]

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.stats["stages"]


@dataclass
class DataMinHashRate:
    """Signature throughput on one document set: the median of `rates`, one per timed run."""

    label: str
    documents: int
    mean_chars: float
    rates: list[float]
    docs_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.docs_per_s = statistics.median(self.rates)


@dataclass
class DataBenchResult:
    machine: dict[str, str]
    corpus_dir: str
    minhash: list[DataMinHashRate]
    datasketch_identical: bool
    runs: list[DataStageRun]
    memory_ratio: float
    checks: list[TargetCheck]


def data_mirror_dir(mirror: Path | None = None) -> Path:
    """The mirror folder holding the benchmark's corpora, or a DataError naming what is missing."""
    mirror = mirror or mirror_root()
    if mirror is None:
        raise DataError(f"the data benchmark reads local corpora: set LUMI_DATA_DIR to a mirror holding "
                        f"{DATA_PROSE_SUBDIR} and {DATA_TINYSTORIES_FILE}")
    needed = [mirror / DATA_PROSE_SUBDIR, mirror / DATA_TINYSTORIES_FILE]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DataError(f"the data benchmark needs {', '.join(missing)} in the mirror LUMI_DATA_DIR={mirror}")
    return mirror


def data_stage_config(name: str, input_path: str, output_dir: Path, vocab_size: int) -> DataConfig:
    overrides = {"name": name, "input_path": input_path, "output_dir": str(output_dir), "vocab_size": vocab_size,
                 "force": True}
    return load_config(DataConfig, DATA_CONFIG_PATH, overrides)


def data_build_copies(files: Sequence[Path], target: Path, copies: int) -> Path:
    """copy_<i>/<book> symlinks for i < copies: the reader follows them, so this reads as `copies`x the corpus."""
    for index in range(copies):
        copy_dir = target / f"copy_{index}"
        copy_dir.mkdir(parents=True, exist_ok=True)
        for source in files:
            link = copy_dir / source.name
            link.unlink(missing_ok=True)
            link.symlink_to(source.resolve())
    return target


def emit_report(report: str, result: Any, json_path: Path | None) -> None:
    """Print a benchmark's report; with json_path, also save its result dataclass there as JSON."""
    print(report)
    if json_path:
        json_path.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n", encoding="utf-8")
        log.info("results saved to %s", json_path)


def _peak_rss_kib() -> int:
    """Peak RSS of this process or of any reaped descendant (the pool workers), in KiB on Linux."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _child(function: Callable[..., Any], args: tuple[Any, ...], log_level: int, conn: Connection) -> None:
    setup_logging(log_level)
    try:
        conn.send(("ok", function(*args)))
    except LumiError as exc:
        conn.send(("error", str(exc)))
    finally:
        conn.close()


def run_in_fresh_process(function: Callable[..., Any], args: tuple[Any, ...], what: str) -> Any:
    """`function(*args)` in a freshly spawned interpreter, so that its peak memory and warm-up are its own.
    A LumiError in the child, or a child that dies, becomes a LumiError naming `what`."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, args, logging.getLogger().getEffectiveLevel(), send))
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "died", None
    process.join()
    if status != "ok":
        reason = value or f"its process exited with code {process.exitcode} and no result (see the log above)"
        raise LumiError(f"{what} failed: {reason}")
    return value


def _prepare_and_peak_rss(config: DataConfig) -> int:
    prepare_dataset(config)
    return _peak_rss_kib()


def data_run_stage(config: DataConfig, copies: int) -> DataStageRun:
    """Run `prepare_dataset` in a freshly spawned interpreter so its peak memory is its own."""
    started = time.perf_counter()
    peak_kib = run_in_fresh_process(_prepare_and_peak_rss, (config,), f"benchmark run {config.name}")
    wall = time.perf_counter() - started
    stats = read_json(Path(config.output_dir) / config.name / "stats.json")
    return DataStageRun(config.name, copies, wall, peak_kib / KIB_PER_MIB, stats)


def data_short_docs(path: Path, count: int = DATA_MINHASH_DOCS) -> list[str]:
    """Lines of at least DATA_MINHASH_MIN_LINE_CHARS characters, cycled to `count` documents."""
    with path.open(encoding="utf-8") as fh:
        lines = [s for s in map(str.strip, fh) if len(s) >= DATA_MINHASH_MIN_LINE_CHARS]
    return list(itertools.islice(itertools.cycle(lines), count))


def data_prose_docs(path: Path, count: int = DATA_MINHASH_DOCS) -> list[str]:
    """Consecutive non-blank lines of a book joined into ~DATA_MINHASH_PROSE_DOC_CHARS documents, cycled to `count`."""
    docs: list[str] = []
    group = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        group = f"{group} {line.strip()}".strip()
        if len(group) >= DATA_MINHASH_PROSE_DOC_CHARS:
            docs.append(group)
            group = ""
    return list(itertools.islice(itertools.cycle(docs), count))


def _rate(run: Callable[[], object], documents: int) -> float:
    start = time.perf_counter()
    run()
    return documents / (time.perf_counter() - start)


def data_minhash_rate(label: str, docs: list[str], repeats: int = DATA_MINHASH_REPEATS) -> DataMinHashRate:
    hasher = MinHasher(DATA_MINHASH_NUM_PERM, DATA_MINHASH_SHINGLE_SIZE)
    result = DataMinHashRate(label, len(docs), sum(map(len, docs)) / len(docs),
                             [_rate(lambda: hasher.signatures(docs), len(docs)) for _ in range(repeats)])
    log.info("%s: %.0f docs/s (median of %d)", label, result.docs_per_s, repeats)
    return result


def _datasketch_signatures(docs: list[str]) -> np.ndarray:
    sketches = MinHash.bulk((shingles(text, DATA_MINHASH_SHINGLE_SIZE) for text in docs),
                            num_perm=DATA_MINHASH_NUM_PERM, hashfunc=xxhash.xxh32_intdigest, scheme=SCHEME)
    return np.stack([sketch.hashvalues for sketch in sketches])


def data_datasketch_rate(label: str, docs: list[str]) -> tuple[DataMinHashRate, bool]:
    """datasketch's own MinHash.bulk (shingling included, as in ours), and whether it matches our signatures."""
    start = time.perf_counter()
    theirs = _datasketch_signatures(docs)
    rate = len(docs) / (time.perf_counter() - start)
    ours = MinHasher(DATA_MINHASH_NUM_PERM, DATA_MINHASH_SHINGLE_SIZE).signatures(docs)
    log.info("%s: %.0f docs/s", label, rate)
    return DataMinHashRate(label, len(docs), sum(map(len, docs)) / len(docs), [rate]), np.array_equal(theirs, ours)


def _data_minhash(mirror: Path) -> tuple[list[DataMinHashRate], bool]:
    short = data_short_docs(mirror / DATA_TINYSTORIES_FILE)
    prose = data_prose_docs(mirror / DATA_PROSE_SUBDIR / DATA_MINHASH_BOOK)
    reference, identical = data_datasketch_rate("datasketch MinHash.bulk, TinyStories lines",
                                                short[:DATA_DATASKETCH_DOCS])
    rates = [data_minhash_rate("MinHasher, TinyStories lines", short),
             data_minhash_rate(f"MinHasher, {DATA_MINHASH_BOOK} ~{DATA_MINHASH_PROSE_DOC_CHARS} chars", prose),
             reference]
    return rates, identical


def _data_checks(minhash: DataMinHashRate, runs: Sequence[DataStageRun], memory_ratio: float) -> list[TargetCheck]:
    checks = [TargetCheck(f"MinHash signatures, short docs ({minhash.mean_chars:.0f} chars)", minhash.docs_per_s,
                          DATA_MINHASH_TARGET_DOCS_PER_S, "docs/s")]
    checks += [TargetCheck(f"end to end excl. tokenizer training, {run.copies}x",
                           run.stages[DATA_END_TO_END_STAGE]["mb_per_s"] or 0.0, DATA_END_TO_END_TARGET_MB_PER_S,
                           "MB/s") for run in runs]
    checks.append(TargetCheck(f"peak memory {runs[-1].copies}x / 1x", memory_ratio, DATA_MEMORY_RATIO_TARGET, "x",
                              higher_is_better=False))
    return checks


def data_run_benchmark(work_dir: Path, vocab_size: int, copies: int, mirror: Path | None = None) -> DataBenchResult:
    """MinHash microbenchmark, then stage 01 on the prose corpus once and `copies` times over, each in a new process."""
    mirror = data_mirror_dir(mirror)
    corpus_dir = mirror / DATA_PROSE_SUBDIR
    minhash, identical = _data_minhash(mirror)
    corpus_glob = str(corpus_dir / "*.txt")
    copies_dir = data_build_copies(resolve_input_files(corpus_glob), work_dir / f"input_{copies}x", copies)
    runs = []
    for name, input_path, count in [("bench_1x", corpus_glob, 1), (f"bench_{copies}x", str(copies_dir), copies)]:
        log.info("stage 01 on %dx the prose corpus (%s), in a fresh process", count, name)
        runs.append(data_run_stage(data_stage_config(name, input_path, work_dir, vocab_size), count))
    memory_ratio = runs[1].peak_rss_mib / runs[0].peak_rss_mib
    return DataBenchResult(machine_info(), str(corpus_dir), minhash, identical, runs, memory_ratio,
                           _data_checks(minhash[0], runs, memory_ratio))


def _data_runs_table(runs: Sequence[DataStageRun]) -> str:
    def row(label: str, value: Callable[[DataStageRun], str]) -> list[str]:
        return [label, *(value(run) for run in runs)]

    rows = [
        row("input MB", lambda r: _number(r.stats["bytes"]["read"] / MB, 1)),
        row("documents read", lambda r: f"{r.stats['documents']['read']:,}"),
        row("documents after filters", lambda r: f"{r.stats['documents']['after_filters']:,}"),
        row("exact duplicates dropped", lambda r: f"{r.stats['dropped'].get('exact_duplicate', 0):,}"),
        row("near duplicates dropped", lambda r: f"{r.stats['dropped'].get('near_duplicate', 0):,}"),
        row("documents kept", lambda r: f"{r.stats['documents']['kept']:,}"),
        row("tokens", lambda r: f"{r.stats['tokens']['total']:,}"),
        row("wall time, parent (s)", lambda r: _number(r.wall_seconds, 1)),
        row("peak memory (MiB)", lambda r: _number(r.peak_rss_mib, 1)),
    ]
    return format_table(["run", *(f"{r.copies}x ({r.name})" for r in runs)], rows)


def _data_stages_table(runs: Sequence[DataStageRun]) -> str:
    headers = ["stage"] + [f"{r.copies}x {unit}" for r in runs for unit in ("s", "docs/s", "MB/s")]
    rows = []
    order = {name: index for index, name in enumerate(DATA_STAGE_ORDER)}
    for stage in sorted(runs[0].stages, key=lambda name: order.get(name, len(order))):
        cells = [stage]
        for run in runs:
            figures = run.stages[stage]
            cells += [_number(figures["seconds"], 2), _number(figures["docs_per_s"], 0),
                      _number(figures["mb_per_s"], 2)]
        rows.append(cells)
    return format_table(headers, rows)


def _data_minhash_table(rates: Sequence[DataMinHashRate]) -> str:
    rows = [[r.label, f"{r.documents:,}", _number(r.mean_chars, 0), str(len(r.rates)), _number(r.docs_per_s, 0),
             f"{min(r.rates):,.0f}-{max(r.rates):,.0f}"] for r in rates]
    return format_table(["MinHash signatures (128 perm, word 5-grams)", "docs", "chars/doc", "runs",
                         "docs/s (median)", "range"], rows)


def data_format_report(result: DataBenchResult) -> str:
    machine = result.machine
    one, many = result.runs
    same = one.stats["documents"]["kept"] == many.stats["documents"]["kept"]
    dedup_note = (f"{many.copies}x kept {'the same' if same else 'a DIFFERENT'} number of documents as 1x "
                  f"({many.stats['documents']['kept']:,} vs {one.stats['documents']['kept']:,}): "
                  f"{'the identical copies were all removed as exact duplicates' if same else 'dedup missed copies'}.")
    return "\n\n".join([
        f"Lumi data-preparation benchmark (stage 01)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}\ncorpus: {result.corpus_dir}",
        _data_minhash_table(result.minhash) + f"\nMinHasher signatures identical to datasketch's: "
                                              f"{'yes' if result.datasketch_identical else 'NO'}",
        _data_runs_table(result.runs) + f"\n{dedup_note}",
        "Per stage (worker stages are CPU-seconds summed over workers; from each run's stats.json)\n"
        + _data_stages_table(result.runs),
        format_checks(result.checks),
    ])


# --- Training throughput (stage 02) ----------------------------------------------------------------------------
#
# Each configuration runs in a freshly spawned process (its own peak memory, its own Accelerate singleton). There
# our real pipeline (`TrainingLoop.train_step` over `PretrainData`, wired as `utils.train.pretrain.pretrain` wires it)
# and a plain-PyTorch reference step of the same shape are timed in alternating blocks, so machine noise hits both.
# torch is imported inside these functions only: a module-level import would add ~135 MiB to every process the data
# benchmark spawns and distort its peak-memory figures.

TRAIN_REFERENCE_RATIO_TARGET = 0.9  # our step's tokens/s over the reference's, at equal precision on CPU
TRAIN_GPU_MFU_TARGET = 0.40  # base at max_length 1024, bf16, compiled
TRAIN_GPU_MFU_TARGET_DEVICE = "H100"  # the MFU target is set for this GPU; others get the figure without a verdict
TRAIN_GPU_CHECKPOINT_TARGET_S = 5.0  # one save of base (weights, AdamW state, RNG) on a GPU machine
TRAIN_CPU_CHECKPOINT_LIMIT_S = 30.0  # base is saved again on CPU only while one save takes less than this
TRAIN_CHECKPOINT_REPEATS = 3
TRAIN_PRESETS = ("tiny", "small", "base")
# (batch, max_length) per preset on CPU. tiny trains at its own default shape; small and base are GPU presets whose
# defaults (32 and 16 sequences of 1024 tokens, with accumulation) take minutes per step on 2 cores.
TRAIN_CPU_SHAPES = {"tiny": (16, 256), "small": (4, 256), "base": (2, 256)}
# (preset, --mixed_precision, --compile) rows measured on CPU; bf16 is the pipeline's CPU default.
TRAIN_CPU_ROWS = (("tiny", "bf16", False), ("tiny", "no", False), ("tiny", "bf16", True),
                  ("small", "bf16", False), ("small", "bf16", True), ("base", "bf16", False), ("base", "bf16", True))
TRAIN_CPU_NOT_MEASURED = {
    ("base", "bf16", True): "compiling base and the reference (~1.5 min more) would take make bench-train past "
                            "~10 min on 2 CPU cores; the compiled tiny and small rows stand for it",
}
TRAIN_CHECKPOINT_PRESETS = ("tiny", "base")  # saved after their eager bf16 rows
TRAIN_GPU_PRESET = "base"
TRAIN_GPU_SHAPE = (16, 1024)
TRAIN_DEMO_STORIES = 4000  # ~200k tokens: enough windows for every shape above
TRAIN_DATA_VOCAB = 1024
TRAIN_WARMUP_STEPS = 2  # the first step allocates optimizer state (and compiles under --compile)
TRAIN_ROUNDS = 8
TRAIN_STEPS_PER_ROUND = 1
TRAIN_PRECISION_NAMES = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}
TERA = 1e12
MIB = 2**20


@dataclass(frozen=True)
class TrainCase:
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
    rounds: int = TRAIN_ROUNDS

    @property
    def label(self) -> str:
        parts = [self.preset, f"{self.batch_size}x{self.max_length}", TRAIN_PRECISION_NAMES[self.precision],
                 "compile" if self.compile else "eager"]
        return " ".join(parts + (["grad-ckpt"] if self.gradient_checkpointing else []))


@dataclass
class TrainSkipped:
    label: str
    reason: str


@dataclass
class TrainCaseResult:
    """Step times (seconds) of one configuration; tokens/s from the median step, MFU against `peak_flops`."""

    case: TrainCase
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
class TrainBenchResult:
    machine: dict[str, str]
    load_average: tuple[float, float]  # 1-minute load before and after: other work on the machine skews figures
    torch_version: str
    gpu: str | None
    results: list[TrainCaseResult]
    skipped: list[TrainSkipped]
    checks: list[TargetCheck]


def train_data_config(work_dir: Path) -> DataConfig:
    return DataConfig(name="bench_train", source="demo", demo_num_stories=TRAIN_DEMO_STORIES,
                      vocab_size=TRAIN_DATA_VOCAB, max_length=TRAIN_GPU_SHAPE[1], num_workers=0,
                      output_dir=str(work_dir), force=True)


def train_plan(quick: bool, gpu: str | None, rounds: int = TRAIN_ROUNDS) -> tuple[list[TrainCase], list[TrainSkipped]]:
    """The CPU rows (tiny only under --quick), then the GPU rows when a CUDA device is present."""
    cases: list[TrainCase] = []
    skipped: list[TrainSkipped] = []
    for preset, precision, compiled in TRAIN_CPU_ROWS:
        batch, length = TRAIN_CPU_SHAPES[preset]
        saves = TRAIN_CHECKPOINT_REPEATS if preset in TRAIN_CHECKPOINT_PRESETS and precision == "bf16" \
            and not compiled else 0
        case = TrainCase(preset, batch, length, precision, compiled, checkpoint_saves=saves, rounds=rounds)
        reason = "--quick measures tiny only" if quick and preset != "tiny" else \
            TRAIN_CPU_NOT_MEASURED.get((preset, precision, compiled))
        if reason:
            skipped.append(TrainSkipped(f"CPU {case.label}", reason))
        else:
            cases.append(case)
    if gpu is None:
        skipped.append(TrainSkipped("GPU rows", "no CUDA device on this machine (torch.cuda.is_available() is "
                                                "False): GPU figures were not measured"))
        return cases, skipped
    batch, length = TRAIN_GPU_SHAPE
    for compiled in (False, True):
        for checkpointing in (False, True):
            saves = TRAIN_CHECKPOINT_REPEATS if not (compiled or checkpointing) else 0
            cases.append(TrainCase(TRAIN_GPU_PRESET, batch, length, "bf16", compiled, checkpointing, device="cuda",
                                   reference=False, checkpoint_saves=saves, rounds=rounds))
    return cases, skipped


def _train_never_called(*_: Any) -> Any:
    raise AssertionError("the training benchmark never evaluates or exports")


def train_pipeline_loop(case: TrainCase, data_path: Path, run_dir: Path) -> Any:
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
    shape = dataclasses.asdict(model_config)
    context = RunContext(run_dir=run_dir, resolved_config={"preset": case.preset, "model": shape,
                                                           "max_length": max_length, **dataclasses.asdict(config)},
                         model_shape=shape, meta={"stage": "bench-train"}, tokens_per_sample=max_length,
                         flops_per_token=flops_per_token(model_config, max_length), export_final=_train_never_called,
                         run_name=f"bench-train-{case.preset}")
    return TrainingLoop(accelerator, model, config, data, Evaluator(evaluate=_train_never_called), context)


def train_reference_parameters(shape: ModelConfig, device: Any) -> dict[str, Any]:
    """LLaMA weights as a flat dict: tied embedding/head, per layer q/k/v/o, SwiGLU gate/up/down and two RMSNorms."""
    import torch

    hidden, attention = shape.hidden_size, shape.num_attention_heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim

    def matrix(rows: int, cols: int) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.randn(rows, cols, device=device) * shape.initializer_range)

    def gain() -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.ones(hidden, device=device))

    params = {"embed": matrix(shape.vocab_size, hidden), "norm": gain()}
    for layer in range(shape.num_hidden_layers):
        prefix = f"layers.{layer}."
        params |= {prefix + "attn_norm": gain(), prefix + "q": matrix(attention, hidden),
                   prefix + "k": matrix(kv, hidden), prefix + "v": matrix(kv, hidden),
                   prefix + "o": matrix(hidden, attention), prefix + "mlp_norm": gain(),
                   prefix + "gate": matrix(shape.intermediate_size, hidden),
                   prefix + "up": matrix(shape.intermediate_size, hidden),
                   prefix + "down": matrix(hidden, shape.intermediate_size)}
    return params


def train_rope_tables(shape: ModelConfig, device: Any) -> tuple[Any, Any]:
    """cos and sin of every position's rotation angles, each (positions, head_dim), in the rotate-half layout."""
    import torch

    exponents = torch.arange(0, shape.head_dim, 2, dtype=torch.float32, device=device) / shape.head_dim
    positions = torch.arange(shape.max_position_embeddings, dtype=torch.float32, device=device)
    angles = torch.outer(positions, 1.0 / shape.rope_theta ** exponents)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _train_rope(x: Any, cos: Any, sin: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def _train_attention(params: dict[str, Any], prefix: str, shape: ModelConfig, x: Any, cos: Any, sin: Any) -> Any:
    import torch.nn.functional as F

    batch, length, _ = x.shape
    heads, kv_heads, head_dim = shape.num_attention_heads, shape.kv_heads, shape.head_dim
    q = F.linear(x, params[prefix + "q"]).view(batch, length, heads, head_dim).transpose(1, 2)
    k = F.linear(x, params[prefix + "k"]).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = F.linear(x, params[prefix + "v"]).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    q, k = _train_rope(q, cos[:length], sin[:length]), _train_rope(k, cos[:length], sin[:length])
    if kv_heads < heads:  # grouped-query attention: each kv head serves heads // kv_heads query heads
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.linear(out.transpose(1, 2).reshape(batch, length, heads * head_dim), params[prefix + "o"])


def train_reference_loss(params: dict[str, Any], shape: ModelConfig, cos: Any, sin: Any, input_ids: Any,
                         targets: Any) -> Any:
    """Mean next-token cross-entropy of the reference LLaMA (pre-norm blocks, SwiGLU, tied head)."""
    import torch.nn.functional as F

    hidden, eps = (shape.hidden_size,), shape.rms_norm_eps
    x = F.embedding(input_ids, params["embed"])
    for layer in range(shape.num_hidden_layers):
        prefix = f"layers.{layer}."
        x = x + _train_attention(params, prefix, shape, F.rms_norm(x, hidden, params[prefix + "attn_norm"], eps),
                                 cos, sin)
        h = F.rms_norm(x, hidden, params[prefix + "mlp_norm"], eps)
        x = x + F.linear(F.silu(F.linear(h, params[prefix + "gate"])) * F.linear(h, params[prefix + "up"]),
                         params[prefix + "down"])
    logits = F.linear(F.rms_norm(x, hidden, params["norm"], eps), params["embed"])
    return F.cross_entropy(logits.view(-1, shape.vocab_size), targets.view(-1))


class TrainReference:
    """A plain-PyTorch LLaMA training step of our shape: RMSNorm, RoPE, SwiGLU, SDPA, tied head, fused AdamW.

    Functions over a dict of weights rather than nn.Modules, so that this module need not import torch at the top
    (see the section comment). One step: zero_grad, forward under autocast, loss, backward, clip, AdamW step.
    """

    def __init__(self, shape: ModelConfig, loop: Any, precision: str, compiled: bool, batch: dict[str, Any]) -> None:
        import torch

        device = loop.device
        self.shape = shape
        self.params = train_reference_parameters(shape, device)
        count, expected = sum(p.numel() for p in self.params.values()), count_parameters(shape).total
        if count != expected:
            raise LumiError(f"the reference model has {count:,} parameters, the pipeline's {expected:,}")
        self.cos, self.sin = train_rope_tables(shape, device)
        config = loop.config
        groups = [{"params": [p for p in self.params.values() if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in self.params.values() if p.ndim < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, eps=config.adam_epsilon, fused=True,
                                           betas=(config.adam_beta1, config.adam_beta2))
        self.max_grad_norm = config.max_grad_norm
        self.loss = torch.compile(train_reference_loss) if compiled else train_reference_loss
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                          enabled=precision == "bf16")
        self.input_ids = batch["input_ids"].to(device)
        self.targets = batch["shift_labels"].to(device)

    def step(self) -> None:
        import torch

        with _torch_default_algorithms():
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.loss(self.params, self.shape, self.cos, self.sin, self.input_ids, self.targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params.values(), self.max_grad_norm)
            self.optimizer.step()


@contextlib.contextmanager
def _torch_default_algorithms() -> Iterator[None]:
    """PyTorch's default (non-deterministic) kernels for the reference step. The pipeline's --deterministic setting
    is process-wide; a plain-PyTorch step does not pay for it, so the comparison shows what it costs us."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _train_time_steps(step: Callable[[], object], count: int, device: Any) -> list[float]:
    import torch

    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _train_interleave(steps: dict[str, Callable[[], object]], rounds: int, device: Any) -> dict[str, list[float]]:
    """Blocks of TRAIN_STEPS_PER_ROUND steps in ABBA order, so slow drift in the machine hits every step alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(rounds):
        for name in (list(steps) if index % 2 == 0 else list(reversed(steps))):
            times[name] += _train_time_steps(steps[name], TRAIN_STEPS_PER_ROUND, device)
    return times


def _train_checkpoint_saves(loop: Any, run_dir: Path, count: int, limit_s: float) -> tuple[list[float], float | None]:
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


def train_measure_case(case: TrainCase, data_path: Path) -> TrainCaseResult:
    """Warm up ours, note its peak memory (before the reference exists), then time ours and the reference."""
    from utils.lm.metrics import memory_stats

    with tempfile.TemporaryDirectory(prefix="lumi-bench-train-") as run_dir:
        loop = train_pipeline_loop(case, data_path, Path(run_dir))
        # The loop's own step, private but exactly what `TrainingLoop.run` calls: data, forward, backward, clip, step.
        ours = loop.train_step
        warmup = _train_time_steps(ours, TRAIN_WARMUP_STEPS, loop.device)
        memory = memory_stats(loop.device)
        steps: dict[str, Callable[[], object]] = {"ours": ours}
        reference_first = None
        shape = ModelConfig(**loop.context.model_shape)
        if case.reference:
            reference = TrainReference(shape, loop, case.precision, case.compile, loop.data.micro_batches(0, 1)[0])
            reference_first = _train_time_steps(reference.step, TRAIN_WARMUP_STEPS, loop.device)[0]
            steps["reference"] = reference.step
        log.info("%s: warmed up (first step %.1f s); timing %d rounds of %d steps", case.label, warmup[0],
                 case.rounds, TRAIN_STEPS_PER_ROUND)
        times = _train_interleave(steps, case.rounds, loop.device)
        limit = TRAIN_CPU_CHECKPOINT_LIMIT_S if case.device == "cpu" else float("inf")
        saves, size = _train_checkpoint_saves(loop, Path(run_dir), case.checkpoint_saves, limit)
    return TrainCaseResult(case, count_parameters(shape).total, loop.context.flops_per_token, loop.peak_flops,
                           loop.peak_source, warmup[0], reference_first, times["ours"], times.get("reference", []),
                           memory["memory_mb"], saves, size, memory.get("memory_reserved_mb"))


def train_run_case(case: TrainCase, data_path: Path) -> TrainCaseResult:
    """Measure one configuration in a freshly spawned interpreter."""
    log.info("measuring %s on %s in a fresh process", case.label, case.device)
    return run_in_fresh_process(train_measure_case, (case, data_path),
                                f"training benchmark {case.label} on {case.device}")


def _train_checks(results: Sequence[TrainCaseResult], gpu: str | None) -> list[TargetCheck]:
    checks = [TargetCheck(f"ours / reference tokens/s, CPU {r.case.label}", r.ratio, TRAIN_REFERENCE_RATIO_TARGET,
                          "x") for r in results if r.ratio is not None]
    for result in results:
        case = result.case
        if case.device != "cuda":
            continue
        if case.compile and not case.gradient_checkpointing and result.ours_mfu is not None \
                and TRAIN_GPU_MFU_TARGET_DEVICE in (gpu or ""):
            checks.append(TargetCheck(f"MFU {case.label}, {gpu}", 100 * result.ours_mfu,
                                      100 * TRAIN_GPU_MFU_TARGET, "%"))
        if result.checkpoint_save_s:
            checks.append(TargetCheck(f"checkpoint save {case.preset}, GPU machine",
                                      statistics.median(result.checkpoint_save_s), TRAIN_GPU_CHECKPOINT_TARGET_S, "s",
                                      higher_is_better=False))
    return checks


def train_run_benchmark(work_dir: Path, quick: bool, rounds: int = TRAIN_ROUNDS) -> TrainBenchResult:
    """Prepare a demo dataset once, then measure every planned configuration, each in a fresh process."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load_before = os.getloadavg()[0]
    data_path = prepare_dataset(train_data_config(work_dir))
    cases, skipped = train_plan(quick, gpu, rounds)
    results = [train_run_case(case, data_path) for case in cases]
    return TrainBenchResult(machine_info(), (load_before, os.getloadavg()[0]), torch.__version__, gpu, results,
                            skipped, _train_checks(results, gpu))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _train_speed_table(results: Sequence[TrainCaseResult]) -> str:
    rows = [[r.case.label, _number(r.params / MB, 1), _number(r.ours_tokens_per_s, 0), _percent(r.ours_mfu),
             _number(r.reference_tokens_per_s, 0), _percent(r.reference_mfu), _number(r.ratio, 2),
             _number(r.best_ratio, 2), _number(r.peak_flops / TERA if r.peak_flops else None, 2),
             f"{r.first_step_s:.1f} / {_number(r.reference_first_step_s, 1)}", _number(r.peak_memory_mib, 0),
             _number(r.peak_reserved_mib, 0)]
            for r in results]
    return format_table(["configuration (batch x seq)", "params M", "ours tok/s", "ours MFU", "ref tok/s", "ref MFU",
                         "ours/ref", "best ours/ref", "peak TFLOP/s", "1st step s ours/ref", "peak MiB",
                         "reserved MiB"], rows)


def _train_checkpoint_table(results: Sequence[TrainCaseResult]) -> str:
    rows = [[f"{r.case.preset} ({r.case.device})", _number(r.checkpoint_mib, 0), str(len(r.checkpoint_save_s)),
             _number(statistics.median(r.checkpoint_save_s), 2),
             f"{min(r.checkpoint_save_s):.2f}-{max(r.checkpoint_save_s):.2f}"]
            for r in results if r.checkpoint_save_s]
    return format_table(["checkpoint save (weights, AdamW, RNG)", "MiB", "saves", "median s", "range s"], rows)


def _train_notes(result: TrainBenchResult) -> str:
    sources = sorted({f"{TRAIN_PRECISION_NAMES[r.case.precision]}: {r.peak_source}" for r in result.results})
    vocab = load_preset(TRAIN_PRESETS[0]).model.vocab_size
    steps = result.results[0].case.rounds * TRAIN_STEPS_PER_ROUND if result.results else 0
    return "\n".join([
        f"data: the demo corpus ({TRAIN_DEMO_STORIES:,} stories, a {TRAIN_DATA_VOCAB:,}-piece tokenizer) through "
        f"PretrainData; the models keep the presets' {vocab:,}-row embedding and tied head (ids < "
        f"{TRAIN_DATA_VOCAB:,} are valid rows), so parameters and FLOPs are the presets'.",
        "ours: TrainingLoop.train_step of the real pipeline (Accelerate autocast, HF LlamaForCausalLM with SDPA, "
        "the fused linear cross-entropy of utils/train/loss.py, fused AdamW, clipping, LR schedule), one "
        "micro-batch per optimizer step. ref: the plain-PyTorch step in utils/benchmarks/common.py (same shape, parameter "
        "count, optimizer settings, precision and batch; F.cross_entropy over materialised logits). On CPU the loop "
        "sets glibc to keep freed memory (utils/core/environment.py keep_freed_memory) for the whole process, so the "
        "reference, timed in the same process, gains from it as well.",
        f"tokens/s from the median of {steps} steps each, timed in alternating blocks of {TRAIN_STEPS_PER_ROUND} "
        f"after {TRAIN_WARMUP_STEPS} warm-up steps; targets use the medians, 'best ours/ref' compares the fastest "
        f"step of each (the one least slowed by other work). peak MiB: the process's peak RSS (CPU) or max "
        f"allocated (GPU) after our warm-up, before the reference is built; reserved MiB: the CUDA caching "
        f"allocator's peak (GPU only).",
        "MFU = tokens/s x (6 x matmul params + 12 x layers x heads x head_dim x seq) / peak; peak: "
        + "; ".join(sources) + ".",
    ])


def train_format_report(result: TrainBenchResult) -> str:
    machine = result.machine
    cpu = [r for r in result.results if r.case.device == "cpu"]
    gpu = [r for r in result.results if r.case.device == "cuda"]
    sections = [
        f"Lumi training benchmark (stage 02)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}, torch {result.torch_version}; GPU: {result.gpu or 'none'}\n"
        f"load average (1 min): {result.load_average[0]:.2f} before, {result.load_average[1]:.2f} after "
        f"({machine['cpus']} CPUs; other work on the machine slows both sides of each comparison)",
        _train_notes(result),
        "CPU\n" + _train_speed_table(cpu),
    ]
    if gpu:
        sections.append(f"GPU ({result.gpu})\n" + _train_speed_table(gpu))
    if result.skipped:
        sections.append("\n".join(f"not measured: {s.label}: {s.reason}" for s in result.skipped))
    if any(r.checkpoint_save_s for r in result.results):
        sections.append(_train_checkpoint_table(result.results))
    sections.append(format_checks(result.checks))
    return "\n\n".join(sections)


# --- Serving (stage 06) ----------------------------------------------------------------------------------------
# Batch 1: time to first token and decode tokens/s of the engine in process (1 thread and torch's default; on CUDA
# too when there is a GPU) and through the HTTP server (streamed). Load: 64 concurrent streaming requests against a
# real uvicorn subprocess (--max_concurrent 1) with the default queue of 16 (the rest must get 429) and with a queue of
# 64 (all served), reporting statuses, latency percentiles, total tokens/s and the server's RSS before, at peak and
# after. Checks are correctness, not speed: no status but 200/429, memory back to its baseline.

SERVE_DEFAULT_MODEL = REPO_ROOT / "checkpoints" / "pretrain" / "tiny" / "final"
SERVE_PROMPT = "Once upon a time, a little fox found a shiny stone in the forest."
SERVE_BATCH1_RUNS = 5
SERVE_BATCH1_TOKENS = 128
SERVE_LOAD_REQUESTS = 64
SERVE_LOAD_TOKENS = 64
SERVE_QUEUE_SIZES = (16, 64)  # the server's default --max_queue, then one that admits every request
SERVE_SERVER_THREADS = 1  # --cpu_threads of the server: batch-1 decoding of small models gains nothing from more
SERVE_MEMORY_RATIO_TARGET = 1.10  # RSS after the burst over RSS before it
SERVE_SETTLE_S = 2.0  # after the burst, before RSS is read again
SERVE_RSS_SAMPLE_S = 0.05
SERVE_START_TIMEOUT_S = 180.0
SERVE_REQUEST_TIMEOUT_S = 600.0
SERVE_RANDOM_STORIES = 2000  # for the stand-in model when no trained one exists
SERVE_RANDOM_VOCAB = 1024


@dataclass
class ServeLatency:
    """Batch-1 figures: medians over `runs` generations of `new_tokens` tokens."""

    label: str
    runs: int
    prompt_tokens: int
    new_tokens: float
    ttft_ms: float
    decode_tokens_per_s: float


@dataclass
class ServeLoadRun:
    max_queue: int
    requests: int
    statuses: dict[str, int]
    served_p50_s: float | None
    served_p95_s: float | None
    rejected_p50_ms: float | None
    completion_tokens: int
    wall_s: float
    rss_baseline_mib: float
    rss_peak_mib: float
    rss_after_mib: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s

    @property
    def unexpected(self) -> int:
        return sum(n for status, n in self.statuses.items() if status not in ("200", "429"))

    @property
    def expected_share(self) -> float:
        return 1 - self.unexpected / self.requests


@dataclass
class ServeBenchResult:
    machine: dict[str, str]
    model: str
    model_note: str
    torch_version: str
    gpu: str | None
    load_average: tuple[float, float]
    latency: list[ServeLatency]
    load: list[ServeLoadRun]
    checks: list[TargetCheck]


def serve_model(requested: Path | None, work_dir: Path) -> tuple[Path, str]:
    """The model to serve and a note on what it is: the requested/default trained tiny, else a random stand-in."""
    path = requested or SERVE_DEFAULT_MODEL
    if (path / "config.json").is_file():
        return path, "trained checkpoint"
    if requested is not None:
        raise DataError(f"{requested} is not a model directory (no config.json); pass a final/ or merged/ directory")
    return serve_random_model(work_dir), (f"{SERVE_DEFAULT_MODEL} is missing, so a RANDOM tiny-preset model with a "
                                          f"{SERVE_RANDOM_VOCAB}-piece tokenizer stands in (same shapes and speed)")


def serve_random_model(work_dir: Path) -> Path:
    from utils.data.demo_stories import iter_demo_stories
    from utils.lm.model import build_model
    from utils.lm.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer

    sample = work_dir / "sample.txt"
    sample.write_text("\n".join(iter_demo_stories(0, SERVE_RANDOM_STORIES)), encoding="utf-8")
    out = train_tokenizer(sample, work_dir / "random-tiny", SERVE_RANDOM_VOCAB)
    shape = dataclasses.replace(load_preset("tiny").model, vocab_size=SERVE_RANDOM_VOCAB)
    build_model(shape, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(out)
    return out


def _median_latency(label: str, samples: list[tuple[float, float, int]], prompt_tokens: int) -> ServeLatency:
    """samples: (seconds to the first token, seconds after it to the last, tokens) per run."""
    ttft = statistics.median(s[0] for s in samples)
    rate = statistics.median((s[2] - 1) / s[1] for s in samples if s[2] > 1 and s[1] > 0)
    return ServeLatency(label, len(samples), prompt_tokens, statistics.median(s[2] for s in samples),
                        1000 * ttft, rate)


def serve_engine_latency(model_path: Path, device: str, threads: int | None) -> ServeLatency:
    """TTFT and decode rate of the engine itself: greedy, EOS ignored so every run makes the same number of tokens."""
    import torch

    from utils.lm.generation import GenerationParams, TextGenerator, iter_token_ids
    from utils.lm.loading import load_model

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        loaded = load_model(model_path, device=device)
        gen = TextGenerator(loaded.model, loaded.tokenizer)
        params = GenerationParams(max_new_tokens=SERVE_BATCH1_TOKENS)
        samples = []
        for run in range(SERVE_BATCH1_RUNS + 1):  # the first run warms up
            start = time.perf_counter()
            tokens = iter_token_ids(loaded.model, gen.encode(SERVE_PROMPT), params, stop_ids=set())
            next(tokens)
            first = time.perf_counter()
            count = 1 + sum(1 for _ in tokens)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if run:
                samples.append((first - start, time.perf_counter() - first, count))
        label = f"engine, {device}" + (f", {torch.get_num_threads()} thread(s)" if device == "cpu" else "")
        return _median_latency(label, samples, len(gen.encode(SERVE_PROMPT)))
    finally:
        torch.set_num_threads(default_threads)


class _ServerProcess:
    """scripts/06_serve.py --mode api in a subprocess on a free loopback port; stopped with Ctrl-C (SIGINT)."""

    def __init__(self, model_path: Path, max_queue: int) -> None:
        import socket
        import subprocess
        import sys

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(REPO_ROOT / "scripts" / "06_serve.py"), "--mode", "api", "--model_path",
                   str(model_path), "--port", str(port), "--max_queue", str(max_queue), "--cpu_threads",
                   str(SERVE_SERVER_THREADS)]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def wait_healthy(self) -> None:
        import httpx2

        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{self.url}/health").status_code == 200:
                    return
            time.sleep(0.2)
        self.log.seek(0)
        raise DataError(f"the server did not become healthy; its output:\n{self.log.read()[-3000:]}")

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / MIB

    def stop(self) -> None:
        import signal

        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except Exception:
            self.process.kill()
            raise
        finally:
            self.log.close()


async def _serve_stream(client: Any, url: str) -> tuple[int, float, float | None, int]:
    """One streamed chat request: (status, total seconds, seconds to the first content delta, completion tokens)."""
    import json

    body = {"messages": [{"role": "user", "content": SERVE_PROMPT}], "max_tokens": SERVE_LOAD_TOKENS,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
        return response.status_code, time.perf_counter() - start, first, tokens


def serve_http_latency(server: _ServerProcess, prompt_tokens: int) -> ServeLatency:
    import asyncio

    import httpx2

    async def run() -> list[tuple[float, float, int]]:
        samples = []
        async with httpx2.AsyncClient(timeout=SERVE_REQUEST_TIMEOUT_S) as client:
            for index in range(SERVE_BATCH1_RUNS + 1):
                status, total, first, tokens = await _serve_stream(client, server.url)
                if status != 200 or first is None:
                    raise DataError(f"a batch-1 request failed with status {status}")
                if index:
                    samples.append((first, total - first, tokens))
        return samples

    return _median_latency(f"HTTP stream (chat template), --cpu_threads {SERVE_SERVER_THREADS}",
                           asyncio.run(run()), prompt_tokens)


def _percentile(values: list[float], fraction: float) -> float | None:
    return float(np.percentile(values, 100 * fraction)) if values else None


def serve_load(server: _ServerProcess, max_queue: int) -> ServeLoadRun:
    """SERVE_LOAD_REQUESTS streaming requests at once; the server's RSS sampled throughout."""
    import asyncio
    import gc

    import httpx2

    gc.collect()
    baseline = server.rss_mib()

    async def burst() -> tuple[list[tuple[int, float, float | None, int]], float, float]:
        peak = baseline
        limits = httpx2.Limits(max_connections=SERVE_LOAD_REQUESTS, max_keepalive_connections=SERVE_LOAD_REQUESTS)
        async with httpx2.AsyncClient(timeout=SERVE_REQUEST_TIMEOUT_S, limits=limits) as client:
            start = time.perf_counter()
            tasks = [asyncio.create_task(_serve_stream(client, server.url)) for _ in range(SERVE_LOAD_REQUESTS)]
            while not all(task.done() for task in tasks):
                peak = max(peak, server.rss_mib())
                await asyncio.sleep(SERVE_RSS_SAMPLE_S)
            wall = time.perf_counter() - start
        return [task.result() for task in tasks], wall, peak

    results, wall, peak = asyncio.run(burst())
    time.sleep(SERVE_SETTLE_S)
    statuses: dict[str, int] = {}
    for status, *_ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    served = [total for status, total, _, _ in results if status == 200]
    rejected = [1000 * total for status, total, _, _ in results if status == 429]
    return ServeLoadRun(max_queue, len(results), statuses, _percentile(served, 0.5), _percentile(served, 0.95),
                        _percentile(rejected, 0.5), sum(r[3] for r in results), wall, baseline, peak,
                        server.rss_mib())


def _serve_checks(load: Sequence[ServeLoadRun]) -> list[TargetCheck]:
    checks = []
    for run in load:
        checks.append(TargetCheck(f"share of streams ending 200 or 429, queue {run.max_queue}", run.expected_share,
                                  1.0, ""))
        checks.append(TargetCheck(f"server RSS after / before the burst, queue {run.max_queue}",
                                  run.rss_after_mib / run.rss_baseline_mib, SERVE_MEMORY_RATIO_TARGET, "x",
                                  higher_is_better=False))
    return checks


def serve_run_benchmark(requested_model: Path | None, work_dir: Path) -> ServeBenchResult:
    import torch

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request would bury the report
    load_before = os.getloadavg()[0]
    model_path, note = serve_model(requested_model, work_dir)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    latency = [serve_engine_latency(model_path, "cpu", threads) for threads in (1, None)]
    if gpu:
        latency.append(serve_engine_latency(model_path, "cuda", None))
    load = []
    for max_queue in SERVE_QUEUE_SIZES:
        server = _ServerProcess(model_path, max_queue)
        try:
            server.wait_healthy()
            http = serve_http_latency(server, latency[0].prompt_tokens)
            if max_queue == SERVE_QUEUE_SIZES[0]:
                latency.append(http)  # the batch-1 HTTP figure once; the second server only warms up with it
            load.append(serve_load(server, max_queue))
        finally:
            server.stop()
    return ServeBenchResult(machine_info(), str(model_path), note, torch.__version__, gpu,
                            (load_before, os.getloadavg()[0]), latency, load, _serve_checks(load))


def _serve_latency_table(rows: Sequence[ServeLatency]) -> str:
    return format_table(["batch 1 (median of runs)", "runs", "prompt tok", "new tok", "TTFT ms", "decode tok/s"],
                        [[r.label, str(r.runs), str(r.prompt_tokens), _number(r.new_tokens, 0),
                          _number(r.ttft_ms, 1), _number(r.decode_tokens_per_s, 1)] for r in rows])


def _serve_load_table(runs: Sequence[ServeLoadRun]) -> str:
    rows = [[f"{r.requests} streams, max_queue {r.max_queue}", str(r.statuses.get("200", 0)),
             str(r.statuses.get("429", 0)), str(r.unexpected), _number(r.served_p50_s, 2), _number(r.served_p95_s, 2),
             _number(r.rejected_p50_ms, 0), _number(r.tokens_per_s, 1), _number(r.rss_baseline_mib, 0),
             _number(r.rss_peak_mib, 0), _number(r.rss_after_mib, 0)] for r in runs]
    return format_table(["concurrent load", "200", "429", "other", "p50 s", "p95 s", "429 p50 ms", "total tok/s",
                         "RSS before MiB", "peak", "after"], rows)


def serve_format_report(result: ServeBenchResult) -> str:
    machine = result.machine
    return "\n\n".join([
        f"Lumi serving benchmark (stage 06)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}, torch {result.torch_version}; GPU: {result.gpu or 'none'}\n"
        f"model: {result.model} ({result.model_note})\nload average (1 min): {result.load_average[0]:.2f} before, "
        f"{result.load_average[1]:.2f} after (other work on the machine slows every figure)",
        _serve_latency_table(result.latency) + f"\nTTFT: prefill of the prompt and the first token (HTTP: to the "
        f"first content delta, template and SSE included); decode: the tokens after the first over their time. "
        f"Engine rows ignore EOS to make {SERVE_BATCH1_TOKENS} tokens every run; HTTP rows stop at EOS or "
        f"{SERVE_LOAD_TOKENS} tokens."
        + ("" if result.gpu else "\nGPU: not measured (no CUDA device here); on a GPU machine "
                                 "`make bench-serve MODEL=<base final/>` adds an engine row on cuda."),
        _serve_load_table(result.load) + f"\nOne server per row (--max_concurrent 1, --cpu_threads "
        f"{SERVE_SERVER_THREADS}); each stream asks for up to {SERVE_LOAD_TOKENS} tokens at temperature 0. p50/p95: "
        f"latency of the served (200) streams, request to [DONE]; total tok/s: completion tokens of all streams over "
        f"the burst's wall time; RSS of the server process, 'after' read {SERVE_SETTLE_S:g} s after the burst.",
        format_checks(result.checks),
    ])


# --- Fine-tuning (stages 03 and 04) ----------------------------------------------------------------------------

FINETUNE_MODEL = REPO_ROOT / "checkpoints" / "pretrain" / "tiny" / "final"
FINETUNE_DATASET = REPO_ROOT / "data" / "processed" / "demo_tiny" / "demo" / "sft_train.json"
FINETUNE_STEPS = 40
FINETUNE_WARMUP_STEPS = 5  # not timed: the first steps allocate optimizer state and warm the kernels
FINETUNE_BATCH = 16
FINETUNE_METHODS = ("lora", "full")
FINETUNE_GPU_PRESET = "base"  # measured with random weights on a GPU: speed and memory do not depend on them


@dataclass
class FinetuneCase:
    method: str  # lora or full
    model: str  # a model directory, or "preset:<name>" for a random model of that preset (GPU rows)
    device: str


@dataclass
class FinetuneCaseResult:
    case: FinetuneCase
    params_total: int
    params_trainable: int
    steps_per_s: float
    tokens_per_s: float  # unpadded tokens of the timed steps over their time
    peak_memory_mib: float
    memory_kind: str  # "peak RSS" (CPU, the whole fresh process) or "peak allocated" (GPU)


@dataclass
class FinetuneBenchResult:
    machine: dict[str, str]
    gpu: str | None
    dataset: str
    results: list[FinetuneCaseResult]
    load_average: tuple[float, float]


def finetune_plan(model_path: Path) -> list[FinetuneCase]:
    """LoRA and full SFT of the tiny model on CPU; on a CUDA machine, the same for the base preset on the GPU."""
    import torch

    cases = [FinetuneCase(method, str(model_path), "cpu") for method in FINETUNE_METHODS]
    if torch.cuda.is_available():
        cases += [FinetuneCase(method, f"preset:{FINETUNE_GPU_PRESET}", "cuda") for method in FINETUNE_METHODS]
    return cases


def _finetune_model_dir(case: FinetuneCase, work_dir: Path) -> Path:
    """The case's model directory; a preset gets random weights and the tiny model's tokenizer (its vocabulary)."""
    if not case.model.startswith("preset:"):
        return Path(case.model)
    from utils.lm.model import build_model

    out = work_dir / case.model.replace(":", "_")
    if out.is_dir():
        return out
    preset = load_preset(str(REPO_ROOT / "config" / f"{case.model.removeprefix('preset:')}.json"))
    tokenizer_dir = FINETUNE_MODEL
    vocab = read_json(tokenizer_dir / "config.json")["vocab_size"]
    model = build_model(dataclasses.replace(preset.model, vocab_size=vocab), bos_token_id=1, eos_token_id=2,
                        pad_token_id=3)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    return out


def finetune_measure_case(case: FinetuneCase, dataset: Path, work_dir: Path) -> FinetuneCaseResult:
    """FINETUNE_STEPS steps of the stage 03 trainer (TRL SFTTrainer); steps after the warm-up are timed."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    from utils.finetune.models import load_training_model
    from utils.finetune.sft import SFTStageConfig, build_sft_trainer, prepare_sft_data
    from utils.lm.metrics import memory_mb
    from utils.lm.templates import get_template

    config = load_config(SFTStageConfig, None, {
        "model_path": str(_finetune_model_dir(case, work_dir)), "dataset_path": str(dataset),
        "output_dir": str(work_dir), "run_name": f"{case.method}-{case.device}", "full": case.method == "full",
        "max_steps": FINETUNE_STEPS, "batch_size": FINETUNE_BATCH, "gain_eval_size": 0, "validation_split": 0.0,
        "logging_steps": FINETUNE_STEPS, "save_steps": FINETUNE_STEPS * 10, "overwrite": True})
    loaded = load_training_model(config.model_path, config.full)
    data = prepare_sft_data(config, loaded.tokenizer, get_template(config.prompt_template), loaded.context)
    marks: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (FINETUNE_WARMUP_STEPS, FINETUNE_STEPS):
                if case.device == "cuda":
                    torch.cuda.synchronize()
                marks[str(state.global_step)] = time.perf_counter()

    trainer = build_sft_trainer(config, loaded, data, loaded.context, work_dir / config.run_name, [StepTimer()])
    trainer.remove_callback(ProgressCallback)  # its progress bar and log lines would interleave with the report
    trainer.train()
    seconds = marks[str(FINETUNE_STEPS)] - marks[str(FINETUNE_WARMUP_STEPS)]
    timed = FINETUNE_STEPS - FINETUNE_WARMUP_STEPS
    mean_tokens = sum(len(row["input_ids"]) for row in data.train) / len(data.train)
    device = torch.device(case.device)
    memory = memory_mb(device) if device.type == "cuda" else _peak_rss_kib() / KIB_PER_MIB
    return FinetuneCaseResult(case, sum(p.numel() for p in trainer.model.parameters()),
                              sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                              timed / seconds, timed * FINETUNE_BATCH * mean_tokens / seconds, memory,
                              "peak allocated" if device.type == "cuda" else "peak RSS")


def finetune_run_case(case: FinetuneCase, dataset: Path, work_dir: Path) -> FinetuneCaseResult:
    """One case in a freshly spawned interpreter, so that its peak memory is its own."""
    value = run_in_fresh_process(finetune_measure_case, (case, dataset, work_dir),
                                 f"fine-tuning benchmark case {case.method} on {case.device}")
    log.info("%s SFT on %s: %.2f steps/s, %.0f tokens/s, %s %.0f MiB", case.method, case.device, value.steps_per_s,
             value.tokens_per_s, value.memory_kind, value.peak_memory_mib)
    return value


def finetune_run_benchmark(work_dir: Path, model_path: Path = FINETUNE_MODEL,
                           dataset: Path = FINETUNE_DATASET) -> FinetuneBenchResult:
    import torch

    for needed, make in ((model_path, "make pretrain-tiny"), (dataset, "make prepare-demo")):
        if not needed.exists():
            raise DataError(f"the fine-tuning benchmark needs {needed}: run {make} first, or pass another path")
    load_before = os.getloadavg()[0]
    results = [finetune_run_case(case, dataset, work_dir) for case in finetune_plan(model_path)]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return FinetuneBenchResult(machine_info(), gpu, str(dataset), results, (load_before, os.getloadavg()[0]))


def _finetune_label(case: FinetuneCase) -> str:
    model = (f"random {case.model.removeprefix('preset:')}" if case.model.startswith("preset:")
             else Path(case.model).parent.name + "/" + Path(case.model).name)
    return f"{case.method} ({model}, {case.device})"


def finetune_format_report(result: FinetuneBenchResult) -> str:
    machine = result.machine
    rows = [[_finetune_label(r.case), f"{r.params_trainable:,} / {r.params_total:,}", _number(r.steps_per_s, 2),
             _number(r.tokens_per_s, 0), f"{_number(r.peak_memory_mib, 0)} ({r.memory_kind})"] for r in result.results]
    notes = (f"{FINETUNE_STEPS} steps of batch {FINETUNE_BATCH} from {result.dataset} through the stage 03 trainer "
             f"(TRL SFTTrainer, the default precision), the first {FINETUNE_WARMUP_STEPS} not timed; tokens/s counts "
             f"unpadded tokens; each row runs in a fresh process.")
    gpu = ("" if result.gpu else "\nGPU: not measured (no CUDA device here); on a GPU machine this adds LoRA and full "
                                 f"rows for a random {FINETUNE_GPU_PRESET} model.")
    return "\n\n".join([
        f"Lumi fine-tuning benchmark (stages 03/04)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}; GPU: {result.gpu or 'none'}\nload average (1 min): {result.load_average[0]:.2f} "
        f"before, {result.load_average[1]:.2f} after (other work on the machine slows every figure)",
        format_table(["SFT method (model, device)", "trainable / total params", "steps/s", "tokens/s", "memory MiB"],
                     rows) + "\n" + notes + gpu,
    ])
