"""Stage 01: raw text -> cleaned, filtered, deduplicated, tokenized shards in data/processed/<name>/.

    python scripts/01_prepare_data.py --config_path config/datasets/demo_tiny.json

Two streaming passes keep memory flat in the corpus size:
  pass 1  read -> clean -> split long docs -> filter (worker processes) -> exact + near dedup (main) -> spool
          (utils/data/pipeline.py)
  then    deterministic train/val split by content hash; tokenizer trained on a sample of train docs
  pass 2  spool -> tokenize -> binary shards per split
Everything is written into a temporary directory that replaces the output only when complete; a rerun with the same
config and input (the fingerprint in meta.json) does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.core.artifacts import META_NAME, atomic_directory, read_json, write_json, write_meta
from utils.core.config import save_resolved_config
from utils.core.errors import ConfigError, DataError
from utils.core.hub import (
    MIRROR_ENV,
    check_available,
    expand_mirror_path,
    hub_unavailable_reason,
    mirror_matches,
    mirror_root,
)
from utils.data.config import DataConfig, hub_dataset
from utils.data.engine import remove_work_directory, run_datatrove
from utils.data.pipeline import SPOOL_NAME, FirstPass, batched, run_pass1, spool_read, validation_mask
from utils.data.report import build_stats, write_data_card
from utils.data.sources import input_fingerprint, resolve_input_files

log = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 32768
MANIFEST_FORMAT = 1
SAMPLE_NAME = ".tokenizer_sample.txt"
ENCODE_BATCH_DOCS = 256
# Options that change how a run behaves but not what it produces: excluded from the fingerprint.
# Both engines give the same output (tested), so the engine and its settings are among them.
RUN_ONLY_KEYS = ("force", "strict", "num_workers", "output_dir", "engine", "tasks", "memory_budget_gb", "work_dir",
                 "executor", "task_memory_gb", "slurm_partition", "slurm_time", "slurm_account", "slurm_env_command",
                 "ray_address")


def _prepare_tokenizer(config: DataConfig, state: FirstPass, val_mask: np.ndarray, spool: Path, out: Path) -> Path:
    from utils.lm.tokenizer import train_tokenizer

    tokenizer_dir = out / "tokenizer"
    if config.tokenizer_path:
        return _copy_tokenizer(config, config.tokenizer_path, tokenizer_dir)
    # kept_chars includes validation: the rate only needs to be about right, and stays deterministic.
    rate = min(1.0, config.tokenizer_sample_chars / max(state.kept_chars, 1))
    threshold = int(rate * 2**64)
    sample_path = out / SAMPLE_NAME
    with state.timer.measure("tokenizer_training"), open(sample_path, "w", encoding="utf-8") as sample:
        for index, text in enumerate(spool_read(spool)):
            if not val_mask[index] and state.sample_keys[index] < threshold:
                sample.write(text + "\n")  # SentencePiece reads one sentence per line
        # The thread count is recorded in tokenizer.model, so it is fixed: num_workers must not change outputs.
        train_tokenizer(sample_path, tokenizer_dir, config.vocab_size or DEFAULT_VOCAB_SIZE,
                        kind=config.tokenizer_type)
    sample_path.unlink()
    return tokenizer_dir


def _copy_tokenizer(config: DataConfig, source: str, target: Path) -> Path:
    """A frozen tokenizer: a directory written by stage 01, or a Hugging Face tokenizer by hub id."""
    from utils.lm.tokenizer import load_tokenizer

    if Path(source).is_dir():
        tokenizer = load_tokenizer(Path(source))
        shutil.copytree(source, target)
    else:
        tokenizer = hub_tokenizer(source)
        tokenizer.save_pretrained(target)
    if config.vocab_size is not None and config.vocab_size != len(tokenizer):
        raise ConfigError(f"--vocab_size {config.vocab_size} conflicts with the tokenizer at {source} "
                          f"(vocab {len(tokenizer)}); drop --vocab_size when reusing a tokenizer")
    return target


def hub_tokenizer(repo_id: str) -> Any:
    """A Hugging Face tokenizer by id (downloaded once, then from the cache), completed for our stages: an EOS is
    required, BOS and PAD default to it, and the ChatML template is added where it has none."""
    from transformers import AutoTokenizer

    from utils.lm.templates import CHATML_JINJA

    if repo_id.count("/") > 1 or repo_id.startswith((".", "/")):
        raise DataError(f"--tokenizer_path {repo_id}: no such directory, and not a Hugging Face id (owner/name)")
    reason = hub_unavailable_reason()
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=reason is not None)
    except OSError as exc:
        why = f"the hub is unavailable ({reason}) and it is not in the cache" if reason else str(exc)
        raise DataError(f"cannot load the tokenizer '{repo_id}': {why}. Check the id, connect once, or pass a "
                        f"tokenizer directory with --tokenizer_path.") from exc
    if tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer '{repo_id}' has no EOS token: documents could not be separated")
    tokenizer.bos_token = tokenizer.bos_token or tokenizer.eos_token
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.chat_template = tokenizer.chat_template or CHATML_JINJA
    return tokenizer


def _tokenize(config: DataConfig, state: FirstPass, val_mask: np.ndarray, spool: Path, out: Path,
              tokenizer_dir: Path) -> dict[str, list[dict]]:
    from utils.lm.shards import ShardWriter
    from utils.lm.tokenizer import make_encoder, tokenizer_sha256

    encoder = make_encoder(tokenizer_dir)
    sha = tokenizer_sha256(tokenizer_dir)
    writers = {split: ShardWriter(out, split, encoder.vocab_size, sha, config.shard_tokens)
               for split in ("train", "val")}
    progress = tqdm(total=len(val_mask), unit="doc", desc="tokenize", mininterval=1.0)
    with state.timer.measure("tokenization"):
        index = 0
        for batch in batched(spool_read(spool), ENCODE_BATCH_DOCS):
            for ids in encoder.encode_batch(batch):
                tokens = np.empty(len(ids) + 2, dtype=np.int64)
                tokens[0], tokens[1:-1], tokens[-1] = encoder.bos_id, ids, encoder.eos_id
                writers["val" if val_mask[index] else "train"].write_document(tokens)
                index += 1
            progress.update(len(batch))
    progress.close()
    return {split: writer.close() for split, writer in writers.items()}


def config_fingerprint(config: DataConfig, inputs: list[list[Any]]) -> str:
    values = {k: v for k, v in asdict(config).items() if k not in RUN_ONLY_KEYS}
    payload = json.dumps({"config": values, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _existing_output_is_current(out: Path, fingerprint: str, force: bool) -> bool:
    meta_path = out / META_NAME
    if not out.exists() or force:
        return False
    if not meta_path.is_file():
        raise DataError(f"{out} exists but has no {META_NAME} (not a complete prepared dataset). Pass --force to "
                        f"rebuild it, or choose another --name.")
    if read_json(meta_path).get("fingerprint") == fingerprint:
        return True
    raise ConfigError(f"{out} was prepared with a different config or input. Pass --force to rebuild it (the old "
                      f"one is replaced only once the new one is complete), or choose another --name.")


def prepare_dataset(config: DataConfig) -> Path:
    """Run stage 01 and return the output directory (unchanged if already prepared with this config)."""
    assert config.name is not None
    out = Path(config.output_dir) / config.name
    files = input_files(config)
    fingerprint = config_fingerprint(config, input_fingerprint(files))
    if _existing_output_is_current(out, fingerprint, config.force):
        log.info("%s is up to date with this config: nothing to do (pass --force to rebuild)", out)
        return out
    started = time.perf_counter()
    with atomic_directory(out) as tmp:
        if config.source == "demo":
            files = [_write_demo_corpus(config, tmp)]
        _build(config, files, tmp, fingerprint, started)
    if config.engine == "datatrove":
        remove_work_directory(config, fingerprint)
    log.info("wrote %s", out)
    return out


def input_files(config: DataConfig) -> list[Path]:
    """Local files to read: --input_path, or a hub dataset's copy in the LUMI_DATA_DIR mirror; [] for hub/demo."""
    if config.source == "local":
        assert config.input_path is not None
        return resolve_input_files(expand_mirror_path(config.input_path))
    root = mirror_root() if config.source == "hf" else None
    if root is None:
        if config.source == "hf":
            check_available([hub_dataset(config)])
        return []
    dataset = hub_dataset(config)
    if not dataset.mirror:
        raise DataError(f"{MIRROR_ENV} is set but the config of {config.hf_dataset} has no mirror_path: add "
                        f"\"mirror_path\" (a glob inside the mirror), or unset {MIRROR_ENV} to use the hub.")
    check_available([dataset])
    files = mirror_matches(dataset, root)
    log.info("%s: reading the mirror copy %s (%d files)", config.hf_dataset, root / dataset.mirror[0], len(files))
    return files


