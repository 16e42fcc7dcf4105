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
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.core.errors import DataError
from utils.data.cleaning import CleaningOptions, clean_text, split_long_text
from utils.data.config import DataConfig, hub_dataset
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
class _BatchResult:
    kept: list[str]
    keys: DedupKeys | None = None  # dedup keys of `kept`, computed in the worker (dedup on)
    pieces: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    clean_seconds: float = 0.0
    filter_seconds: float = 0.0
    dedup_keys_seconds: float = 0.0


@dataclass(frozen=True)
class _WorkerOptions:
    cleaning: CleaningOptions
    filters: FilterOptions
    split_at: int | None
    dedup: tuple[bool, bool, int, int, int] | None  # DedupKeyer's arguments when exact or near dedup is on


_WORKER_OPTIONS: _WorkerOptions | None = None
_WORKER_KEYER: DedupKeyer | None = None


def _init_worker(options: _WorkerOptions) -> None:
    global _WORKER_OPTIONS, _WORKER_KEYER
    _WORKER_OPTIONS = options
    _WORKER_KEYER = DedupKeyer(*options.dedup) if options.dedup else None


def _clean_and_filter(batch: list[str]) -> _BatchResult:
    """Runs in a worker: clean, split long documents, filter (drops counted with a few examples), and the dedup
    keys of what is kept, so the main process only queries and updates the index."""
    options = _WORKER_OPTIONS
    assert options is not None
    result = _BatchResult(kept=[])
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
    if _WORKER_KEYER is not None:
        result.keys = _WORKER_KEYER.keys(result.kept)
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

    def drop(self, reason: str, count: int, examples: list[str]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        kept_examples = self.examples.setdefault(reason, [])
        for text in examples[: DROP_EXAMPLES_PER_REASON - len(kept_examples)]:
            kept_examples.append(text[:DROP_EXAMPLE_CHARS])


def _iter_raw_documents(config: DataConfig, stats: ReadStats, files: list[Path]) -> Iterator[str]:
    # Blocks of at most max_chars let worker batches stay small and evenly sized on books without blank lines.
    block_chars = config.max_chars if config.split_long_documents else config.max_doc_chars
    options = SourceOptions(text_field=config.text_field, text_unit=config.text_unit,
                            max_doc_chars=config.max_doc_chars, block_chars=block_chars, strict=config.strict)
    if config.source == "hf" and not files:
        documents = iter_hub_documents(hub_dataset(config), config.hf_streaming, stats, options)
    else:
        documents = iter_local_documents(files, stats, options)
    # islice pulls exactly max_documents, so the reader's counts stop there too.
    return itertools.islice(documents, config.max_documents)


def run_pass1(config: DataConfig, files: list[Path], spool_path: Path) -> FirstPass:
    state = FirstPass(config)
    cleaning = CleaningOptions(config.fix_unicode, config.remove_urls, config.remove_code_blocks)
    filters = FilterOptions(config.min_chars, config.max_chars, config.language, config.language_threshold,
                            config.language_sample_chars, config.max_symbol_ratio, config.min_mean_word_length,
                            config.max_mean_word_length, config.min_stop_words)
    dedup = (config.exact_dedup, config.near_dedup, config.minhash_num_perm, config.minhash_bands,
             config.shingle_size) if config.exact_dedup or config.near_dedup else None
    options = _WorkerOptions(cleaning, filters, config.max_chars if config.split_long_documents else None, dedup)
    index = DuplicateIndex() if dedup else None
    total_bytes = sum(f.stat().st_size for f in files) or None
    batches = batched(_iter_raw_documents(config, state.read, files), config.batch_documents)
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="clean/filter/dedup", mininterval=1.0)
    with open(spool_path, "wb") as spool, _worker_map(config.num_workers, options) as mapper:
        for result in mapper(_clean_and_filter, batches):
            _absorb(state, result)
            kept = _dedup(state, result, index)
            for text in kept:
                _spool_write(spool, state, text)
            progress.update(state.read.bytes_read - progress.n)
            progress.set_postfix(docs=state.read.documents, kept=state.counts["kept"], refresh=False)
    progress.close()
    return state


class _worker_map:  # noqa: N801 - used as a context manager factory
    """`imap` over a process pool (order-preserving, so output is deterministic) or in-process when 0 workers."""

    def __init__(self, workers: int, options: _WorkerOptions) -> None:
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


def _absorb(state: FirstPass, result: _BatchResult) -> None:
    state.counts["pieces"] += result.pieces
    state.counts["after_filters"] += len(result.kept)
    state.timer.add("clean", result.clean_seconds)
    state.timer.add("filter", result.filter_seconds)
    state.timer.add("dedup_keys", result.dedup_keys_seconds)
    for reason, count in result.dropped.items():
        state.drop(reason, count, result.examples.get(reason, []))


def _dedup(state: FirstPass, result: _BatchResult, index: DuplicateIndex | None) -> list[str]:
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


def _spool_write(spool, state: FirstPass, text: str) -> None:
    data = text.encode("utf-8")
    spool.write(_LENGTH.pack(len(data)))
    spool.write(data)
    split_key, sample_key = _doc_keys(text, state.config.seed)
    state.split_keys.append(split_key)
    state.sample_keys.append(sample_key)
    state.counts["kept"] += 1
    state.kept_chars += len(text)
    state.kept_bytes += len(data)


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
