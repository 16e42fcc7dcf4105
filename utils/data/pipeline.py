"""Stage 01, pass 1: read -> clean -> split long documents -> filter (a worker pool) -> exact and near dedup (the main
process) -> the spool, a length-prefixed file of the kept documents that pass 2 reads back.

FirstPass collects what pass 1 learns (counts, drop examples, timings, each kept document's content-hash keys);
validation_mask turns the split keys into the deterministic train/validation split.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import itertools
import multiprocessing
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from utils.core.errors import DataError
from utils.data.cleaning import CleaningOptions, clean_text, split_long_text
from utils.data.config import DataConfig, hub_dataset, memory_budget_bytes
from utils.data.dedup import DedupKeyer, DedupKeys, DuplicateIndex
from utils.data.filters import FilterOptions, drop_reasons
from utils.data.sources import ReadStats, SourceOptions, iter_hub_documents, iter_local_documents

SPOOL_NAME = ".spool.bin"
DROP_EXAMPLES_PER_REASON = 3
DROP_EXAMPLE_CHARS = 200
_LENGTH = struct.Struct("<I")


class StageTimer:
    """Seconds per named stage. Worker stages add CPU-seconds summed over workers."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)


@dataclass
class BatchResult:
    kept: list[str]
    keys: DedupKeys | None = None  # dedup keys of `kept`, computed in the worker (dedup on)
    pieces: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    clean_seconds: float = 0.0
    filter_seconds: float = 0.0
    dedup_keys_seconds: float = 0.0


@dataclass(frozen=True)
class WorkerOptions:
    cleaning: CleaningOptions
    filters: FilterOptions
    split_at: int | None
    dedup: tuple[bool, bool, int, int, int] | None  # DedupKeyer's arguments when exact or near dedup is on

    def keyer(self) -> DedupKeyer | None:
        return DedupKeyer(*self.dedup) if self.dedup else None


def worker_options(config: DataConfig) -> WorkerOptions:
    cleaning = CleaningOptions(config.fix_unicode, config.remove_urls, config.remove_code_blocks)
    filters = FilterOptions(config.min_chars, config.max_chars, config.language, config.language_threshold,
                            config.language_sample_chars, config.max_symbol_ratio, config.min_mean_word_length,
                            config.max_mean_word_length, config.min_stop_words)
    dedup = (config.exact_dedup, config.near_dedup, config.minhash_num_perm, config.minhash_bands,
             config.shingle_size) if config.exact_dedup or config.near_dedup else None
    return WorkerOptions(cleaning, filters, config.max_chars if config.split_long_documents else None, dedup)


_WORKER_OPTIONS: WorkerOptions | None = None
_WORKER_KEYER: DedupKeyer | None = None


def _init_worker(options: WorkerOptions) -> None:
    global _WORKER_OPTIONS, _WORKER_KEYER
    _WORKER_OPTIONS = options
    _WORKER_KEYER = options.keyer()


def _pool_task(batch: list[str]) -> BatchResult:
    assert _WORKER_OPTIONS is not None
    return clean_and_filter(batch, _WORKER_OPTIONS, _WORKER_KEYER)


