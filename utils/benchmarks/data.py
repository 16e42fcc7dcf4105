"""Data-preparation benchmark (stage 01): the prose corpus of the LUMI_DATA_DIR mirror at 1x and Nx size (throughput
per stage, end to end, peak memory of a fresh process), plus a MinHash microbenchmark on short documents.

    LUMI_DATA_DIR=/path/to/mirror make bench-data
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from datasketch import MinHash

from utils.benchmarks.common import (
    KIB_PER_MIB,
    MB,
    TargetCheck,
    format_checks,
    format_number,
    format_table,
    machine_info,
    peak_rss_kib,
    run_in_fresh_process,
)
from utils.core.artifacts import REPO_ROOT, read_json
from utils.core.config import load_config
from utils.core.errors import DataError
from utils.core.hub import mirror_root
from utils.data.config import DataConfig
from utils.data.dedup import SCHEME, MinHasher, shingles
from utils.data.prepare import prepare_dataset
from utils.data.sources import resolve_input_files

log = logging.getLogger(__name__)

MINHASH_TARGET_DOCS_PER_S = 30_000.0
END_TO_END_TARGET_MB_PER_S = 1.0  # excluding tokenizer training
MEMORY_RATIO_TARGET = 1.5  # peak memory of the Nx run over the 1x run
CONFIG_PATH = REPO_ROOT / "config" / "datasets" / "british_fiction.json"
PROSE_SUBDIR = Path("data") / "prose" / "british-fiction"
TINYSTORIES_FILE = Path("data") / "tinystories" / "TinyStories-train.first_stories.txt"
MINHASH_BOOK = "Dickens_Bleak.txt"
MINHASH_NUM_PERM = 128
MINHASH_SHINGLE_SIZE = 5
MINHASH_DOCS = 20_000
MINHASH_REPEATS = 3
MINHASH_MIN_LINE_CHARS = 50
MINHASH_PROSE_DOC_CHARS = 300
DATASKETCH_DOCS = 5_000
END_TO_END_STAGE = "end_to_end_excluding_tokenizer_training"
# Pipeline order for the per-stage table (stats.json stores them sorted); stages not listed go last.
STAGE_ORDER = ("clean_worker_cpu", "filter_worker_cpu", "exact_dedup", "near_dedup", "pass1_wall",
                    "tokenizer_training", "tokenization", "end_to_end", END_TO_END_STAGE)


@dataclass
class StageRun:
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
class MinHashRate:
    """Signature throughput on one document set: the median of `rates`, one per timed run."""

    label: str
    documents: int
    mean_chars: float
    rates: list[float]
    docs_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.docs_per_s = statistics.median(self.rates)


@dataclass
class BenchResult:
    machine: dict[str, str]
    corpus_dir: str
    minhash: list[MinHashRate]
    datasketch_identical: bool
    runs: list[StageRun]
    memory_ratio: float
    checks: list[TargetCheck]


def mirror_dir(mirror: Path | None = None) -> Path:
    """The mirror folder holding the benchmark's corpora, or a DataError naming what is missing."""
    mirror = mirror or mirror_root()
    if mirror is None:
        raise DataError(f"the data benchmark reads local corpora: set LUMI_DATA_DIR to a mirror holding "
                        f"{PROSE_SUBDIR} and {TINYSTORIES_FILE}")
    needed = [mirror / PROSE_SUBDIR, mirror / TINYSTORIES_FILE]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DataError(f"the data benchmark needs {', '.join(missing)} in the mirror LUMI_DATA_DIR={mirror}")
    return mirror


def stage_config(name: str, input_path: str, output_dir: Path, vocab_size: int) -> DataConfig:
    overrides = {"name": name, "input_path": input_path, "output_dir": str(output_dir), "vocab_size": vocab_size,
                 "force": True}
    return load_config(DataConfig, CONFIG_PATH, overrides)


def build_copies(files: Sequence[Path], target: Path, copies: int) -> Path:
    """copy_<i>/<book> symlinks for i < copies: the reader follows them, so this reads as `copies`x the corpus."""
    for index in range(copies):
        copy_dir = target / f"copy_{index}"
        copy_dir.mkdir(parents=True, exist_ok=True)
        for source in files:
            link = copy_dir / source.name
            link.unlink(missing_ok=True)
            link.symlink_to(source.resolve())
    return target


def _prepare_and_peak_rss(config: DataConfig) -> int:
    prepare_dataset(config)
    return peak_rss_kib()