def _write_demo_corpus(config: DataConfig, tmp: Path) -> Path:
    from utils.data.demo_corpus import generate_demo_corpus

    demo_dir = tmp / "demo"
    kwargs = {"num_stories": config.demo_num_stories} if config.demo_num_stories else {}
    counts = generate_demo_corpus(demo_dir, seed=config.demo_seed, **kwargs)
    log.info("generated the demo corpus in %s: %s", demo_dir, counts)
    return demo_dir / "stories.jsonl"


def _build(config: DataConfig, files: list[Path], out: Path, fingerprint: str, started: float) -> None:
    spool = out / SPOOL_NAME
    if config.engine == "datatrove":
        state = run_datatrove(config, files, spool, fingerprint)
    else:
        state = run_pass1(config, files, spool)
    state.timer.add("pass1_wall", time.perf_counter() - started)
    if state.read.documents == 0:
        raise DataError(f"the input is empty: no documents read from {config.input_path or config.hf_dataset or 'demo'}")
    val_mask = validation_mask(state.split_keys, config.train_fraction)
    tokenizer_dir = _prepare_tokenizer(config, state, val_mask, spool, out)
    shards = _tokenize(config, state, val_mask, spool, out, tokenizer_dir)
    spool.unlink()
    _write_outputs(config, state, val_mask, shards, out, tokenizer_dir, fingerprint, time.perf_counter() - started)


