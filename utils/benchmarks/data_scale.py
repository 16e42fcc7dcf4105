"""Stage 01 at scale, `make bench-data`'s scale rows: N distinct short documents cut from the mirror's prose, at 1x
and Nx, with planted near-duplicates, each run in a fresh process whose whole tree (the stage and its workers) is
sampled for memory.

Distinct means distinct to the deduplication too: every copy of the corpus has each document's words reordered by
its own seed, so no copy shares word 5-grams with another (stage 01 would drop copies of the same text, and memory
would then not grow with the input, which is not what a larger corpus does). One in PLANT_EVERY documents is
planted again at the end with PLANTED_WORD_CHANGE of its words replaced: the stage should drop exactly those, and
the recall is measured on them, document by document, by the stage's own near-duplicate index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from utils.benchmarks.common import KIB_PER_MIB, MB, run_in_fresh_process
from utils.core.artifacts import read_json
from utils.core.periodic import Periodic
from utils.data.config import DataConfig
from utils.data.dedup import DedupKeyer, DuplicateIndex

log = logging.getLogger(__name__)

SCALE_DOC_CHARS = 315  # a short web-like document, as in the measurement
PLANT_EVERY = 100  # 1 % of the distinct documents are planted once more as near-duplicates
PLANTED_WORD_CHANGE = 0.01  # of a planted copy's words replaced (at least one)
SCALE_SEED = 20261202
MEMORY_SAMPLE_S = 0.2
RECALL_BATCH = 2048
SCALE_PARTS = 8  # input files: the datatrove engine's filter tasks


@dataclass
class ScaleCorpus:
    path: str
    copies: int
    distinct: int
    planted: int
    bytes: int


@dataclass
class ScaleRun:
    """One fresh-process stage 01 run over a scale corpus, with the peak memory of its process tree."""

    corpus: ScaleCorpus
    wall_seconds: float
    peak_tree_mib: float
    stats: dict[str, Any]
    recall: float
    distinct_lost: int
    output_sha256: str  # of the output's manifest and shards: equal across engines when their outputs are

    @property
    def engine(self) -> str:
        return self.stats["engine"]["name"]

    @property
    def label(self) -> str:
        return f"{self.engine} {self.corpus.copies}x"


def prose_pieces(files: list[Path], chars: int = SCALE_DOC_CHARS) -> list[list[str]]:
    """The corpus cut into runs of whole words of at least `chars` characters."""
    pieces: list[list[str]] = []
    for path in sorted(files):
        words: list[str] = []
        length = 0
        for word in path.read_text(encoding="utf-8").split():
            words.append(word)
            length += len(word) + 1
            if length >= chars:
                pieces.append(words)
                words, length = [], 0
    return pieces


def _planted(words: list[str], rng: random.Random, vocabulary: list[str]) -> str:
    changed = list(words)
    for index in rng.sample(range(len(words)), max(1, round(PLANTED_WORD_CHANGE * len(words)))):
        changed[index] = rng.choice(vocabulary)
    return " ".join(changed)


def scale_documents(pieces: list[list[str]], copies: int) -> Iterator[tuple[str, bool]]:
    """(text, is_planted) for `copies` reorderings of every piece, then the planted near-duplicates."""
    vocabulary = sorted({word for piece in pieces[:1000] for word in piece})
    planted: list[list[str]] = []
    for copy in range(copies):
        rng = random.Random(SCALE_SEED + copy)
        for index, piece in enumerate(pieces):
            words = list(piece)
            rng.shuffle(words)
            if index % PLANT_EVERY == 0:
                planted.append(words)
            yield " ".join(words), False
    rng = random.Random(SCALE_SEED - 1)
    for words in planted:
        yield _planted(words, rng, vocabulary), True


def write_scale_corpus(files: list[Path], target: Path, copies: int) -> ScaleCorpus:
    """The corpus as SCALE_PARTS JSONL files of about equal document counts in `target`, a folder: one input, read
    in order, for the local engine; a task per file for the datatrove engine (the planted copies, at the end, then
    match documents of other tasks)."""
    pieces = prose_pieces(files)
    total = copies * (len(pieces) + len(range(0, len(pieces), PLANT_EVERY)))
    per_part = -(-total // SCALE_PARTS)
    target.mkdir(parents=True, exist_ok=True)
    distinct = planted = 0
    outs = [(target / f"part-{part:02d}.jsonl").open("w", encoding="utf-8") for part in range(SCALE_PARTS)]
    try:
        for index, (text, is_planted) in enumerate(scale_documents(pieces, copies)):
            outs[index // per_part].write(json.dumps({"text": text}) + "\n")
            planted += is_planted
            distinct += not is_planted
    finally:
        for out in outs:
            out.close()
    size = sum(path.stat().st_size for path in target.glob("*.jsonl"))
    return ScaleCorpus(str(target), copies, distinct, planted, size)


def scale_texts(corpus: ScaleCorpus) -> Iterator[str]:
    """The corpus's documents in input order."""
    for path in sorted(Path(corpus.path).glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def near_duplicate_flags(corpus: ScaleCorpus, config: DataConfig) -> tuple[float, int]:
    """(recall on the planted copies, distinct documents flagged) from the stage's own index on the corpus."""
    keyer = DedupKeyer(config.exact_dedup, config.near_dedup, config.minhash_num_perm, config.minhash_bands,
                       config.shingle_size)
    index = DuplicateIndex()
    flags: list[bool] = []
    batch: list[str] = []
    for text in scale_texts(corpus):
        batch.append(text)
        if len(batch) == RECALL_BATCH:
            flags += [reason is not None for reason in index.classify(keyer.keys(batch))]
            batch = []
    flags += [reason is not None for reason in index.classify(keyer.keys(batch))] if batch else []
    return sum(flags[corpus.distinct:]) / max(1, corpus.planted), sum(flags[:corpus.distinct])


class TreeMemorySampler(Periodic):
    """Peak of the summed proportional set size (PSS: shared pages counted once across the tree) of this process's
    descendants, sampled every MEMORY_SAMPLE_S in a thread while the block runs."""

    def __init__(self) -> None:
        super().__init__(self._sample, MEMORY_SAMPLE_S)
        self.peak_bytes = 0

    def _sample(self) -> None:
        total = 0
        for process in psutil.Process(os.getpid()).children(recursive=True):
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that ended between the listing and the read
        self.peak_bytes = max(self.peak_bytes, total)


def _prepare(config: DataConfig) -> None:
    from utils.data.prepare import prepare_dataset

    prepare_dataset(config)


def run_scale(corpus: ScaleCorpus, config: DataConfig) -> ScaleRun:
    log.info("stage 01 (%s engine) on %s (%.1f MB, %s distinct + %s planted documents), in a fresh process",
             config.engine, corpus.path, corpus.bytes / MB, f"{corpus.distinct:,}", f"{corpus.planted:,}")
    started = time.perf_counter()
    with TreeMemorySampler() as sampler:
        run_in_fresh_process(_prepare, (config,), f"scale run {config.name}")
    wall = time.perf_counter() - started
    out = Path(config.output_dir) / str(config.name)
    recall, lost = near_duplicate_flags(corpus, config)
    return ScaleRun(corpus, wall, sampler.peak_bytes / KIB_PER_MIB / 1024, read_json(out / "stats.json"), recall,
                    lost, output_sha256(out))


def output_sha256(out: Path) -> str:
    digest = hashlib.sha256()
    for path in [out / "manifest.json", *sorted(out.glob("*.bin"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()
