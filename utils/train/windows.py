"""Training data from stage 01's shards: fixed-length windows in an order that is a pure function of (seed, epoch).

A training position is a global sample index, so resuming at step k means computing the indices of step k:
nothing is replayed and nothing is skipped, whatever the batch size history of the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.core.artifacts import read_json
from utils.core.errors import DataError
from utils.lm.shards import read_shard

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    tokenizer_dir: Path
    tokenizer_sha256: str
    vocab_size: int
    bos_id: int
    eos_id: int
    max_length: int
    train_tokens: int
    val_tokens: int


def load_dataset_info(data_path: Path) -> DatasetInfo:
    manifest_path = data_path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(f"{data_path} is not a prepared dataset ({MANIFEST_NAME} missing). Run stage 01 first: "
                        f"make prepare-demo, or python scripts/01_prepare_data.py --config_path …")
    manifest = read_json(manifest_path)
    tokenizer = manifest["tokenizer"]
    return DatasetInfo(path=data_path, tokenizer_dir=data_path / tokenizer["path"],
                       tokenizer_sha256=tokenizer["sha256"], vocab_size=tokenizer["vocab_size"],
                       bos_id=tokenizer["bos_id"], eos_id=tokenizer["eos_id"], max_length=manifest["max_length"],
                       train_tokens=manifest["splits"]["train"]["tokens"],
                       val_tokens=manifest["splits"]["val"]["tokens"])


class TokenWindows:
    """Non-overlapping windows of `length + 1` tokens (inputs and shifted targets) over one split's shards.

    Shards stay memory-mapped (a corpus need not fit in RAM); windows never straddle two shards.
    """

    def __init__(self, info: DatasetInfo, split: str, length: int) -> None:
        manifest = read_json(info.path / MANIFEST_NAME)
        self.shards = [read_shard(info.path / s["file"], info.tokenizer_sha256)
                       for s in manifest["splits"][split]["shards"]]
        self.length = length
        per_shard = [max(0, (len(tokens) - 1) // length) for tokens in self.shards]
        self._starts = np.cumsum([0] + per_shard)
        self.num_windows = int(self._starts[-1])
        if self.num_windows < 1:
            total = sum(len(t) for t in self.shards)
            raise DataError(f"the {split} split of {info.path} has {total} tokens, fewer than one sequence of "
                            f"max_length {length} + 1; lower --max_length or prepare more data")

    def window(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        start = (index - int(self._starts[shard])) * self.length
        return self.shards[shard][start:start + self.length + 1]

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.window(int(i)) for i in indices]).astype(np.int64))


class SampleOrder:
    """Global sample index -> window index: a fresh seeded permutation per epoch."""

    def __init__(self, num_windows: int, seed: int) -> None:
        self.num_windows = num_windows
        self.seed = seed
        self._epoch = -1
        self._permutation = np.empty(0, dtype=np.int64)

    def epoch_of(self, sample_index: int) -> int:
        return sample_index // self.num_windows

    def window_indices(self, start: int, count: int) -> np.ndarray:
        return np.array([self._window(start + i) for i in range(count)], dtype=np.int64)

    def _window(self, sample_index: int) -> int:
        epoch, offset = divmod(sample_index, self.num_windows)
        if epoch != self._epoch:
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._epoch = epoch
        return int(self._permutation[offset])