def _write_outputs(config: DataConfig, state: FirstPass, val_mask: np.ndarray, shards: dict[str, list[dict]],
                   out: Path, tokenizer_dir: Path, fingerprint: str, seconds: float) -> None:
    from utils.lm.tokenizer import make_encoder, tokenizer_sha256

    encoder = make_encoder(tokenizer_dir)
    sha = tokenizer_sha256(tokenizer_dir)
    splits = {name: {"shards": items, "tokens": sum(s["tokens"] for s in items),
                     "documents": sum(s["documents"] for s in items)} for name, items in shards.items()}
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "dataset": config.name,
        "tokenizer": {"path": "tokenizer", "sha256": sha, "vocab_size": encoder.vocab_size,
                      "bos_id": encoder.bos_id, "eos_id": encoder.eos_id,
                      "reused_from": config.tokenizer_path},
        "dtype": "uint16" if encoder.vocab_size <= 1 << 16 else "uint32",
        "max_length": config.max_length,
        "splits": splits,
    }
    write_json(out / "manifest.json", manifest)
    stats = build_stats(state, val_mask, splits, seconds)
    write_json(out / "stats.json", stats)
    save_resolved_config(config, out)
    write_data_card(out / "DATA_CARD.md", config, stats, state.examples, manifest)
    write_meta(out, stage="prepare_data", fingerprint=fingerprint, tokenizer_sha256=sha,
               train_tokens=splits["train"]["tokens"], val_tokens=splits["val"]["tokens"])
