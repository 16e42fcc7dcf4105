#!/usr/bin/env python
"""Stage 01: raw text -> cleaned, deduplicated, tokenized shards in data/processed/<name>/.

    python scripts/01_prepare_data.py                                   # embedded demo corpus, no network
    python scripts/01_prepare_data.py --config_path config/datasets/wikitext103.json
    python scripts/01_prepare_data.py --config_path config/datasets/openwebtext.json --vocab_size 16384 --max_length 2048
    python scripts/01_prepare_data.py --input_path ./data/raw/my_corpus.txt    # local files -> data/processed/my_corpus
    python scripts/01_prepare_data.py --input_path ./corpus.jsonl --tokenizer_type bytelevel   # GPT-2-style BPE
    python scripts/01_prepare_data.py --input_path ./corpus.jsonl --tokenizer_path gpt2   # a hub tokenizer, frozen
    python scripts/01_prepare_data.py --config_path config/datasets/fineweb_edu.json --engine datatrove  # any size

A rerun with the same config does nothing; --force rebuilds (the old output is replaced only when the new one
is complete). Outputs: tokenizer/, train_*.bin, val_*.bin, manifest.json, stats.json, DATA_CARD.md.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import parse_config, run_main  # noqa: E402
from utils.data.config import DataConfig  # noqa: E402
from utils.data.prepare import prepare_dataset  # noqa: E402

log = logging.getLogger("lumi.prepare")

HELP = {
    "source": "demo (embedded, offline), local (--input_path alone selects it) or hf (--hf_dataset)",
    "input_path": "file, directory or glob of .txt/.jsonl/.json/.parquet (optionally .gz)",
    "text_field": "field holding the text in jsonl/json/parquet records",
    "vocab_size": "tokenizer vocabulary (32768 if unset); smaller for small corpora",
    "tokenizer_path": "reuse a tokenizer instead of training one (frozen): a directory, or a Hugging Face id like gpt2",
    "tokenizer_type": "what to train: sentencepiece (BPE with byte fallback) or bytelevel (GPT-2-style byte BPE)",
    "hf_data_files": "only these files of the hub repository (a glob inside it), e.g. sample/10BT/000_00000.parquet",
    "hf_streaming": "stream instead of downloading: no disk copy, but nothing is cached (a rerun needs the network)",
    "mirror_path": "where a LUMI_DATA_DIR mirror keeps this hub dataset (a glob inside the mirror)",
    "max_length": "training context the data is prepared for; stage 02 uses it as its default",
    "num_workers": "processes for cleaning and filtering (0 = in-process); with the datatrove engine, tasks at a "
                   "time (on Slurm and Ray too)",
    "engine": "local: dedup index in memory (fastest while it fits); datatrove: dedup keys sorted on disk, work in "
              "resumable tasks (any corpus size; same output)",
    "tasks": "datatrove engine: tasks of the filter step (default: one per input file, at most 64; a hub dataset: "
             "one per worker)",
    "memory_budget_gb": "what the dedup state may hold in memory (default: half this machine's); the local engine "
                        "stops with an error past it, the datatrove engine sizes its key chunks to it",
    "work_dir": "datatrove engine's working folder (default: beside the output); an interrupted run resumes from it",
    "executor": "where the datatrove engine's tasks run: local (this machine), slurm (job arrays, submitted from "
                "here) or ray (--ray_address, or a local Ray instance); the folders must be shared by all nodes",
    "task_memory_gb": "slurm/ray: memory reserved per task (half of it for dedup keys)",
    "slurm_partition": "Slurm partition for the tasks (required with --executor slurm)",
    "slurm_time": "Slurm time limit per task",
    "slurm_account": "Slurm account to charge, if the cluster needs one",
    "slurm_env_command": "shell command run before each Slurm task (default: activate this virtual environment)",
    "ray_address": "Ray cluster to connect to (e.g. auto, ray://head:10001); default: start a local Ray instance",
    "strict": "make malformed records fatal instead of counted and skipped",
    "force": "rebuild even if an up-to-date output exists, or replace one made with another config",
}


def main() -> None:
    config = parse_config(DataConfig, __doc__, help_texts=HELP)
    out = prepare_dataset(config)
    log.info("dataset ready in %s (see %s and %s)", out, out / "DATA_CARD.md", out / "stats.json")
    log.info("next: make pretrain-tiny DATA=%s   (or python scripts/02_pretrain.py --config_path config/tiny.json "
             "--data_path %s)", out, out)


if __name__ == "__main__":
    sys.exit(run_main(main))
