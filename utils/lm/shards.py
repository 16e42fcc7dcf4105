"""Binary token shards: a 256-byte header then raw uint16 (uint32 when vocab > 65535) tokens, read with np.memmap.

Header: magic b"LUMITOK1", format version, bytes per token, token count, raw tokenizer sha256. The count and
the tokenizer hash make a truncated shard or a shard from another tokenizer an error at load time, not a
silently wrong training run.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from utils.core.errors import DataError

MAGIC = b"LUMITOK1"
FORMAT_VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQ32s")  # magic, version, bytes per token, token count, tokenizer sha256
UINT16_VOCAB_LIMIT = 1 << 16
HASH_CHUNK_BYTES = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= UINT16_VOCAB_LIMIT else np.dtype(np.uint32)


class ShardWriter:
    """Append token arrays to `<prefix>_NNNNN.bin` files, starting a new shard every `shard_tokens` tokens."""

    def __init__(self, directory: Path, prefix: str, vocab_size: int, tokenizer_sha256: str, shard_tokens: int):
        self.directory = directory
        self.prefix = prefix
        self.dtype = token_dtype(vocab_size)
        self.tokenizer_sha = bytes.fromhex(tokenizer_sha256)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._fh: BinaryIO | None = None
        self._count = 0
        self._documents = 0

    def write_document(self, tokens: np.ndarray) -> None:
        """Documents are never split across shards, so each shard is a self-contained token stream."""
        if self._fh is None or self._count >= self.shard_tokens:
            self._open_next()
        assert self._fh is not None
        self._fh.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self._count += len(tokens)
        self._documents += 1

    def _open_next(self) -> None:
        self._close_current()
        path = self.directory / f"{self.prefix}_{len(self.shards):05d}.bin"
        self._fh = open(path, "wb")
        self._fh.write(b"\0" * HEADER_BYTES)  # rewritten with the final count on close
        self.shards.append({"file": path.name})
        self._count = self._documents = 0

    def _close_current(self) -> None:
        if self._fh is None:
            return
        self._fh.seek(0)
        self._fh.write(_HEADER.pack(MAGIC, FORMAT_VERSION, self.dtype.itemsize, self._count, self.tokenizer_sha))
        self._fh.close()
        self._fh = None
        path = self.directory / self.shards[-1]["file"]
        self.shards[-1].update(tokens=self._count, documents=self._documents, sha256=file_sha256(path))

    def close(self) -> list[dict]:
        """Finish the last shard; a split with no documents still gets one empty shard so readers find it."""
        if self._fh is None and not self.shards:
            self._open_next()
        self._close_current()
        return self.shards


def read_shard(path: Path, expected_tokenizer_sha256: str | None = None) -> np.ndarray:
    """Memory-map a shard's tokens after checking its header against the file size and the tokenizer."""
    if not path.is_file():
        raise DataError(f"token shard not found: {path}")
    with open(path, "rb") as fh:
        header = fh.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise DataError(f"{path}: truncated header ({len(header)} of {HEADER_BYTES} bytes)")
    magic, version, itemsize, count, sha = _HEADER.unpack_from(header)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise DataError(f"{path}: not a Lumi token shard (magic {magic!r}, version {version})")
    expected_size = HEADER_BYTES + count * itemsize
    if path.stat().st_size != expected_size:
        raise DataError(f"{path}: size {path.stat().st_size} bytes, header says {expected_size}: the shard is "
                        f"truncated or corrupt; re-run 01_prepare_data.py with --force")
    if expected_tokenizer_sha256 is not None and sha.hex() != expected_tokenizer_sha256:
        raise DataError(f"{path}: tokenized with tokenizer {sha.hex()[:12]}, expected "
                        f"{expected_tokenizer_sha256[:12]} (vocab mismatch)")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