def clean_and_filter(batch: list[str], options: WorkerOptions, keyer: DedupKeyer | None) -> BatchResult:
    """One batch, in a worker of either engine: clean, split long documents, filter (drops counted with a few
    examples), and the dedup keys of what is kept."""
    result = BatchResult(kept=[])
    start = time.perf_counter()
    pieces: list[str] = []
    for raw in batch:
        text = clean_text(raw, options.cleaning)
        pieces += split_long_text(text, options.split_at) if (options.split_at and text) else [text]
    mid = time.perf_counter()
    texts = [piece for piece in pieces if piece]
    reasons = iter(drop_reasons(texts, options.filters))  # one batched language identification for the batch
    for piece in pieces:
        reason = next(reasons) if piece else "empty_after_cleaning"
        if reason is None:
            result.kept.append(piece)
            continue
        result.dropped[reason] = result.dropped.get(reason, 0) + 1
        examples = result.examples.setdefault(reason, [])
        if len(examples) < DROP_EXAMPLES_PER_REASON:
            examples.append(piece[:DROP_EXAMPLE_CHARS])
    result.pieces = len(pieces)
    result.clean_seconds = mid - start
    filtered = time.perf_counter()
    result.filter_seconds = filtered - mid
    if keyer is not None:
        result.keys = keyer.keys(result.kept)
        result.dedup_keys_seconds = time.perf_counter() - filtered
    return result


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _doc_keys(text: str, seed: int) -> tuple[int, int]:
    """Two independent 64-bit content hashes: one orders the train/val split, one picks the tokenizer sample."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16, salt=seed.to_bytes(8, "little")[:16]).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


class FirstPass:
    """Collects everything pass 1 learns: counts, drop examples, timings, and per-document keys."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.read = ReadStats()
        self.counts: dict[str, int] = {"pieces": 0, "after_filters": 0, "after_exact_dedup": 0, "kept": 0}
        self.dropped: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.timer = StageTimer()
        self.split_keys = array.array("Q")  # 8 bytes per kept document, not a Python int's 36
        self.sample_keys = array.array("Q")
        self.kept_chars = 0
        self.kept_bytes = 0
        self.engine: dict[str, Any] = {"name": config.engine}  # which engine ran, with its settings

    def drop(self, reason: str, count: int, examples: list[str]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        kept_examples = self.examples.setdefault(reason, [])
        for text in examples[: DROP_EXAMPLES_PER_REASON - len(kept_examples)]:
            kept_examples.append(text[:DROP_EXAMPLE_CHARS])

    def absorb(self, result: BatchResult) -> None:
        """A worker batch's counts, filter drops and timings."""
        self.counts["pieces"] += result.pieces
        self.counts["after_filters"] += len(result.kept)
        self.timer.add("clean", result.clean_seconds)
        self.timer.add("filter", result.filter_seconds)
        self.timer.add("dedup_keys", result.dedup_keys_seconds)
        for reason, count in result.dropped.items():
            self.drop(reason, count, result.examples.get(reason, []))

    def keep(self, spool: BinaryIO, text: str) -> None:
        """Appends a kept document to the spool and records its keys."""
        data = spool_write(spool, text)
        split_key, sample_key = _doc_keys(text, self.config.seed)
        self.split_keys.append(split_key)
        self.sample_keys.append(sample_key)
        self.counts["kept"] += 1
        self.kept_chars += len(text)
        self.kept_bytes += len(data)

    @property
    def state_bytes(self) -> int:
        """Memory of what grows with the kept documents, beside the dedup index: the split and sample keys."""
        return self.split_keys.itemsize * (len(self.split_keys) + len(self.sample_keys))


def raw_documents(config: DataConfig, stats: ReadStats, files: list[Path],
                  shard: tuple[int, int] | None = None) -> Iterator[str]:
    """The input's raw documents; `shard` (count, index) reads one contiguous shard of a hub dataset."""
    # Blocks of at most max_chars let worker batches stay small and evenly sized on books without blank lines.
    block_chars = config.max_chars if config.split_long_documents else config.max_doc_chars
    options = SourceOptions(text_field=config.text_field, text_unit=config.text_unit,
                            max_doc_chars=config.max_doc_chars, block_chars=block_chars, strict=config.strict)
    if config.source == "hf" and not files:
        documents = iter_hub_documents(hub_dataset(config), config.hf_streaming, stats, options, shard)
    else:
        documents = iter_local_documents(files, stats, options)
    # islice pulls exactly max_documents, so the reader's counts stop there too.
    return itertools.islice(documents, config.max_documents)


def run_pass1(config: DataConfig, files: list[Path], spool_path: Path) -> FirstPass:
    """The local engine: a worker pool cleans and filters, this process dedups in memory and writes the spool."""
    state = FirstPass(config)
    options = worker_options(config)
    index = DuplicateIndex() if options.dedup else None
    budget = memory_budget_bytes(config)
    total_bytes = sum(f.stat().st_size for f in files) or None
    batches = batched(raw_documents(config, state.read, files), config.batch_documents)
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="clean/filter/dedup", mininterval=1.0)
    with open(spool_path, "wb") as spool, _worker_map(config.num_workers, options) as mapper:
        for result in mapper(_pool_task, batches):
            state.absorb(result)
            for text in _dedup(state, result, index):
                state.keep(spool, text)
            _check_budget(state, index, budget)
            progress.update(state.read.bytes_read - progress.n)
            progress.set_postfix(docs=state.read.documents, kept=state.counts["kept"], refresh=False)
    progress.close()
    state.engine.update(workers=config.num_workers, memory_budget_gb=round(budget / 2**30, 3),
                        index_bytes=index.nbytes if index is not None else 0)
    return state


