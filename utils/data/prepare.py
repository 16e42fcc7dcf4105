"""Stage 01: raw text -> cleaned, filtered, deduplicated, tokenized shards in data/processed/<name>/.

Two streaming passes keep memory flat in the corpus size:
  pass 1  read -> clean -> split long docs -> filter (worker processes) -> exact + near dedup (main) -> spool
  then    deterministic train/val split by content hash; tokenizer trained on a sample of train docs
  pass 2  spool -> tokenize -> binary shards per split
Everything is written into a temporary directory that replaces the output only when complete.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import shutil
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from utils.core.artifacts import META_NAME, atomic_directory, read_json, write_json, write_meta
from utils.core.config import save_resolved_config
from utils.core.errors import ConfigError, DataError
from utils.core.hub import (
    MIRROR_ENV,
    PublicDataset,
    check_available,
    expand_mirror_path,
    hub_unavailable_reason,
    mirror_matches,
    mirror_root,
)
from utils.data.cleaning import CleaningOptions, clean_text, split_long_text
from utils.data.dedup import NearDuplicateIndex, exact_key
from utils.data.filters import FilterOptions, drop_reason
from utils.data.report import StageTimer, build_stats, write_data_card
from utils.data.sources import (
    ReadStats,
    SourceOptions,
    input_fingerprint,
    iter_hub_documents,
    iter_local_documents,
    resolve_input_files,
)

log = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 32768
MANIFEST_FORMAT = 1
SPOOL_NAME = ".spool.bin"
SAMPLE_NAME = ".tokenizer_sample.txt"
DROP_EXAMPLES_PER_REASON = 3
DROP_EXAMPLE_CHARS = 200
ENCODE_BATCH_DOCS = 256
_LENGTH = struct.Struct("<I")
# Options that change how a run behaves but not what it produces: excluded from the fingerprint.
RUN_ONLY_KEYS = ("force", "strict", "num_workers", "output_dir")


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
    minhash_threshold: float = 0.8
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
        if not 0.0 < self.minhash_threshold <= 1.0:
            raise ValueError(f"minhash_threshold must be in (0, 1], got {self.minhash_threshold}")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars {self.min_chars} exceeds max_chars {self.max_chars}")
        if self.max_length < 16:
            raise ValueError(f"max_length must be at least 16, got {self.max_length}")


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


@dataclass
class _BatchResult:
    kept: list[str]
    pieces: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    clean_seconds: float = 0.0
    filter_seconds: float = 0.0


_WORKER_OPTIONS: tuple[CleaningOptions, FilterOptions, int | None] | None = None


def _init_worker(options: tuple[CleaningOptions, FilterOptions, int | None]) -> None:
    global _WORKER_OPTIONS
    _WORKER_OPTIONS = options


def _clean_and_filter(batch: list[str]) -> _BatchResult:
    """Runs in a worker: clean, split long documents, filter; drops are counted with a few examples."""
    assert _WORKER_OPTIONS is not None
    cleaning, filters, split_at = _WORKER_OPTIONS
    result = _BatchResult(kept=[])
    for raw in batch:
        start = time.perf_counter()
        text = clean_text(raw, cleaning)
        pieces = split_long_text(text, split_at) if (split_at and text) else [text]
        mid = time.perf_counter()
        for piece in pieces:
            reason = "empty_after_cleaning" if not piece else drop_reason(piece, filters)
            if reason is None:
                result.kept.append(piece)
                continue
            result.dropped[reason] = result.dropped.get(reason, 0) + 1
            examples = result.examples.setdefault(reason, [])
            if len(examples) < DROP_EXAMPLES_PER_REASON:
                examples.append(piece[:DROP_EXAMPLE_CHARS])
        result.pieces += len(pieces)
        result.clean_seconds += mid - start
        result.filter_seconds += time.perf_counter() - mid
    return result


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _doc_keys(text: str, seed: int) -> tuple[int, int]:
    """Two independent 64-bit content hashes: one orders the train/val split, one picks the tokenizer sample."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16, salt=seed.to_bytes(8, "little")[:16]).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


