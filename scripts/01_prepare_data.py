#!/usr/bin/env python
"""Stage 01: raw text -> cleaned, deduplicated, tokenized shards in data/processed/<name>/.

    python scripts/01_prepare_data.py                                   # embedded demo corpus, no network
    python scripts/01_prepare_data.py --config_path config/datasets/wikitext103.json
    python scripts/01_prepare_data.py --config_path config/datasets/openwebtext.json --vocab_size 16384 --max_length 2048
    python scripts/01_prepare_data.py --source local --name my_corpus --input_path ./data/raw/my_corpus.txt

A rerun with the same config does nothing; --force rebuilds (the old output is replaced only when the new one
is complete). Outputs: tokenizer/, train_*.bin, val_*.bin, manifest.json, stats.json, DATA_CARD.md.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import parse_config, run_main  # noqa: E402
from utils.data_prep import DataConfig, prepare_dataset  # noqa: E402

log = logging.getLogger("lumi.prepare")

HELP = {
    "source": "demo (embedded, offline), local (--input_path) or hf (--hf_dataset)",
    "input_path": "file, directory or glob of .txt/.jsonl/.json/.parquet (optionally .gz)",
    "text_field": "field holding the text in jsonl/json/parquet records",
    "vocab_size": "tokenizer vocabulary (32768 if unset); smaller for small corpora",
    "tokenizer_path": "reuse this tokenizer directory instead of training one (a frozen tokenizer)",
    "max_length": "training context the data is prepared for; stage 02 uses it as its default",
    "num_workers": "processes for cleaning and filtering (0 = in-process)",
    "strict": "make malformed records fatal instead of counted and skipped",
    "force": "rebuild even if an up-to-date output exists, or replace one made with another config",
}


def main() -> None:
    config = parse_config(DataConfig, __doc__, help_texts=HELP)
    out = prepare_dataset(config)
    log.info("dataset ready in %s (see %s and %s)", out, out / "DATA_CARD.md", out / "stats.json")
    log.info("next: make pretrain-tiny DATA=%s   (or python scripts/02_pretrain.py --config config/tiny.json "
             "--data_path %s)", out, out)


if __name__ == "__main__":
    sys.exit(run_main(main))
