"""Dedup: signatures bit-identical to datasketch's MinHash.bulk; exact and near duplicates caught and named, others
kept; the near-duplicate threshold at its boundary (pairs at a measured shingle Jaccard of 0.70 kept, 0.90 dropped)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import xxhash
from datasketch import MinHash

from tests.conftest import story_texts
from utils.data.config import DataConfig
from utils.data.dedup import (
    KEY_BITS,
    SHINGLES_PER_STEP,
    DedupKeyer,
    DedupKeys,
    DuplicateIndex,
    MinHasher,
    SortedKeySet,
    band_keys,
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


class Dedup:
    """Stage 01's keyer and index together: add_batch returns each text's drop reason (None: kept)."""

    def __init__(self, exact: bool = True, near: bool = True) -> None:
        self.keyer = DedupKeyer(exact, near, DataConfig.minhash_num_perm, DataConfig.minhash_bands,
                                DataConfig.shingle_size)
        self.index = DuplicateIndex()

    def add_batch(self, texts: list[str]) -> list[str | None]:
        return self.index.classify(self.keyer.keys(texts))


def test_near_duplicates_are_dropped_streaming() -> None:
    stories = story_texts(40, seed=3)
    base = " ".join(stories[:5])
    near_copy = base.replace(".", "!", 1)  # punctuation is not in word shingles: the shingle sets are equal
    assert jaccard(base, near_copy) == 1.0
    dedup = Dedup()
    first = dedup.add_batch([base] + stories[5:20])
    second = dedup.add_batch([near_copy] + stories[20:])
    assert first == [None] * 16  # distinct stories are kept
    assert second == ["near_duplicate"] + [None] * len(stories[20:])
    assert len(dedup.index) == 16 + 1 + len(stories[20:])


def test_exact_duplicates_are_named_and_the_switches_hold() -> None:
    text = " ".join(story_texts(5, seed=9))
    batch = [text, "  " + text.upper(), text + " The end."]
    assert Dedup().add_batch(batch) == [None, "exact_duplicate", "near_duplicate"]
    assert Dedup(exact=False).add_batch(batch) == [None, "near_duplicate", "near_duplicate"]
    assert Dedup(near=False).add_batch(batch) == [None, "exact_duplicate", None]


def test_keyer_defaults_are_stage_01_settings() -> None:
    defaults = inspect.signature(DedupKeyer).parameters
    assert [defaults[name].default for name in ("num_perm", "bands", "shingle_size")] == \
        [DataConfig.minhash_num_perm, DataConfig.minhash_bands, DataConfig.shingle_size]


def test_duplicate_within_one_batch_is_caught() -> None:
    text = " ".join(story_texts(5, seed=9))
    assert Dedup().add_batch([text, text + " The end."]) == [None, "near_duplicate"]


def test_a_document_matching_only_a_dropped_one_is_dropped() -> None:
    """The rule is 'equal to any earlier document', not 'to a kept one': C shares a band only with B, which was
    dropped for sharing another band with A. The datatrove engine applies the same rule to its bucket files."""
    keys = DedupKeyer(False, True).keys(story_texts(3, seed=21)).matrix.copy()
    keys[1, 0] = keys[0, 0]
    keys[2, 1] = keys[1, 1]
    assert DuplicateIndex().classify(DedupKeys(keys, exact=False)) == [None, "near_duplicate", "near_duplicate"]
    index = DuplicateIndex()  # the same across batches
    assert [index.classify(DedupKeys(keys[i:i + 1], exact=False))[0] for i in range(3)] == \
        [None, "near_duplicate", "near_duplicate"]


def test_a_key_matches_only_its_own_column() -> None:
    keys = DedupKeyer(True, True).keys(story_texts(2, seed=4)).matrix.copy()
    keys[1, 2] = keys[0, 3]  # equal values in different bands are not a match
    assert DuplicateIndex().classify(DedupKeys(keys, exact=True)) == [None, None]
    keys[1, 0] = keys[0, 0]
    assert DuplicateIndex().classify(DedupKeys(keys, exact=True)) == [None, "exact_duplicate"]


def test_band_keys_depend_on_every_row_and_on_nothing_else() -> None:
    signatures = MinHasher(128, 5).signatures(story_texts(64, seed=5))
    keys = band_keys(signatures, 16)
    assert keys.shape == (64, 16) and keys.dtype == np.uint64 and int(keys.max()) < 2**KEY_BITS
    assert np.array_equal(keys, band_keys(signatures.copy(), 16))  # deterministic across calls
    assert len(np.unique(keys)) == keys.size
    changed = signatures.copy()
    changed[0, 13] += 1  # row 5 of band 1
    diff = band_keys(changed, 16) != keys
    assert diff[0].tolist() == [False, True] + [False] * 14 and not diff[1:].any()


def test_sorted_key_set_membership_across_merges() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**64 - 1, size=5000, dtype=np.uint64)
    store = SortedKeySet()
    for start in range(0, 4000, 100):
        store.add(keys[start:start + 100])
    assert len(store.runs) <= 6 and store.nbytes == 4000 * 8
    assert all(np.all(run[1:] > run[:-1]) for run in store.runs)
    assert store.contains(keys[:4000]).all() and not store.contains(keys[4000:]).any()


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
        first, second = Dedup().add_batch([base, variant])
        assert first is None
        dropped += second == "near_duplicate"
    assert least_dropped <= dropped <= most_dropped


def test_the_stated_detection_probabilities_and_the_bands_setting() -> None:
    assert detection_probability(0.8, 16, 8) == pytest.approx(0.947, abs=5e-4)
    assert detection_probability(0.5, 16, 8) == pytest.approx(0.061, abs=5e-4)
    assert detection_probability(0.8, 9, 13) == pytest.approx(0.399, abs=5e-4)  # datasketch's bands for 0.8
    keyer = DedupKeyer(True, True)
    assert keyer.bands == DataConfig.minhash_bands == 16 and keyer.keys(["one two three"]).matrix.shape == (1, 17)
    with pytest.raises(ValueError, match="minhash_bands 12 must divide minhash_num_perm 128"):
        DataConfig(name="x", minhash_bands=12)