class FirstPass:
    """Collects everything pass 1 learns: counts, drop examples, timings, and per-document keys."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.read = ReadStats()
        self.counts: dict[str, int] = {"pieces": 0, "after_filters": 0, "after_exact_dedup": 0, "kept": 0}
        self.dropped: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.timer = StageTimer()
        self.split_keys: list[int] = []
        self.sample_keys: list[int] = []
        self.kept_chars = 0
        self.kept_bytes = 0

    def drop(self, reason: str, count: int, examples: list[str]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        kept_examples = self.examples.setdefault(reason, [])
        for text in examples[: DROP_EXAMPLES_PER_REASON - len(kept_examples)]:
            kept_examples.append(text[:DROP_EXAMPLE_CHARS])


def _iter_raw_documents(config: DataConfig, stats: ReadStats, files: list[Path]) -> Iterator[str]:
    # Blocks of at most max_chars let worker batches stay small and evenly sized on books without blank lines.
    block_chars = config.max_chars if config.split_long_documents else config.max_doc_chars
    options = SourceOptions(text_field=config.text_field, text_unit=config.text_unit,
                            max_doc_chars=config.max_doc_chars, block_chars=block_chars, strict=config.strict)
    if config.source == "hf" and not files:
        documents = iter_hub_documents(hub_dataset(config), config.hf_streaming, stats, options)
    else:
        documents = iter_local_documents(files, stats, options)
    # islice pulls exactly max_documents, so the reader's counts stop there too.
    return itertools.islice(documents, config.max_documents)


def _run_pass1(config: DataConfig, files: list[Path], spool_path: Path) -> FirstPass:
    state = FirstPass(config)
    cleaning = CleaningOptions(config.fix_unicode, config.remove_urls, config.remove_code_blocks)
    filters = FilterOptions(config.min_chars, config.max_chars, config.language, config.language_threshold,
                            config.language_sample_chars, config.max_symbol_ratio, config.min_mean_word_length,
                            config.max_mean_word_length, config.min_stop_words)
    options = (cleaning, filters, config.max_chars if config.split_long_documents else None)
    near = NearDuplicateIndex(config.minhash_num_perm, config.minhash_threshold, config.shingle_size) \
        if config.near_dedup else None
    seen_exact: set[bytes] = set()
    total_bytes = sum(f.stat().st_size for f in files) or None
    batches = _batched(_iter_raw_documents(config, state.read, files), config.batch_documents)
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="clean/filter/dedup", mininterval=1.0)
    with open(spool_path, "wb") as spool, _worker_map(config.num_workers, options) as mapper:
        for result in mapper(_clean_and_filter, batches):
            _absorb(state, result)
            kept = _dedup(state, result.kept, seen_exact, near)
            for text in kept:
                _spool_write(spool, state, text)
            progress.update(state.read.bytes_read - progress.n)
            progress.set_postfix(docs=state.read.documents, kept=state.counts["kept"], refresh=False)
    progress.close()
    return state


class _worker_map:  # noqa: N801 - used as a context manager factory
    """`imap` over a process pool (order-preserving, so output is deterministic) or in-process when 0 workers."""

    def __init__(self, workers: int, options: tuple) -> None:
        self.workers, self.options, self.pool = workers, options, None

    def __enter__(self):
        if self.workers <= 0:
            _init_worker(self.options)
            return lambda fn, items: map(fn, items)
        context = multiprocessing.get_context("fork")
        self.pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.options,))
        return lambda fn, items: self.pool.imap(fn, items)

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _absorb(state: FirstPass, result: _BatchResult) -> None:
    state.counts["pieces"] += result.pieces
    state.counts["after_filters"] += len(result.kept)
    state.timer.add("clean", result.clean_seconds)
    state.timer.add("filter", result.filter_seconds)
    for reason, count in result.dropped.items():
        state.drop(reason, count, result.examples.get(reason, []))


def _dedup(state: FirstPass, texts: list[str], seen: set[bytes], near: NearDuplicateIndex | None) -> list[str]:
    with state.timer.measure("exact_dedup"):
        unique: list[str] = []
        for text in texts:
            key = exact_key(text)
            if state.config.exact_dedup and key in seen:
                state.drop("exact_duplicate", 1, [text])
                continue
            seen.add(key)
            unique.append(text)
    state.counts["after_exact_dedup"] += len(unique)
    if near is None or not unique:
        return unique
    with state.timer.measure("near_dedup"):
        flags = near.add_batch(unique)
    kept = []
    for text, duplicate in zip(unique, flags):
        if duplicate:
            state.drop("near_duplicate", 1, [text])
        else:
            kept.append(text)
    return kept


def _spool_write(spool, state: FirstPass, text: str) -> None:
    data = text.encode("utf-8")
    spool.write(_LENGTH.pack(len(data)))
    spool.write(data)
    split_key, sample_key = _doc_keys(text, state.config.seed)
    state.split_keys.append(split_key)
    state.sample_keys.append(sample_key)
    state.counts["kept"] += 1
    state.kept_chars += len(text)
    state.kept_bytes += len(data)


def _spool_read(path: Path) -> Iterator[str]:
    with open(path, "rb") as fh:
        while header := fh.read(_LENGTH.size):
            (length,) = _LENGTH.unpack(header)
            yield fh.read(length).decode("utf-8")


def _validation_mask(split_keys: list[int], train_fraction: float) -> np.ndarray:
    """The documents with the smallest keys go to validation: an exact, order-independent, seeded split."""
    n = len(split_keys)
    if n < 2:
        raise DataError(f"only {n} document(s) survived cleaning, filtering and dedup; at least 2 are needed for a "
                        f"train/validation split. Use more data or relax the filters (see the drop counts above).")
    n_val = min(n - 1, max(1, round(n * (1.0 - train_fraction))))
    order = np.argsort(np.asarray(split_keys, dtype=np.uint64), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_val]] = True
    return mask


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
        for index, text in enumerate(_spool_read(spool)):
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
        for batch in _batched(_spool_read(spool), ENCODE_BATCH_DOCS):
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
    log.info("wrote %s", out)
    return out


def hub_dataset(config: DataConfig) -> PublicDataset:
    """The hub dataset a source-hf config reads, with where a LUMI_DATA_DIR mirror keeps it."""
    assert config.hf_dataset is not None
    mirror = (config.mirror_path,) if config.mirror_path else ()
    return PublicDataset(config.name or config.hf_dataset, config.hf_dataset, config.hf_subset, config.hf_split,
                         mirror, config.hf_data_files)


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
    state = _run_pass1(config, files, spool)
    state.timer.add("pass1_wall", time.perf_counter() - started)
    if state.read.documents == 0:
        raise DataError(f"the input is empty: no documents read from {config.input_path or config.hf_dataset or 'demo'}")
    val_mask = _validation_mask(state.split_keys, config.train_fraction)
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