def _check_budget(state: FirstPass, index: DuplicateIndex | None, budget: int) -> None:
    # The index's last merge briefly holds its runs twice.
    used = state.state_bytes + 2 * (index.nbytes if index is not None else 0)
    if used > budget:
        raise DataError(f"the in-memory dedup state reached {used / 2**30:.2f} GB after {state.read.documents:,} "
                        f"documents, past --memory_budget_gb {budget / 2**30:g}. This corpus needs the disk-based "
                        f"engine: rerun with --engine datatrove (or raise --memory_budget_gb). Nothing was written.")


class _worker_map:  # noqa: N801 - used as a context manager factory
    """`imap` over a process pool (order-preserving, so output is deterministic) or in-process when 0 workers."""

    def __init__(self, workers: int, options: WorkerOptions) -> None:
        self.workers, self.options, self.pool = workers, options, None

    def __enter__(self):
        if self.workers <= 0:
            _init_worker(self.options)
            return lambda fn, items: map(fn, items)
        context = multiprocessing.get_context("fork")
        self.pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.options,))
        return lambda fn, items: self.pool.imap(fn, items)

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _dedup(state: FirstPass, result: BatchResult, index: DuplicateIndex | None) -> list[str]:
    if index is None or not result.kept:
        reasons: list[str | None] = [None] * len(result.kept)
    else:
        assert result.keys is not None
        with state.timer.measure("dedup"):
            reasons = index.classify(result.keys)
    kept = []
    for text, reason in zip(result.kept, reasons):
        if reason is None:
            kept.append(text)
        else:
            state.drop(reason, 1, [text])
    state.counts["after_exact_dedup"] += len(result.kept) - reasons.count("exact_duplicate")
    return kept


def spool_write(spool: BinaryIO, text: str) -> bytes:
    """Appends one document (length-prefixed UTF-8) and returns its bytes."""
    data = text.encode("utf-8")
    spool.write(_LENGTH.pack(len(data)))
    spool.write(data)
    return data


def spool_read(path: Path) -> Iterator[str]:
    with open(path, "rb") as fh:
        while header := fh.read(_LENGTH.size):
            (length,) = _LENGTH.unpack(header)
            yield fh.read(length).decode("utf-8")


def validation_mask(split_keys: Sequence[int], train_fraction: float) -> np.ndarray:
    """The documents with the smallest keys go to validation: an exact, order-independent, seeded split."""
    n = len(split_keys)
    if n < 2:
        raise DataError(f"only {n} document(s) survived cleaning, filtering and dedup; at least 2 are needed for a "
                        f"train/validation split. Use more data or relax the filters (see the drop counts above).")
    n_val = min(n - 1, max(1, round(n * (1.0 - train_fraction))))
    order = np.argsort(np.asarray(split_keys, dtype=np.uint64), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_val]] = True
    return mask
