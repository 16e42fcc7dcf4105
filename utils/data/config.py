"""Stage 01's settings: DataConfig (every key of config/datasets/*.json and every --flag of 01_prepare_data.py), its
validation, the dataset's default name, and the hub dataset a source-hf config names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from utils.core.hub import PublicDataset


@dataclass
class DataConfig:
    """Stage 01 settings. Every key may appear in config/datasets/*.json or as a --flag."""

    name: str | None = None  # default: demo_tiny, the input's file or folder stem, or the hub dataset's name
    source: Literal["demo", "local", "hf"] | None = None  # default: local with input_path, hf with hf_dataset, demo
    input_path: str | None = None
    hf_dataset: str | None = None
    hf_subset: str | None = None
    hf_split: str = "train"
    hf_data_files: str | None = None  # a glob inside the hub repository: only these files are downloaded
    hf_streaming: bool = False  # True: no download and no cache (a rerun needs the network again)
    mirror_path: str | None = None  # where a LUMI_DATA_DIR mirror keeps this hub dataset (glob inside it)
    text_field: str = "text"
    text_unit: Literal["paragraph", "line", "file"] = "paragraph"
    max_documents: int | None = None
    max_doc_chars: int = 1_000_000
    license: str = "unknown"
    description: str = ""
    demo_seed: int = 1234
    demo_num_stories: int | None = None
    fix_unicode: bool = True
    remove_urls: bool = True
    remove_code_blocks: bool = True
    min_chars: int = 50
    max_chars: int = 10_000
    split_long_documents: bool = True
    language: str | None = "en"
    language_threshold: float = 0.7
    language_sample_chars: int = 2000
    max_symbol_ratio: float = 0.1
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    min_stop_words: int = 2
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash_num_perm: int = 128
    minhash_bands: int = 16  # LSH bands of minhash_num_perm / minhash_bands rows (utils/data/dedup.py: why 16)
    shingle_size: int = 5
    train_fraction: float = 0.98
    seed: int = 1234
    vocab_size: int | None = None
    tokenizer_path: str | None = None  # a tokenizer directory, or a Hugging Face tokenizer id (e.g. gpt2)
    tokenizer_type: Literal["sentencepiece", "bytelevel"] = "sentencepiece"  # what stage 01 trains
    tokenizer_sample_chars: int = 50_000_000
    max_length: int = 2048
    shard_tokens: int = 100_000_000
    batch_documents: int = 256
    num_workers: int = 2
    engine: Literal["local", "datatrove"] = "local"  # datatrove: disk-based dedup in tasks (utils/data/engine.py)
    tasks: int | None = None  # datatrove engine: tasks of the per-file steps (default: one per input file, at most 64)
    memory_budget_gb: float | None = None  # what the dedup state may hold in memory; default: half the machine's
    work_dir: str | None = None  # datatrove engine's working files (default: beside the output); kept until published
    executor: Literal["local", "slurm", "ray"] = "local"  # where the datatrove engine's tasks run
    task_memory_gb: int = 2  # slurm/ray: memory reserved per task (its dedup key chunks use half)
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"  # the time limit of each Slurm task
    slurm_account: str | None = None
    slurm_env_command: str | None = None  # run before each Slurm task (default: this venv, this repo on PYTHONPATH)
    ray_address: str | None = None  # a Ray cluster ("auto", "ray://host:10001"); default: a local Ray instance
    output_dir: str = "data/processed"
    force: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = "local" if self.input_path else "hf" if self.hf_dataset else "demo"
        if self.source == "local" and not self.input_path:
            raise ValueError("source 'local' needs input_path (a file, directory or glob): pass --input_path")
        if self.source == "hf" and not self.hf_dataset:
            raise ValueError("source 'hf' needs hf_dataset (a Hugging Face dataset id)")
        if self.source != "local" and self.input_path:
            what = f"the Hugging Face dataset {self.hf_dataset}" if self.source == "hf" else "the demo corpus"
            raise ValueError(f"input_path {self.input_path} is given but the source is '{self.source}' ({what}): "
                             f"add --source local to read the file instead")
        if self.name is None:
            self.name = default_dataset_name(self)
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.minhash_bands < 1 or self.minhash_num_perm % self.minhash_bands:
            raise ValueError(f"minhash_bands {self.minhash_bands} must divide minhash_num_perm "
                             f"{self.minhash_num_perm} (e.g. 16 bands of 8 for 128 permutations)")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars {self.min_chars} exceeds max_chars {self.max_chars}")
        if self.max_length < 16:
            raise ValueError(f"max_length must be at least 16, got {self.max_length}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be positive, got {self.memory_budget_gb}")
        if self.tasks is not None and self.tasks < 1:
            raise ValueError(f"tasks must be at least 1, got {self.tasks}")
        self._check_executor()

    def _check_executor(self) -> None:
        if self.executor != "local" and self.engine != "datatrove":
            raise ValueError(f"executor {self.executor} runs the datatrove engine's tasks: add --engine datatrove")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ValueError("executor slurm needs slurm_partition (sinfo lists them): pass --slurm_partition")
        if self.task_memory_gb < 1:
            raise ValueError(f"task_memory_gb must be at least 1, got {self.task_memory_gb}")


def memory_budget_bytes(config: DataConfig) -> int:
    """--memory_budget_gb, or half of this machine's memory."""
    if config.memory_budget_gb is not None:
        return int(config.memory_budget_gb * 2**30)
    import psutil

    return psutil.virtual_memory().total // 2


def default_dataset_name(config: DataConfig) -> str:
    """demo_tiny; a local corpus is named by its file or folder (my_corpus.jsonl.gz -> my_corpus); a hub one by id."""
    if config.source == "local":
        assert config.input_path is not None
        stem = Path(config.input_path.rstrip("/")).name
        if any(ch in stem for ch in "*?["):  # a glob: name it by the folder it searches
            stem = Path(config.input_path.split("*")[0].rstrip("/")).name or "local"
        for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".parquet", ".txt", ".text", ".md"):
            stem = stem.removesuffix(suffix)
        return stem or "local"
    if config.source == "hf":
        assert config.hf_dataset is not None
        return config.hf_dataset.rsplit("/", 1)[-1].lower().replace("-", "_")
    return "demo_tiny"


def hub_dataset(config: DataConfig) -> PublicDataset:
    """The hub dataset a source-hf config reads, with where a LUMI_DATA_DIR mirror keeps it."""
    assert config.hf_dataset is not None
    mirror = (config.mirror_path,) if config.mirror_path else ()
    return PublicDataset(config.name or config.hf_dataset, config.hf_dataset, config.hf_subset, config.hf_split,
                         mirror, config.hf_data_files)
