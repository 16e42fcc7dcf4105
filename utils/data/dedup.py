"""Deduplication: exact (SHA256 of normalised text) and near-duplicate (MinHash-LSH over word 5-grams).

Each document gets 64-bit keys: the first 64 bits of its exact key, and one key per LSH band (the band's MinHash
rows folded together). A document is a duplicate when one of its keys equals that of any earlier document: exact
when the exact key matches, near when a band key does. That rule needs no candidate verification and no clustering,
so the in-memory index below (sorted uint64 runs, 8 bytes per key) and the datatrove engine's sorted bucket files on
disk (utils/data/engine_steps.py) give the same kept documents. Signatures are datasketch's "affine32" scheme
computed in numpy over xxh32 shingle hashes: bit-identical to `MinHash.bulk(..., hashfunc=xxh32_intdigest)` (a test
holds us to it) but about twice as fast, because the permutations run once per batch.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash
from datasketch import MinHash

MINHASH_SEED = 1  # datasketch's default seed: keeps our signatures comparable with MinHash(...) objects
# LSH bands of the 128 permutations: 16 bands of 8 rows catch a pair at Jaccard 0.8 with probability 0.947 (0.82,
# one word changed in a ~55-word document: 0.974) and one at 0.5 with 0.06. datasketch's own choice for a 0.8
# threshold (9 bands of 13, minimising the area under both error curves) caught a pair at 0.8 with only 0.40.
DEFAULT_BANDS = 16
SCHEME = "affine32"
BAND_KEY_SEED = 20261202  # fixes the band-key multipliers: keys must agree across processes, runs and engines
# Bits per dedup key. The in-memory index tags each key with its column in the bits above (up to MAX_COLUMNS), and
# the datatrove engine's bucket reader stops at keys >= 2^61 - 1. Two distinct documents share a key with
# probability 2^-58: over 10M documents, a false exact duplicate somewhere with probability ~2e-4.
KEY_BITS = 58
MAX_COLUMNS = 1 << (64 - KEY_BITS)
# Shingles per numpy step: a 2048 x 128 uint32 matrix (1 MB) stays in cache, which measured 3-4x
# faster than 64K-row steps on a 2-core machine.
SHINGLES_PER_STEP = 2048
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def exact_key(text: str) -> bytes:
    """SHA256 of the text with case and whitespace folded: copies differing only in layout are exact dups."""
    normalised = " ".join(text.lower().split())
    return hashlib.sha256(normalised.encode("utf-8")).digest()


def shingles(text: str, size: int) -> list[bytes]:
    """Word n-grams of lower-cased words; a text shorter than `size` words is one shingle."""
    words = _WORD_RE.findall(text.lower())
    if len(words) <= size:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)]


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


class MinHasher:
    """Batch MinHash signatures with datasketch's permutations for (num_perm, seed, affine32)."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5) -> None:
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.permutations = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=SCHEME).permutations
        self._a = self.permutations[0][np.newaxis, :]
        self._b = self.permutations[1][np.newaxis, :]
        self._buffer = np.empty((SHINGLES_PER_STEP, num_perm), dtype=np.uint32)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        group: list[int] = []
        group_hashes: list[np.ndarray] = []
        group_size = 0
        for i, text in enumerate(texts):
            hashes = np.fromiter((xxhash.xxh32_intdigest(s) for s in shingles(text, self.shingle_size)),
                                 dtype=np.uint32)
            if len(hashes) > SHINGLES_PER_STEP:
                out[i] = self._long_signature(hashes)
                continue
            if group_size + len(hashes) > SHINGLES_PER_STEP:
                self._reduce_group(group, group_hashes, out)
                group, group_hashes, group_size = [], [], 0
            group.append(i)
            group_hashes.append(hashes)
            group_size += len(hashes)
        if group:
            self._reduce_group(group, group_hashes, out)
        return out

    def _permute(self, hashes: np.ndarray) -> np.ndarray:
        hv = _fmix32(hashes)[:, np.newaxis]
        permuted = self._buffer[: len(hashes)]
        np.multiply(hv, self._a, out=permuted)  # uint32 wraparound is the scheme's mod 2^32
        np.add(permuted, self._b, out=permuted)
        return permuted

    def _reduce_group(self, group: list[int], group_hashes: list[np.ndarray], out: np.ndarray) -> None:
        starts = np.cumsum([0] + [len(h) for h in group_hashes[:-1]])
        out[group] = np.minimum.reduceat(self._permute(np.concatenate(group_hashes)), starts, axis=0)

    def _long_signature(self, hashes: np.ndarray) -> np.ndarray:
        signature = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(hashes), SHINGLES_PER_STEP):
            np.minimum(signature, self._permute(hashes[start:start + SHINGLES_PER_STEP]).min(axis=0), out=signature)
        return signature


