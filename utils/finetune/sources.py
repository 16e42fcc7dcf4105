"""Where the records of stages 03 and 04 come from: a .json list, .jsonl, either gzipped, a directory of such
files (read by the one row reader, utils/core/records.py), or a Hugging Face dataset id (network), read from the
LUMI_DATA_DIR mirror when that is set. Every record must be a JSON object; the hub ids the stages know are listed
here with their mirror layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import DataError
from utils.core.hub import PublicDataset, load_hub_split, mirror_matches, mirror_root
from utils.core.records import RECORD_SUFFIXES, is_record_file, read_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubDataset:
    split: str
    subset: str | None = None
    mirror: tuple[str, ...] = ()  # where a LUMI_DATA_DIR mirror keeps it, in the release's own format


# Hub ids the stages know; any other id is loaded with split "train" and its format detected like a file's.
SFT_HUB_DATASETS = {"tatsu-lab/alpaca": HubDataset("train", mirror=("alpaca/*.json",)),
                    "OpenAssistant/oasst1": HubDataset("train", mirror=("oasst1/*.jsonl.gz", "oasst1/*.jsonl")),
                    "databricks/databricks-dolly-15k": HubDataset("train", mirror=("dolly/*.jsonl",))}
DPO_HUB_DATASETS = {"Anthropic/hh-rlhf": HubDataset("train", mirror=("hh-rlhf/*/*.jsonl.gz",)),
                    "HuggingFaceH4/ultrafeedback_binarized": HubDataset(
                        "train_prefs", mirror=("ultrafeedback_binarized/*.jsonl", "ultrafeedback_binarized/*.parquet"))}


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and is_record_file(p))
    if not files:
        raise DataError(f"{path} holds no dataset files ({', '.join(RECORD_SUFFIXES)}, optionally .gz)")
    return files


def public_dataset(dataset_id: str, hub: HubDataset) -> PublicDataset:
    return PublicDataset(dataset_id, dataset_id, hub.subset, hub.split, hub.mirror)


def _load_hub(dataset_id: str, hub: HubDataset) -> list[dict[str, Any]]:
    """Rows of a hub dataset, or of its copy in the LUMI_DATA_DIR mirror when that is set."""
    dataset = public_dataset(dataset_id, hub)
    root = mirror_root()
    if root is None:
        try:
            return list(load_hub_split(dataset))
        except DataError as exc:
            raise DataError(f"{exc}\nOr pass a local file with --dataset_path (.json list, .jsonl or .jsonl.gz).") \
                from exc
    files = mirror_matches(dataset, root)
    if not files:
        where = " or ".join(hub.mirror) or "(no mirror layout is known for this id: pass a local --dataset_path)"
        raise DataError(f"{dataset_id} is not in the mirror LUMI_DATA_DIR={root}: expected {where}. Add it there, "
                        f"or unset LUMI_DATA_DIR to download it from the Hugging Face Hub.")
    log.info("%s: reading the mirror copy (%s)", dataset_id, ", ".join(str(f) for f in files))
    return [r for file in files for r in read_records(file)]


def _looks_like_hub_id(source: str) -> bool:
    """"owner/name" without a data-file suffix: a missing local file is reported as missing, not looked up."""
    return source.count("/") == 1 and not source.startswith((".", "/")) and not is_record_file(Path(source))


def load_records(source: str, known_hub: dict[str, HubDataset]) -> list[dict[str, Any]]:
    """Every record of a local file/directory, or of a Hugging Face dataset when `source` is not a local path."""
    path = Path(source)
    if path.exists():
        records = [r for file in _data_files(path) for r in read_records(file)]
    elif source in known_hub or _looks_like_hub_id(source):
        records = _load_hub(source, known_hub.get(source, HubDataset("train")))
    else:
        raise DataError(f"dataset not found: {source}. Pass a .json/.jsonl(.gz) file, a directory of them, or a "
                        f"Hugging Face dataset id ({', '.join(known_hub)})")
    if not records:
        raise DataError(f"dataset {source} is empty: it holds no items")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: item {index} is a {type(record).__name__}, not a JSON object")
    return records
