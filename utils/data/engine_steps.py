"""Stage 01's own steps in datatrove pipelines (the engine of utils/data/engine.py).

FilterStep runs stage 01's reader, cleaning, filters and dedup keys (the very functions of the local engine) on one
task's share of the input, and writes what datatrove's MinhashDedupBuckets reads: per key column, sorted bucket
files of (key, document index) records. DropsStep turns the duplicate pairs MinhashDedupBuckets finds into the
documents to drop, by the same rule as the in-memory index: a document whose key equals that of an earlier
document. Each task also leaves its kept documents (a spool) and its counts (JSON) for the assembly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig

from utils.core.artifacts import read_json, write_json
from utils.data.config import DataConfig
from utils.data.dedup import DedupKeys
from utils.data.pipeline import FirstPass, batched, clean_and_filter, raw_documents, spool_write, worker_options
from utils.data.sources import MAX_BAD_RECORD_EXAMPLES, ReadStats

SIGNATURE_SUFFIX = ".minhash.sig"  # what MinhashDedupBuckets lists in each bucket folder
CHUNK_SPAN = 10_000  # a bucket file's stem is rank * CHUNK_SPAN + chunk: listing order is input order
RECORD = np.dtype([("key", "<u8"), ("doc", "<u4")])  # MinhashDedupBuckets' record for one 64-bit hash per bucket
PAIR = np.dtype("<u4")  # a .dups record: file stem, document, file stem, document
SENTINEL = (1 << 32) - 1  # a pair's side that comes from an index (we use none)
# Bytes a buffered document costs a FilterStep per key column: the key, its index, and the sort's order array.
BYTES_PER_KEY = 8 + 4 + 8


def bucket_config(columns: int) -> MinhashConfig:
    """One datatrove bucket per key column, one 64-bit hash per bucket: our keys as they are."""
    return MinhashConfig(num_buckets=columns, hashes_per_bucket=1, hash_config=HashConfig(precision=64))


def rank_files(work: Path, rank: int) -> tuple[Path, Path]:
    """A FilterStep's outputs: its filtered documents (spool) and its counts."""
    return work / "filtered" / f"{rank:05d}.spool", work / "filtered" / f"{rank:05d}.json"


def drops_file(work: Path, rank: int) -> Path:
    return work / "drops" / f"{rank:05d}.npz"


class KeyChunkWriter:
    """Buffers a task's dedup keys and writes them as sorted bucket files, a chunk whenever `chunk_documents` are
    buffered: the memory a task holds for dedup is bounded by the chunk, not by its input."""

    def __init__(self, folder: Path, rank: int, columns: int, chunk_documents: int) -> None:
        self.folder, self.rank, self.columns, self.chunk_documents = folder, rank, columns, chunk_documents
        self.pending: list[np.ndarray] = []
        self.buffered = self.documents = self.chunks = self.peak_bytes = 0
        for column in range(columns):  # what an earlier, killed attempt of this task left
            (folder / f"bucket_{column:03d}").mkdir(parents=True, exist_ok=True)
            for stale in (folder / f"bucket_{column:03d}").glob(f"{rank:05d}*{SIGNATURE_SUFFIX}"):
                stale.unlink()

    def add(self, keys: DedupKeys) -> None:
        if self.buffered + len(keys) > self.chunk_documents:  # flush first: a chunk stays within its size
            self.flush()
        self.pending.append(keys.matrix)
        self.buffered += len(keys)

    def flush(self) -> None:
        if not self.buffered:
            return
        if self.chunks >= CHUNK_SPAN:
            raise ValueError(f"task {self.rank} needs more than {CHUNK_SPAN} dedup chunks: raise --memory_budget_gb "
                             f"or --tasks")
        matrix = np.concatenate(self.pending)
        self.peak_bytes = max(self.peak_bytes, len(matrix) * self.columns * BYTES_PER_KEY)
        docs = np.arange(self.documents, self.documents + len(matrix), dtype=np.uint32)
        stem = self.rank * CHUNK_SPAN + self.chunks
        for column in range(self.columns):
            order = np.lexsort((docs, matrix[:, column]))  # by key, then input order: the pair order it needs
            records = np.empty(len(matrix), dtype=RECORD)
            records["key"], records["doc"] = matrix[order, column], docs[order]
            records.tofile(self.folder / f"bucket_{column:03d}" / f"{stem:09d}{SIGNATURE_SUFFIX}")
        self.documents += len(matrix)
        self.chunks += 1
        self.pending, self.buffered = [], 0


