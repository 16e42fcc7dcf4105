"""Benchmarks: measured figures, and PASS/FAIL against named targets. Figures are printed, never asserted in tests.

Shared helpers (targets, tables, machine description) come first; each benchmark then has its own section
whose public names share a prefix:

  data_*  stage 01 on the prose corpus in ../shared/data/prose, at 1x and Nx size (throughput per stage, end to
          end, peak memory of a fresh process), plus a MinHash microbenchmark on short documents.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from datasketch import MinHash

from utils.artifacts import REPO_ROOT, read_json
from utils.cli import setup_logging
from utils.config import load_config
from utils.data_prep import DataConfig, prepare_dataset
from utils.dedup import SCHEME, MinHasher, shingles
from utils.errors import DataError, LumiError
from utils.sources import resolve_input_files

log = logging.getLogger(__name__)

SHARED_DIR = REPO_ROOT.parent / "shared"
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


def data_shared_dir(shared_dir: Path = SHARED_DIR) -> Path:
    """The shared data folder, or a DataError naming what is missing."""
    needed = [shared_dir / DATA_PROSE_SUBDIR, shared_dir / DATA_TINYSTORIES_FILE]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DataError(f"the data benchmark needs ../shared beside the repository ({shared_dir}); missing: "
                        f"{', '.join(missing)}. Check out the shared data folder next to the repo and rerun.")
    return shared_dir


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


def _peak_rss_kib() -> int:
    """Peak RSS of this process or of any reaped descendant (the pool workers), in KiB on Linux."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _data_stage_child(config: DataConfig, log_level: int, conn: Connection) -> None:
    setup_logging(log_level)
    try:
        prepare_dataset(config)
        conn.send(("ok", _peak_rss_kib()))
    except LumiError as exc:
        conn.send(("error", str(exc)))
    finally:
        conn.close()


def data_run_stage(config: DataConfig, copies: int) -> DataStageRun:
    """Run `prepare_dataset` in a freshly spawned interpreter so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_data_stage_child, args=(config, logging.getLogger().getEffectiveLevel(), send))
    started = time.perf_counter()
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "died", None
    process.join()
    wall = time.perf_counter() - started
    if status != "ok":
        reason = value or f"its process exited with code {process.exitcode} and no result (see the log above)"
        raise DataError(f"benchmark run {config.name} failed: {reason}")
    stats = read_json(Path(config.output_dir) / config.name / "stats.json")
    return DataStageRun(config.name, copies, wall, value / KIB_PER_MIB, stats)


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


def _data_minhash(shared_dir: Path) -> tuple[list[DataMinHashRate], bool]:
    short = data_short_docs(shared_dir / DATA_TINYSTORIES_FILE)
    prose = data_prose_docs(shared_dir / DATA_PROSE_SUBDIR / DATA_MINHASH_BOOK)
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


def data_run_benchmark(work_dir: Path, vocab_size: int, copies: int, shared_dir: Path = SHARED_DIR) -> DataBenchResult:
    """MinHash microbenchmark, then stage 01 on the prose corpus once and `copies` times over, each in a new process."""
    shared_dir = data_shared_dir(shared_dir)
    corpus_dir = shared_dir / DATA_PROSE_SUBDIR
    minhash, identical = _data_minhash(shared_dir)
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
