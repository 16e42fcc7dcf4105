"""Token shards: header round trip, shard rollover, and loud failures on truncation or a foreign tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utils.core.errors import DataError
from utils.lm.shards import HEADER_BYTES, ShardWriter, read_shard, token_dtype

SHA = "ab" * 32


def test_round_trip_and_rollover(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "train", vocab_size=1000, tokenizer_sha256=SHA, shard_tokens=10)
    docs = [np.arange(i, i + 6) for i in range(5)]
    for doc in docs:
        writer.write_document(doc)
    shards = writer.close()
    assert [s["file"] for s in shards] == ["train_00000.bin", "train_00001.bin", "train_00002.bin"]
    assert [s["tokens"] for s in shards] == [12, 12, 6] and sum(s["documents"] for s in shards) == 5
    tokens = np.concatenate([read_shard(tmp_path / s["file"], SHA) for s in shards])
    assert tokens.dtype == np.uint16 and np.array_equal(tokens, np.concatenate(docs))


def test_uint32_for_large_vocab() -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_truncated_and_foreign_shards_fail(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "val", vocab_size=100, tokenizer_sha256=SHA, shard_tokens=100)
    writer.write_document(np.arange(20))
    path = tmp_path / writer.close()[0]["file"]
    with pytest.raises(DataError, match="vocab mismatch"):
        read_shard(path, "cd" * 32)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_shard(path)
    path.write_bytes(b"x" * HEADER_BYTES)
    with pytest.raises(DataError, match="not a Lumi token shard"):
        read_shard(path)


def test_empty_split_still_has_a_shard(tmp_path: Path) -> None:
    shards = ShardWriter(tmp_path, "val", 100, SHA, 100).close()
    assert shards[0]["tokens"] == 0 and len(read_shard(tmp_path / shards[0]["file"])) == 0