class FilterStep(PipelineStep):
    """Read -> clean -> split -> filter -> dedup keys for one task's input files (or its shard of a hub dataset)."""

    name = "read, clean, filter, dedup keys"
    type = "Lumi stage 01"

    def __init__(self, config: DataConfig, units: list[list[str]], work: str, columns: int,
                 chunk_documents: int) -> None:
        super().__init__()
        self.config, self.units, self.work = config, units, work
        self.columns, self.chunk_documents = columns, chunk_documents

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        work = Path(self.work)
        spool_path, counts_path = rank_files(work, rank)
        spool_path.parent.mkdir(parents=True, exist_ok=True)
        state = FirstPass(self.config)
        options = worker_options(self.config)
        keyer = options.keyer()
        keys = KeyChunkWriter(work / "keys", rank, self.columns, self.chunk_documents) if keyer else None
        files = [Path(path) for path in self.units[rank]]
        shard = (world_size, rank) if not files else None
        with open(spool_path, "wb") as spool:
            documents = raw_documents(self.config, state.read, files, shard)
            for batch in batched(documents, self.config.batch_documents):
                result = clean_and_filter(batch, options, keyer)
                state.absorb(result)
                for text in result.kept:
                    spool_write(spool, text)
                if keys is not None and result.keys is not None:
                    keys.add(result.keys)
                self.stat_update("documents_read", value=len(batch))
        if keys is not None:
            keys.flush()
        write_json(counts_path, {"read": dataclasses.asdict(state.read), "counts": state.counts,
                                 "dropped": state.dropped, "examples": state.examples, "seconds": state.timer.seconds,
                                 "key_chunks": keys.chunks if keys else 0,
                                 "peak_key_bytes": keys.peak_bytes if keys else 0})


def merge_counts(state: FirstPass, path: Path) -> int:
    """Adds a FilterStep's counts to the assembly's state (in rank order: drop examples stay the first ones in input
    order) and returns how many documents it kept."""
    saved = read_json(path)
    read = ReadStats(**saved["read"])
    state.read.files += [name for name in read.files if name not in state.read.files]  # a hub split, once
    state.read.documents += read.documents
    state.read.bytes_read += read.bytes_read
    state.read.capped += read.capped
    for reason, count in read.skipped.items():
        state.read.skipped[reason] = state.read.skipped.get(reason, 0) + count
        known = state.read.skipped_examples.setdefault(reason, [])
        known += read.skipped_examples.get(reason, [])[: MAX_BAD_RECORD_EXAMPLES - len(known)]
    for name in ("pieces", "after_filters"):
        state.counts[name] += saved["counts"][name]
    for reason, count in saved["dropped"].items():
        state.drop(reason, count, saved["examples"].get(reason, []))
    for name, seconds in saved["seconds"].items():
        state.timer.add(name, seconds)
    return saved["counts"]["after_filters"]


def chunk_summary(work: Path, tasks: int) -> dict[str, int]:
    """How the FilterSteps held their dedup keys: chunk files written, and the most one task buffered."""
    saved = [read_json(rank_files(work, rank)[1]) for rank in range(tasks)]
    return {"key_chunks": sum(s["key_chunks"] for s in saved),
            "peak_key_bytes_per_task": max(s["peak_key_bytes"] for s in saved)}


class DropsStep(PipelineStep):
    """One task: the duplicate pairs of every bucket -> per FilterStep task, the sorted indices of the documents to
    drop as exact or near duplicates. A pair's second document is the later one (the buckets are merged in input
    order), and every document but the first of a run of equal keys is some pair's second."""

    name = "duplicate pairs -> documents to drop"
    type = "Lumi stage 01"

    def __init__(self, work: str, tasks: int, exact: bool) -> None:
        super().__init__()
        self.work, self.tasks, self.exact = work, tasks, exact

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        work = Path(self.work)
        exact: list[np.ndarray] = []
        near: list[np.ndarray] = []
        for path in sorted((work / "dups").glob("*.dups")):
            pairs = np.fromfile(path, dtype=PAIR).reshape(-1, 4)
            later = pairs[pairs[:, 0] != SENTINEL][:, 2:]
            (exact if self.exact and int(path.name[:5]) == 0 else near).append(later)
            self.stat_update("duplicate_pairs", value=len(pairs))
        exact_all = _by_rank(exact)
        near_all = _by_rank(near)
        drops_file(work, 0).parent.mkdir(parents=True, exist_ok=True)
        for task in range(self.tasks):
            exact_docs = exact_all.get(task, np.empty(0, dtype=np.uint32))
            near_docs = np.setdiff1d(near_all.get(task, np.empty(0, dtype=np.uint32)), exact_docs)
            with open(drops_file(work, task), "wb") as fh:
                np.savez(fh, exact=exact_docs, near=near_docs)


def _by_rank(parts: list[np.ndarray]) -> dict[int, np.ndarray]:
    """(file stem, document) rows -> per task, its sorted unique document indices."""
    if not parts:
        return {}
    rows = np.concatenate(parts)
    ranks = rows[:, 0] // CHUNK_SPAN
    return {int(task): np.unique(rows[ranks == task, 1]) for task in np.unique(ranks)}
