"""Data-preparation benchmark (stage 01): distinct short documents cut from the LUMI_DATA_DIR mirror's prose at 1x
and Nx (utils/benchmarks/data_scale.py: throughput per stage, end to end, peak memory of the process tree,
near-duplicate recall on planted copies), plus a MinHash microbenchmark on short documents.

    LUMI_DATA_DIR=/path/to/mirror make bench-data
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash

from utils.benchmarks.common import (
    MB,
    TargetCheck,
    format_checks,
    format_number,
    format_table,
    machine_info,
)
from utils.benchmarks.data_scale import (
    PLANT_EVERY,
    PLANTED_WORD_CHANGE,
    SCALE_DOC_CHARS,
    ScaleRun,
    run_scale,
    write_scale_corpus,
)
from utils.core.artifacts import REPO_ROOT
from utils.core.config import load_config
from utils.core.errors import DataError
from utils.core.hub import mirror_root
from utils.data.config import DataConfig
from utils.data.dedup import SCHEME, MinHasher, shingles
from utils.data.sources import resolve_input_files

log = logging.getLogger(__name__)

MINHASH_TARGET_DOCS_PER_S = 30_000.0
END_TO_END_TARGET_MB_PER_S = 2.0  # on short documents, tokenizer training included
MEMORY_RATIO_TARGET = 1.3  # peak memory of the process tree, Nx run over 1x run
RECALL_TARGET = 0.95  # of the planted near-duplicates (1 % of words changed) dropped
# Each engine's --memory_budget_gb: the machine's default for the local engine; for datatrove one small enough that
# each 4x task flushes its dedup keys in two chunks (what a corpus past the budget does).
ENGINES = {"local": None, "datatrove": 0.02}
CONFIG_PATH = REPO_ROOT / "config" / "datasets" / "british_fiction.json"
PROSE_SUBDIR = Path("prose") / "british-fiction"
TINYSTORIES_FILE = Path("tinystories") / "TinyStories-train.first_stories.txt"
MINHASH_BOOK = "Dickens_Bleak.txt"
MINHASH_NUM_PERM = 128
MINHASH_SHINGLE_SIZE = 5
MINHASH_DOCS = 20_000
MINHASH_REPEATS = 3
MINHASH_MIN_LINE_CHARS = 50
MINHASH_PROSE_DOC_CHARS = 300
DATASKETCH_DOCS = 5_000
# Pipeline order for the per-stage table (stats.json stores them sorted); stages not listed go last.
STAGE_ORDER = ("clean_worker_cpu", "filter_worker_cpu", "dedup_keys_worker_cpu", "dedup", "pass1_wall",
                "tokenizer_training", "tokenization", "end_to_end", "end_to_end_excluding_tokenizer_training")


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
    runs: list[ScaleRun]
    memory_ratios: dict[str, float]  # per engine: peak memory of the Nx run over the 1x run
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


def _checks(minhash: MinHashRate, runs: Sequence[ScaleRun], memory_ratios: dict[str, float]) -> list[TargetCheck]:
    checks = [TargetCheck(f"MinHash signatures, short docs ({minhash.mean_chars:.0f} chars)", minhash.docs_per_s,
                          MINHASH_TARGET_DOCS_PER_S, "docs/s")]
    checks += [TargetCheck(f"end to end, {run.label} short documents",
                           run.stats["stages"]["end_to_end"]["mb_per_s"] or 0.0, END_TO_END_TARGET_MB_PER_S, "MB/s")
               for run in runs]
    checks += [TargetCheck(f"peak memory of the process tree, {engine} {runs[-1].corpus.copies}x / 1x", ratio,
                           MEMORY_RATIO_TARGET, "x", higher_is_better=False) for engine, ratio in memory_ratios.items()]
    checks += [TargetCheck(f"near-duplicate recall on planted copies, {run.label}", run.recall,
                           RECALL_TARGET, "") for run in runs]
    checks += [TargetCheck(f"distinct documents the dedup kept, {run.label}",
                           1.0 - run.distinct_lost / run.corpus.distinct, 1.0, "") for run in runs]
    local = {run.corpus.copies: run.output_sha256 for run in runs if run.engine == "local"}
    checks += [TargetCheck(f"datatrove output identical to local (manifest, shards), {run.corpus.copies}x",
                           float(run.output_sha256 == local[run.corpus.copies]), 1.0, "")
               for run in runs if run.engine == "datatrove"]
    return checks


def run_benchmark(work_dir: Path, vocab_size: int, copies: int, mirror: Path | None = None) -> BenchResult:
    """MinHash microbenchmark, then stage 01 on the 1x and `copies`x scale corpora with each engine, each run in a
    fresh process."""
    mirror = mirror_dir(mirror)
    corpus_dir = mirror / PROSE_SUBDIR
    minhash, identical = _minhash(mirror)
    files = resolve_input_files(str(corpus_dir / "*.txt"))
    corpora = [write_scale_corpus(files, work_dir / "input" / f"scale_{count}x", count) for count in (1, copies)]
    runs = []
    for engine, budget in ENGINES.items():
        for corpus in corpora:
            # The same name in a folder per engine: the manifests name their dataset.
            config = stage_config(f"scale_{corpus.copies}x", corpus.path, work_dir / engine, vocab_size)
            runs.append(run_scale(corpus, replace(config, engine=engine, memory_budget_gb=budget)))
    ratios = {engine: pair[1].peak_tree_mib / pair[0].peak_tree_mib
              for engine in ENGINES for pair in [[run for run in runs if run.engine == engine]]}
    return BenchResult(machine_info(), str(corpus_dir), minhash, identical, runs, ratios,
                       _checks(minhash[0], runs, ratios))


def _runs_table(runs: Sequence[ScaleRun]) -> str:
    def row(label: str, value: Callable[[ScaleRun], str]) -> list[str]:
        return [label, *(value(run) for run in runs)]

    rows = [
        row("input MB", lambda r: format_number(r.stats["bytes"]["read"] / MB, 1)),
        row("documents read (distinct + planted)", lambda r: f"{r.stats['documents']['read']:,} "
                                                             f"({r.corpus.distinct:,} + {r.corpus.planted:,})"),
        row("documents after filters", lambda r: f"{r.stats['documents']['after_filters']:,}"),
        row("exact duplicates dropped", lambda r: f"{r.stats['dropped'].get('exact_duplicate', 0):,}"),
        row("near duplicates dropped", lambda r: f"{r.stats['dropped'].get('near_duplicate', 0):,}"),
        row("documents kept", lambda r: f"{r.stats['documents']['kept']:,}"),
        row("recall on planted copies", lambda r: f"{100 * r.recall:.1f} %"),
        row("distinct documents lost", lambda r: f"{r.distinct_lost:,}"),
        row("tokens", lambda r: f"{r.stats['tokens']['total']:,}"),
        row("filter tasks / dedup key chunks on disk", lambda r: f"{r.stats['engine'].get('tasks', '-')} / "
                                                                 f"{r.stats['engine'].get('key_chunks', '-')}"),
        row("wall time, parent (s)", lambda r: format_number(r.wall_seconds, 1)),
        row("end to end MB/s", lambda r: format_number(r.stats["stages"]["end_to_end"]["mb_per_s"], 2)),
        row("peak memory, process tree PSS (MiB)", lambda r: format_number(r.peak_tree_mib, 1)),
    ]
    return format_table(["run", *(r.label for r in runs)], rows)


def _stages_table(runs: Sequence[ScaleRun]) -> str:
    headers = ["stage"] + [f"{r.label} {unit}" for r in runs for unit in ("s", "MB/s")]
    rows = []
    order = {name: index for index, name in enumerate(STAGE_ORDER)}
    names = {name for run in runs for name in run.stats["stages"]}
    for stage in sorted(names, key=lambda name: order.get(name, len(order))):
        cells = [stage]
        for run in runs:
            figures = run.stats["stages"].get(stage, {"seconds": None, "mb_per_s": None})
            cells += [format_number(figures["seconds"], 2), format_number(figures["mb_per_s"], 2)]
        rows.append(cells)
    return format_table(headers, rows)


def _minhash_table(rates: Sequence[MinHashRate]) -> str:
    rows = [[r.label, f"{r.documents:,}", format_number(r.mean_chars, 0), str(len(r.rates)),
             format_number(r.docs_per_s, 0), f"{min(r.rates):,.0f}-{max(r.rates):,.0f}"] for r in rates]
    return format_table(["MinHash signatures (128 perm, word 5-grams)", "docs", "chars/doc", "runs",
                         "docs/s (median)", "range"], rows)


def format_report(result: BenchResult) -> str:
    machine = result.machine
    return "\n\n".join([
        f"Lumi data-preparation benchmark (stage 01)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}\ncorpus: ~{SCALE_DOC_CHARS}-character documents cut from {result.corpus_dir}, words "
        f"reordered per copy; 1 in {PLANT_EVERY} planted again with {100 * PLANTED_WORD_CHANGE:g} % of its words "
        f"changed",
        _minhash_table(result.minhash) + f"\nMinHasher signatures identical to datasketch's: "
                                         f"{'yes' if result.datasketch_identical else 'NO'}",
        _runs_table(result.runs),
        "Per stage (worker stages are CPU-seconds summed over workers; from each run's stats.json)\n"
        + _stages_table(result.runs),
        format_checks(result.checks),
    ])
