"""Dedup: signatures bit-identical to datasketch's MinHash.bulk; exact and near duplicates caught, others kept; the
near-duplicate threshold at its boundary (pairs at a measured shingle Jaccard of 0.70 kept, 0.90 dropped)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import xxhash
from datasketch import MinHash

from tests.conftest import story_texts
from utils.data.config import DataConfig
from utils.data.dedup import (
    SHINGLES_PER_STEP,
    MinHasher,
    NearDuplicateIndex,
    detection_probability,
    exact_key,
    shingles,
)

PAIRS = 20  # per Jaccard level: LSH is a probabilistic filter, so the boundary is judged on counts


def test_signatures_match_datasketch_bulk() -> None:
    long_doc = " ".join(story_texts(200))  # more shingles than one numpy step holds
    assert len(shingles(long_doc, 5)) > SHINGLES_PER_STEP
    docs = story_texts(50) + [long_doc, "tiny", ""]
    reference = MinHash.bulk([shingles(d, 5) for d in docs], num_perm=128, hashfunc=xxhash.xxh32_intdigest)
    ours = MinHasher(128, 5).signatures(docs)
    assert ours.dtype == np.uint32
    for ref, sig in zip(reference, ours):
        assert np.array_equal(ref.hashvalues, sig)


def test_exact_key_folds_case_and_whitespace() -> None:
    assert exact_key("Hello   World\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello there")


def test_near_duplicates_are_dropped_streaming() -> None:
    stories = story_texts(40, seed=3)
    base = " ".join(stories[:5])
    near_copy = base.replace(".", "!", 1)  # punctuation is not in word shingles: the shingle sets are equal
    assert jaccard(base, near_copy) == 1.0
    index = NearDuplicateIndex(num_perm=128, bands=16)
    first = index.add_batch([base] + stories[5:20])
    second = index.add_batch([near_copy] + stories[20:])
    assert first == [False] * 16  # distinct stories are kept
    assert second[0] is True and not any(second[1:])
    assert len(index) == 16 + len(stories[20:])


def test_index_defaults_are_stage_01_settings() -> None:
    defaults = inspect.signature(NearDuplicateIndex).parameters
    assert [defaults[name].default for name in ("num_perm", "bands", "shingle_size")] == \
        [DataConfig.minhash_num_perm, DataConfig.minhash_bands, DataConfig.shingle_size]


def test_duplicate_within_one_batch_is_caught() -> None:
    text = " ".join(story_texts(5, seed=9))
    assert NearDuplicateIndex().add_batch([text, text + " The end."]) == [False, True]


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of the shingle sets stage 01 hashes (word 5-grams)."""
    first, second = set(shingles(a, DataConfig.shingle_size)), set(shingles(b, DataConfig.shingle_size))
    return len(first & second) / len(first | second)


def replace_words(text: str, count: int) -> str:
    """`text` with `count` evenly spaced words replaced by words it does not contain."""
    words = text.split()
    for i in range(count):
        words[(2 * i + 1) * len(words) // (2 * count)] = f"novel{i}"
    return " ".join(words)


def variant_at(text: str, target: float) -> str:
    """The variant of `text` whose shingle Jaccard with it is closest to `target`."""
    candidates = [replace_words(text, count) for count in range(1, len(text.split()) // 10)]
    return min(candidates, key=lambda candidate: abs(jaccard(text, candidate) - target))


@pytest.mark.parametrize("target, least_dropped, most_dropped", [(0.50, 0, 4), (0.80, 16, PAIRS), (0.90, 19, PAIRS)])
def test_near_duplicate_detection_follows_the_bands(target: float, least_dropped: int, most_dropped: int) -> None:
    """Stage 01's 128 permutations in 16 bands of 8 make a pair a candidate with probability 0.06 at Jaccard 0.5
    (1.2 of 20 expected), 0.947 at 0.8 (18.9) and 0.9999 at 0.9 (20). The bands datasketch picks for a 0.8
    threshold (9 of 13) would drop only 8 of 20 at 0.8. The fixtures measure their own Jaccard: they cannot drift."""
    stories = story_texts(12 * PAIRS, seed=11)
    dropped = 0
    for pair in range(PAIRS):
        base = " ".join(stories[12 * pair:12 * (pair + 1)])
        variant = variant_at(base, target)
        assert jaccard(base, variant) == pytest.approx(target, abs=0.02)
        index = NearDuplicateIndex(DataConfig.minhash_num_perm, DataConfig.minhash_bands, DataConfig.shingle_size)
        first, second = index.add_batch([base, variant])
        assert first is False
        dropped += second
    assert least_dropped <= dropped <= most_dropped


def test_the_stated_detection_probabilities_and_the_bands_setting() -> None:
    assert detection_probability(0.8, 16, 8) == pytest.approx(0.947, abs=5e-4)
    assert detection_probability(0.5, 16, 8) == pytest.approx(0.061, abs=5e-4)
    assert detection_probability(0.8, 9, 13) == pytest.approx(0.399, abs=5e-4)  # datasketch's bands for 0.8
    index = NearDuplicateIndex()
    assert (index.bands, index.rows) == (16, 8) and (index.lsh.b, index.lsh.r) == (16, 8)
    with pytest.raises(ValueError, match="minhash_bands 12 must divide minhash_num_perm 128"):
        DataConfig(name="x", minhash_bands=12)
