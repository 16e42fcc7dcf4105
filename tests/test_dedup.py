"""Dedup: signatures bit-identical to datasketch's MinHash.bulk; exact and near duplicates caught, others kept."""

from __future__ import annotations

import numpy as np
import xxhash
from datasketch import MinHash

from tests.conftest import story_texts
from utils.dedup import SHINGLES_PER_STEP, MinHasher, NearDuplicateIndex, exact_key, shingles


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
    near_copy = base.replace(".", "!", 1)  # one character differs: Jaccard well above 0.8
    index = NearDuplicateIndex(num_perm=128, threshold=0.8)
    first = index.add_batch([base] + stories[5:20])
    second = index.add_batch([near_copy] + stories[20:])
    assert first == [False] * 16  # distinct stories are kept
    assert second[0] is True and not any(second[1:])
    assert len(index) == 16 + len(stories[20:])


def test_duplicate_within_one_batch_is_caught() -> None:
    text = " ".join(story_texts(5, seed=9))
    assert NearDuplicateIndex().add_batch([text, text + " The end."]) == [False, True]
