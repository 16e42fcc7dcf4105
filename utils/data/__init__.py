"""Stage 01 (scripts/01_prepare_data.py): raw text -> cleaned, filtered, deduplicated, tokenized shards.

config        DataConfig (the settings, their validation, the default name) and the hub dataset a config names
sources       document sources: local files (txt, jsonl/json, parquet, .gz, globs) and Hugging Face datasets
cleaning      text cleaning: ftfy, NFC, control characters, URLs, fenced code, whitespace
filters       length, language and Gopher-style quality filters, each drop named by its reason
langid        py3langid's model run on a batch of documents at once (same labels, ~6x faster on short documents)
dedup         exact (SHA256) and near-duplicate (MinHash-LSH) keys and the in-memory index of them
pipeline      pass 1 on the local engine: the clean/filter/keys worker pool, in-memory dedup, the spool, FirstPass,
              the memory budget check, the train/val split
engine        pass 1 on datatrove (--engine datatrove): task split, executor runs with resume, assembly
engine_steps  the datatrove pipeline steps: filter (with sorted key chunk files), duplicate pairs -> drops
executors     where those steps run: datatrove's local, Slurm or Ray executor, progress from completion markers
prepare       tokenizer training or reuse, pass 2 into shards, outputs, the rerun fingerprint, prepare_dataset
report        stats.json and DATA_CARD.md
demo_stories  the demo story grammar: vocabulary, sentence templates, the seeded pretraining stories
demo_corpus   the demo corpus files: stories plus SFT, DPO and multiple-choice sets from held-out stories
"""