def run_stage(config: DataConfig, copies: int) -> StageRun:
    """Run `prepare_dataset` in a freshly spawned interpreter so its peak memory is its own."""
    started = time.perf_counter()
    peak_kib = run_in_fresh_process(_prepare_and_peak_rss, (config,), f"benchmark run {config.name}")
    wall = time.perf_counter() - started
    stats = read_json(Path(config.output_dir) / config.name / "stats.json")
    return StageRun(config.name, copies, wall, peak_kib / KIB_PER_MIB, stats)


def short_docs(path: Path, count: int = MINHASH_DOCS) -> list[str]:
    """Lines of at least MINHASH_MIN_LINE_CHARS characters, cycled to `count` documents."""
    with path.open(encoding="utf-8") as fh:
        lines = [s for s in map(str.strip, fh) if len(s) >= MINHASH_MIN_LINE_CHARS]
    return list(itertools.islice(itertools.cycle(lines), count))


def prose_docs(path: Path, count: int = MINHASH_DOCS) -> list[str]:
    """Consecutive non-blank lines of a book joined into ~MINHASH_PROSE_DOC_CHARS documents, cycled to `count`."""
    docs: list[str] = []
    group = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        group = f"{group} {line.strip()}".strip()
        if len(group) >= MINHASH_PROSE_DOC_CHARS:
            docs.append(group)
            group = ""
    return list(itertools.islice(itertools.cycle(docs), count))


def _rate(run: Callable[[], object], documents: int) -> float:
    start = time.perf_counter()
    run()
    return documents / (time.perf_counter() - start)


def minhash_rate(label: str, docs: list[str], repeats: int = MINHASH_REPEATS) -> MinHashRate:
    hasher = MinHasher(MINHASH_NUM_PERM, MINHASH_SHINGLE_SIZE)
    result = MinHashRate(label, len(docs), sum(map(len, docs)) / len(docs),
                             [_rate(lambda: hasher.signatures(docs), len(docs)) for _ in range(repeats)])
    log.info("%s: %.0f docs/s (median of %d)", label, result.docs_per_s, repeats)
    return result


def _datasketch_signatures(docs: list[str]) -> np.ndarray:
    sketches = MinHash.bulk((shingles(text, MINHASH_SHINGLE_SIZE) for text in docs),
                            num_perm=MINHASH_NUM_PERM, hashfunc=xxhash.xxh32_intdigest, scheme=SCHEME)
    return np.stack([sketch.hashvalues for sketch in sketches])


def datasketch_rate(label: str, docs: list[str]) -> tuple[MinHashRate, bool]:
    """datasketch's own MinHash.bulk (shingling included, as in ours), and whether it matches our signatures."""
    start = time.perf_counter()
    theirs = _datasketch_signatures(docs)
    rate = len(docs) / (time.perf_counter() - start)
    ours = MinHasher(MINHASH_NUM_PERM, MINHASH_SHINGLE_SIZE).signatures(docs)
    log.info("%s: %.0f docs/s", label, rate)
    return MinHashRate(label, len(docs), sum(map(len, docs)) / len(docs), [rate]), np.array_equal(theirs, ours)


def _minhash(mirror: Path) -> tuple[list[MinHashRate], bool]:
    short = short_docs(mirror / TINYSTORIES_FILE)
    prose = prose_docs(mirror / PROSE_SUBDIR / MINHASH_BOOK)
    reference, identical = datasketch_rate("datasketch MinHash.bulk, TinyStories lines",
                                                short[:DATASKETCH_DOCS])
    rates = [minhash_rate("MinHasher, TinyStories lines", short),
             minhash_rate(f"MinHasher, {MINHASH_BOOK} ~{MINHASH_PROSE_DOC_CHARS} chars", prose),
             reference]
    return rates, identical


def _checks(minhash: MinHashRate, runs: Sequence[StageRun], memory_ratio: float) -> list[TargetCheck]:
    checks = [TargetCheck(f"MinHash signatures, short docs ({minhash.mean_chars:.0f} chars)", minhash.docs_per_s,
                          MINHASH_TARGET_DOCS_PER_S, "docs/s")]
    checks += [TargetCheck(f"end to end excl. tokenizer training, {run.copies}x",
                           run.stages[END_TO_END_STAGE]["mb_per_s"] or 0.0, END_TO_END_TARGET_MB_PER_S,
                           "MB/s") for run in runs]
    checks.append(TargetCheck(f"peak memory {runs[-1].copies}x / 1x", memory_ratio, MEMORY_RATIO_TARGET, "x",
                              higher_is_better=False))
    return checks


