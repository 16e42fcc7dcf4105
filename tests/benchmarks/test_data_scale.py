"""The scale corpus of `make bench-data`: distinct to the deduplication across copies, planted copies detected, and
the process-tree memory sampler sees what a child allocates."""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from pathlib import Path

from utils.benchmarks.data_scale import (
    PLANT_EVERY,
    SCALE_PARTS,
    TreeMemorySampler,
    near_duplicate_flags,
    prose_pieces,
    scale_texts,
    write_scale_corpus,
)
from utils.data.config import DataConfig
from utils.data.dedup import shingles

WORDS = ("the of and a to in he she was it that his her with as had for on at by not but from they you said "
         "when which one all were there would this their what so up out if about into time could no than then "
         "some its only over other like more after very these our two may first any new where most must").split()
CHILD_BYTES = 200 * 2**20


def _books(directory: Path, count: int = 2, words: int = 12_000) -> list[Path]:
    rng = random.Random(5)
    paths = []
    for index in range(count):
        path = directory / f"book_{index}.txt"
        path.write_text(" ".join(rng.choice(WORDS) + str(rng.randrange(500)) for _ in range(words)))
        paths.append(path)
    return paths


def test_copies_are_distinct_and_the_planted_copies_are_near_duplicates(tmp_path: Path) -> None:
    books = _books(tmp_path)
    pieces = prose_pieces(books)
    assert all(len(" ".join(p)) >= 300 for p in pieces[:-1])
    corpus = write_scale_corpus(books, tmp_path / "scale", copies=2)
    parts = sorted(Path(corpus.path).glob("*.jsonl"))
    assert len(parts) == SCALE_PARTS
    texts = [json.loads(line)["text"] for part in parts for line in part.read_text().splitlines()]
    assert list(scale_texts(corpus)) == texts
    assert corpus.distinct == 2 * len(pieces) == len(texts) - corpus.planted
    assert corpus.planted == 2 * len(range(0, len(pieces), PLANT_EVERY))
    assert sorted(texts[0].split()) == sorted(texts[len(pieces)].split()) and texts[0] != texts[len(pieces)]
    first, its_copy, its_plant = texts[0], texts[len(pieces)], texts[corpus.distinct]
    assert _jaccard(first, its_copy) < 0.05  # another copy's reordering shares (almost) no 5-grams
    assert 0.75 < _jaccard(first, its_plant) < 1.0  # one word in ~55 changed
    recall, lost = near_duplicate_flags(corpus, DataConfig(name="t"))
    assert lost == 0 and 0.0 < recall <= 1.0


def _jaccard(a: str, b: str) -> float:
    sa, sb = set(shingles(a, 5)), set(shingles(b, 5))
    return len(sa & sb) / len(sa | sb)


def _hold_memory(ready: multiprocessing.Event, done: multiprocessing.Event) -> None:
    block = bytearray(CHILD_BYTES)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    ready.set()
    done.wait(10)


def test_the_tree_sampler_counts_a_child_process(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    with TreeMemorySampler() as sampler:
        child = context.Process(target=_hold_memory, args=(ready, done))
        child.start()
        assert ready.wait(60)
        time.sleep(0.6)  # a few samples while the child holds its memory
        done.set()
        child.join()
    assert sampler.peak_bytes >= CHILD_BYTES
