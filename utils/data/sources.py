"""Document sources: local files (txt, jsonl/json, parquet, .gz, directories, globs) and Hugging Face datasets.

Everything streams one document at a time so a corpus never has to fit in memory. JSON rows come through the one
row reader (utils/core/records.py). Bad records are counted (with file and line number) and skipped, or fatal
under `strict`; they never crash the stage.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.core.errors import DataError
from utils.core.hub import PublicDataset, load_hub_split
from utils.core.records import RECORD_SUFFIXES, iter_records, open_binary, split_suffix

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES + PARQUET_SUFFIXES
PARQUET_BATCH_ROWS = 1024
MAX_BAD_RECORD_EXAMPLES = 5


@dataclass
class ReadStats:
    """What the reader saw: documents yielded, and records skipped per reason (with a few locations)."""

    files: list[str] = field(default_factory=list)
    documents: int = 0
    bytes_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    capped: int = 0

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < MAX_BAD_RECORD_EXAMPLES:
            examples.append(where)


@dataclass
class SourceOptions:
    text_field: str = "text"
    text_unit: str = "paragraph"  # how a .txt file splits into documents: paragraph | line | file
    max_doc_chars: int = 1_000_000
    block_chars: int = 1_000_000  # paragraph mode: emit a block before it grows past this (books lack blank lines)
    strict: bool = False


def resolve_input_files(input_path: str) -> list[Path]:
    """Expand a file, a directory (recursively, supported formats only) or a glob into a sorted file list."""
    path = Path(input_path)
    if any(ch in input_path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(input_path, recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and split_suffix(p)[0] in SUPPORTED_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"input path not found: {input_path}. Pass an existing file, directory or glob "
                        f"with --input_path.")
    files = [f for f in files if split_suffix(f)[0] in SUPPORTED_SUFFIXES]
    if not files:
        raise DataError(f"no supported files under {input_path} (looked for {', '.join(SUPPORTED_SUFFIXES)}, "
                        f"optionally .gz)")
    return files


def input_fingerprint(files: list[Path]) -> list[list[Any]]:
    """(path, size, mtime) per file: cheap evidence that a prepared dataset is stale."""
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _decode(raw: bytes, where: str, stats: ReadStats, options: SourceOptions) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if options.strict:
            raise DataError(f"{where}: invalid UTF-8 ({exc.reason} at byte {exc.start})") from exc
        stats.skip("invalid_utf8", where)
        return None


def _cap(text: str, stats: ReadStats, options: SourceOptions) -> str:
    if len(text) > options.max_doc_chars:
        stats.capped += 1
        return text[: options.max_doc_chars]
    return text


def _decoded_block(lines: list[bytes], where: str, stats: ReadStats, options: SourceOptions) -> Iterator[str]:
    if lines:
        text = _decode(b"".join(lines), where, stats, options)
        if text is not None and text.strip():
            yield text


def _iter_text_file(path: Path, stats: ReadStats, options: SourceOptions) -> Iterator[str]:
    """Paragraph mode emits at blank lines, or before a block grows past block_chars (books often have none)."""
    with open_binary(path) as fh:
        if options.text_unit == "file":
            raw = fh.read(options.max_doc_chars * 4 + 1)  # UTF-8 is at most 4 bytes per character
            stats.bytes_read += len(raw)
            yield from _decoded_block([raw], str(path), stats, options)
            return
        block: list[bytes] = []
        block_bytes, block_start = 0, 1
        for line_no, line in enumerate(fh, start=1):
            stats.bytes_read += len(line)
            if options.text_unit == "line":
                yield from _decoded_block([line], f"{path}:{line_no}", stats, options)
                continue
            is_blank = not line.strip()
            if block and (is_blank or block_bytes + len(line) > options.block_chars):
                yield from _decoded_block(block, f"{path}:{block_start}", stats, options)
                block, block_bytes = [], 0
            if not is_blank:
                if not block:
                    block_start = line_no
                block.append(line)
                block_bytes += len(line)
        yield from _decoded_block(block, f"{path}:{block_start}", stats, options)


def _text_of(record: Any, where: str, stats: ReadStats, options: SourceOptions) -> str | None:
    if not isinstance(record, dict):
        return _bad(f"{where}: expected a JSON object, got {type(record).__name__}", "not_an_object", where,
                    stats, options)
    if options.text_field not in record:
        present = ", ".join(sorted(record)) or "(none)"
        raise DataError(f"{where}: text field '{options.text_field}' not found; fields present: {present}. "
                        f"Set \"text_field\" in the dataset config or pass --text_field.")
    value = record[options.text_field]
    if not isinstance(value, str):
        return _bad(f"{where}: field '{options.text_field}' is {type(value).__name__}, not a string",
                    "non_string_text", where, stats, options)
    return value


def _bad(message: str, reason: str, where: str, stats: ReadStats, options: SourceOptions) -> None:
    if options.strict:
        raise DataError(message + " (remove --strict to skip and count such records)")
    stats.skip(reason, where)
    return None


def _iter_record_file(path: Path, stats: ReadStats, options: SourceOptions) -> Iterator[str]:
    def skip(where: str, reason: str, message: str) -> None:
        _bad(message, reason, where, stats, options)

    def count(size: int) -> None:
        stats.bytes_read += size

    for where, record in iter_records(path, on_bad=skip, count_bytes=count):
        text = _text_of(record, where, stats, options)
        if text is not None:
            yield text


def _iter_parquet_file(path: Path, stats: ReadStats, options: SourceOptions) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if options.text_field not in columns:
        raise DataError(f"{path}: text field '{options.text_field}' not found; columns present: "
                        f"{', '.join(columns)}. Set \"text_field\" or pass --text_field.")
    stats.bytes_read += path.stat().st_size
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[options.text_field]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value
            else:
                _bad(f"{path}: non-string value in '{options.text_field}'", "non_string_text", str(path), stats,
                     options)


_READERS: dict[str, Callable[[Path, ReadStats, SourceOptions], Iterator[str]]] = {
    **{s: _iter_text_file for s in TEXT_SUFFIXES},
    **{s: _iter_record_file for s in RECORD_SUFFIXES},
    **{s: _iter_parquet_file for s in PARQUET_SUFFIXES},
}


def iter_local_documents(files: list[Path], stats: ReadStats, options: SourceOptions) -> Iterator[str]:
    for path in files:
        stats.files.append(str(path))
        reader = _READERS[split_suffix(path)[0]]
        for text in reader(path, stats, options):
            stats.documents += 1
            yield _cap(text, stats, options)


def iter_hub_documents(dataset: PublicDataset, streaming: bool, stats: ReadStats, options: SourceOptions,
                       shard: tuple[int, int] | None = None) -> Iterator[str]:
    """A Hugging Face dataset's records (downloaded once and cached, or streamed), one text at a time; `shard`
    (count, index) takes one contiguous part of them: the parts in index order are the whole, in order (a streamed
    dataset is sharded by its files, so count is at most its number of files)."""
    rows = load_hub_split(dataset, streaming=streaming)
    if shard is not None:
        rows = rows.shard(num_shards=shard[0], index=shard[1], contiguous=True)
    stats.files.append(f"hf://{dataset.hub_id}" + (f"/{dataset.subset}" if dataset.subset else "")
                       + f":{dataset.split}")
    for index, record in enumerate(rows):
        text = _text_of(record, f"{dataset.hub_id}[{index}]", stats, options)
        if text is not None:
            stats.documents += 1
            yield _cap(text, stats, options)
