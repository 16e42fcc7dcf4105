"""The bottom layer, shared by every other: no model code, no torch at import time.

errors       LumiError (exit 1), ConfigError (exit 2), DataError, CheckpointError
config       dataclass defaults < JSON file < CLI flags; unknown keys and wrong types named
cli          logging setup, flags from a config dataclass, errors to exit codes, deprecated flag spellings
artifacts    REPO_ROOT, atomic output directories and JSON, meta.json with the git sha
records      the one reader of JSON row files (.jsonl/.ndjson/.json, gzipped or not) every stage uses
environment  versions, CUDA, native bf16, the attention kernel, the precision choice, the flash-attn preflight
distributed  several processes: DDP only, main-process writes, stop decisions every process shares
hub          public datasets by hub id (cached, offline reruns) or from the LUMI_DATA_DIR mirror; the check before a run
periodic     a function run every few seconds in a background thread while a block runs, and once at its end
"""