def run_benchmark(work_dir: Path, vocab_size: int, copies: int, mirror: Path | None = None) -> BenchResult:
    """MinHash microbenchmark, then stage 01 on the prose corpus once and `copies` times over, each in a new process."""
    mirror = mirror_dir(mirror)
    corpus_dir = mirror / PROSE_SUBDIR
    minhash, identical = _minhash(mirror)
    corpus_glob = str(corpus_dir / "*.txt")
    copies_dir = build_copies(resolve_input_files(corpus_glob), work_dir / f"input_{copies}x", copies)
    runs = []
    for name, input_path, count in [("bench_1x", corpus_glob, 1), (f"bench_{copies}x", str(copies_dir), copies)]:
        log.info("stage 01 on %dx the prose corpus (%s), in a fresh process", count, name)
        runs.append(run_stage(stage_config(name, input_path, work_dir, vocab_size), count))
    memory_ratio = runs[1].peak_rss_mib / runs[0].peak_rss_mib
    return BenchResult(machine_info(), str(corpus_dir), minhash, identical, runs, memory_ratio,
                           _checks(minhash[0], runs, memory_ratio))


def _runs_table(runs: Sequence[StageRun]) -> str:
    def row(label: str, value: Callable[[StageRun], str]) -> list[str]:
        return [label, *(value(run) for run in runs)]

    rows = [
        row("input MB", lambda r: format_number(r.stats["bytes"]["read"] / MB, 1)),
        row("documents read", lambda r: f"{r.stats['documents']['read']:,}"),
        row("documents after filters", lambda r: f"{r.stats['documents']['after_filters']:,}"),
        row("exact duplicates dropped", lambda r: f"{r.stats['dropped'].get('exact_duplicate', 0):,}"),
        row("near duplicates dropped", lambda r: f"{r.stats['dropped'].get('near_duplicate', 0):,}"),
        row("documents kept", lambda r: f"{r.stats['documents']['kept']:,}"),
        row("tokens", lambda r: f"{r.stats['tokens']['total']:,}"),
        row("wall time, parent (s)", lambda r: format_number(r.wall_seconds, 1)),
        row("peak memory (MiB)", lambda r: format_number(r.peak_rss_mib, 1)),
    ]
    return format_table(["run", *(f"{r.copies}x ({r.name})" for r in runs)], rows)


def _stages_table(runs: Sequence[StageRun]) -> str:
    headers = ["stage"] + [f"{r.copies}x {unit}" for r in runs for unit in ("s", "docs/s", "MB/s")]
    rows = []
    order = {name: index for index, name in enumerate(STAGE_ORDER)}
    for stage in sorted(runs[0].stages, key=lambda name: order.get(name, len(order))):
        cells = [stage]
        for run in runs:
            figures = run.stages[stage]
            cells += [format_number(figures["seconds"], 2), format_number(figures["docs_per_s"], 0),
                      format_number(figures["mb_per_s"], 2)]
        rows.append(cells)
    return format_table(headers, rows)


def _minhash_table(rates: Sequence[MinHashRate]) -> str:
    rows = [[r.label, f"{r.documents:,}", format_number(r.mean_chars, 0), str(len(r.rates)),
             format_number(r.docs_per_s, 0), f"{min(r.rates):,.0f}-{max(r.rates):,.0f}"] for r in rates]
    return format_table(["MinHash signatures (128 perm, word 5-grams)", "docs", "chars/doc", "runs",
                         "docs/s (median)", "range"], rows)


def format_report(result: BenchResult) -> str:
    machine = result.machine
    one, many = result.runs
    same = one.stats["documents"]["kept"] == many.stats["documents"]["kept"]
    dedup_note = (f"{many.copies}x kept {'the same' if same else 'a DIFFERENT'} number of documents as 1x "
                  f"({many.stats['documents']['kept']:,} vs {one.stats['documents']['kept']:,}): "
                  f"{'the identical copies were all removed as exact duplicates' if same else 'dedup missed copies'}.")
    return "\n\n".join([
        f"Lumi data-preparation benchmark (stage 01)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}\ncorpus: {result.corpus_dir}",
        _minhash_table(result.minhash) + f"\nMinHasher signatures identical to datasketch's: "
                                              f"{'yes' if result.datasketch_identical else 'NO'}",
        _runs_table(result.runs) + f"\n{dedup_note}",
        "Per stage (worker stages are CPU-seconds summed over workers; from each run's stats.json)\n"
        + _stages_table(result.runs),
        format_checks(result.checks),
    ])