def detection_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that LSH makes a pair with this Jaccard similarity a candidate: some band agrees in all rows."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def exact_keys(texts: Sequence[str]) -> np.ndarray:
    """Each text's exact_key cut to KEY_BITS, as uint64."""
    shift = 64 - KEY_BITS
    return np.array([int.from_bytes(exact_key(text)[:8], "little") >> shift for text in texts], dtype=np.uint64)


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) uint64 of KEY_BITS: each LSH band's rows folded into one key (random odd multipliers, then
    murmur3's finaliser). Documents share a band key when the band's rows agree, otherwise with probability
    2^-KEY_BITS."""
    n, num_perm = signatures.shape
    rows = num_perm // bands
    words = signatures.reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _fmix64((words * _band_multipliers(rows)).sum(axis=2, dtype=np.uint64)) >> np.uint64(64 - KEY_BITS)


@functools.cache
def _band_multipliers(rows: int) -> np.ndarray:
    odd = np.random.default_rng(BAND_KEY_SEED).integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2)
    return odd + np.uint64(1)


def _fmix64(h: np.ndarray) -> np.ndarray:
    s, m1, m2 = np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> s)) * m1
        h = (h ^ (h >> s)) * m2
        return h ^ (h >> s)


@dataclass(frozen=True)
class DedupKeys:
    """What dedup compares: one row per document, one column per key (KEY_BITS each): the exact key first when exact
    dedup is on, then one per LSH band when near dedup is on. The in-memory index and the datatrove engine's bucket
    files (one per column) hold exactly these."""

    matrix: np.ndarray  # (n, columns) uint64
    exact: bool  # column 0 is the exact key

    def __len__(self) -> int:
        return len(self.matrix)

    def take(self, rows: Sequence[int] | np.ndarray) -> DedupKeys:
        return DedupKeys(self.matrix[rows], self.exact)

    def reasons(self, seen: np.ndarray) -> list[str | None]:
        """Per row, from the (n, columns) mask of keys an earlier document had: the drop reason, or None."""
        exact = seen[:, 0] if self.exact else np.zeros(len(seen), dtype=bool)
        near = seen[:, 1 if self.exact else 0:].any(axis=1)
        return ["exact_duplicate" if e else "near_duplicate" if n else None for e, n in zip(exact, near)]


class DedupKeyer:
    """Texts -> DedupKeys with stage 01's settings (runs in the workers: hashing is most of dedup's CPU)."""

    def __init__(self, exact: bool, near: bool, num_perm: int = 128, bands: int = DEFAULT_BANDS,
                 shingle_size: int = 5) -> None:
        if bands < 1 or num_perm % bands:
            raise ValueError(f"minhash_bands {bands} must divide minhash_num_perm {num_perm}")
        if bands + 1 > MAX_COLUMNS:
            raise ValueError(f"minhash_bands {bands} exceeds {MAX_COLUMNS - 1}")
        self.exact, self.bands = exact, bands if near else 0
        self.hasher = MinHasher(num_perm, shingle_size) if near else None

    @property
    def columns(self) -> int:
        return int(self.exact) + self.bands

    def keys(self, texts: Sequence[str]) -> DedupKeys:
        columns = [exact_keys(texts)[:, np.newaxis]] if self.exact else []
        if self.hasher is not None:
            columns.append(band_keys(self.hasher.signatures(texts), self.bands))
        matrix = np.hstack(columns) if columns else np.empty((len(texts), 0), dtype=np.uint64)
        return DedupKeys(matrix, self.exact)


class SortedKeySet:
    """A growing set of uint64 keys held as sorted runs that merge like a binary counter (at most log2(n) runs):
    vectorised membership and insertion at 8 bytes per key."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self.runs)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        order = np.argsort(keys)
        needles = keys[order]  # sorted needles: each binary search starts where the previous one ended
        found = np.zeros(len(keys), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, needles), len(run) - 1)
            found |= run[at] == needles
        result = np.empty_like(found)
        result[order] = found
        return result

    def add(self, keys: np.ndarray) -> None:
        """Adds keys that are not in the set yet and distinct among themselves (runs stay disjoint)."""
        run = np.sort(keys)
        while self.runs and len(self.runs[-1]) <= 2 * len(run):
            run = np.concatenate([self.runs.pop(), run])
            run.sort(kind="stable")  # timsort: merging two sorted runs is linear
        self.runs.append(run)


def earlier_in_batch(keys: np.ndarray) -> np.ndarray:
    """Per position, whether the same key occurs at an earlier position of the batch."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    repeat = np.zeros(len(keys), dtype=bool)
    repeat[order[1:]] = ordered[1:] == ordered[:-1]  # stable: the first occurrence sorts first
    return repeat


class DuplicateIndex:
    """Streaming dedup in memory. A document is a duplicate when its exact key, or any of its band keys, equals
    that key of any earlier document (kept or not): `classify` names the reason per document. The datatrove engine
    applies the same rule to sorted bucket files on disk, so both give the same kept documents. All columns share
    one SortedKeySet, each key tagged with its column in the bits above KEY_BITS."""

    def __init__(self) -> None:
        self.keys = SortedKeySet()
        self.documents = 0

    def __len__(self) -> int:
        return self.documents

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes

    def classify(self, keys: DedupKeys) -> list[str | None]:
        columns = np.arange(keys.matrix.shape[1], dtype=np.uint64) << np.uint64(KEY_BITS)
        tagged = (keys.matrix | columns).ravel()
        seen = self.keys.contains(tagged) | earlier_in_batch(tagged)
        self.keys.add(tagged[~seen])
        self.documents += len(keys)
        return keys.reasons(seen.reshape(keys.matrix.shape))
