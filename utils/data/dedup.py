"""Deduplication: exact (SHA256 of normalised text) then near-duplicate (MinHash-LSH over word 5-grams).

Near-dup detection streams: each batch of documents gets its signatures computed together, then every
document is queried against the index and inserted only if it has no match, so memory grows with the
sketches we keep, never with the corpus text. Signatures are datasketch's "affine32" scheme computed
in numpy over xxh32 shingle hashes: bit-identical to `MinHash.bulk(..., hashfunc=xxh32_intdigest)`
(a test holds us to it) but about twice as fast, because the permutations run once per batch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH

MINHASH_SEED = 1  # datasketch's default seed: keeps our signatures comparable with MinHash(...) objects
# LSH bands of the 128 permutations: 16 bands of 8 rows catch a pair at Jaccard 0.8 with probability 0.947 (0.82,
# one word changed in a ~55-word document: 0.974) and one at 0.5 with 0.06. datasketch's own choice for a 0.8
# threshold (9 bands of 13, minimising the area under both error curves) caught a pair at 0.8 with only 0.40.
DEFAULT_BANDS = 16
SCHEME = "affine32"
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


class NearDuplicateIndex:
    """Streaming MinHash-LSH: `add_batch` returns, per text, whether it near-duplicates an earlier kept text."""

    def __init__(self, num_perm: int = 128, bands: int = DEFAULT_BANDS, shingle_size: int = 5) -> None:
        if bands < 1 or num_perm % bands:
            raise ValueError(f"minhash_bands {bands} must divide minhash_num_perm {num_perm}")
        self.hasher = MinHasher(num_perm, shingle_size)
        self.bands, self.rows = bands, num_perm // bands
        self.lsh = MinHashLSH(num_perm=num_perm, params=(self.bands, self.rows))
        self._next_key = 0

    def __len__(self) -> int:
        return self._next_key

    def add_batch(self, texts: Sequence[str]) -> list[bool]:
        return self.add_signatures(self.hasher.signatures(texts))

    def add_signatures(self, signatures: np.ndarray) -> list[bool]:
        """add_batch for signatures computed elsewhere (stage 01's workers) with this index's MinHasher settings."""
        duplicate: list[bool] = []
        for row in signatures:
            sketch = LeanMinHash(seed=MINHASH_SEED, hashvalues=row, scheme=SCHEME)
            if self.lsh.query(sketch):
                duplicate.append(True)
                continue
            self.lsh.insert(self._next_key, sketch, check_duplication=False)
            self._next_key += 1
            duplicate.append(False)
        return duplicate
