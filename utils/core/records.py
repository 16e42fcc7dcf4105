"""The one reader of JSON row files, for every stage: stage 01's corpora, stages 03-04's instruction and preference
sets, stage 05's benchmark files, the metrics and result rows sessions read back.

One rule for every caller:
    .jsonl / .ndjson   one JSON value per line (blank lines are skipped)
    .json              one JSON array of rows, or JSON lines (some exporters name JSON lines .json)
    either + .gz       gzip-compressed
A row's location is `file:line` for JSON lines and `file[index]` for an array.

A row that is not UTF-8 or not valid JSON is a `DataError` naming its location, unless the caller passes `on_bad`:
it receives the location, a reason (`invalid_utf8`, `invalid_json`) and the message, and raises or returns (the
row is then skipped). Stage 01 skips and counts, every other stage stops. An array that does not parse is an error
whatever `on_bad` says: there is no row boundary to skip to.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from utils.core.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
RECORD_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES
GZIP_SUFFIX = ".gz"
JSON_PEEK_BYTES = 4096  # enough to find the first non-blank character of any real file

BadRow = Callable[[str, str, str], None]  # (location, reason, message)
ByteCounter = Callable[[int], None]


def stop_at_bad_row(where: str, reason: str, message: str) -> None:
    raise DataError(message)


def split_suffix(path: Path) -> tuple[str, bool]:
    """(format suffix, gzipped): ('.jsonl', True) for corpus.jsonl.gz."""
    name = path.name.lower()
    gzipped = name.endswith(GZIP_SUFFIX)
    if gzipped:
        name = name[: -len(GZIP_SUFFIX)]
    return Path(name).suffix, gzipped


def is_record_file(path: Path) -> bool:
    return split_suffix(path)[0] in RECORD_SUFFIXES


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when its name ends in .gz."""
    return gzip.open(path, "rb") if split_suffix(path)[1] else open(path, "rb")


def iter_records(path: Path, on_bad: BadRow = stop_at_bad_row,
                 count_bytes: ByteCounter | None = None) -> Iterator[tuple[str, Any]]:
    """(location, row) for every row of a JSON row file; `count_bytes` hears how many (uncompressed) bytes were
    read, for throughput figures."""
    suffix, _ = split_suffix(path)
    if suffix not in RECORD_SUFFIXES:
        raise DataError(f"{path}: not a JSON row file; expected {', '.join(RECORD_SUFFIXES)}, optionally "
                        f"{GZIP_SUFFIX}")
    count = count_bytes or (lambda _: None)
    if suffix in JSON_SUFFIXES and _holds_array(path):
        yield from _array_rows(path, on_bad, count)
    else:
        yield from _line_rows(path, on_bad, count, suffix in JSON_SUFFIXES)


def read_records(path: Path) -> list[Any]:
    """Every row of a file, stopping at the first bad one."""
    return [row for _, row in iter_records(path)]


def _holds_array(path: Path) -> bool:
    with open_binary(path) as fh:
        return fh.read(JSON_PEEK_BYTES).lstrip().startswith(b"[")


def _decode(raw: bytes, where: str, on_bad: BadRow) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        on_bad(where, "invalid_utf8", f"{where}: invalid UTF-8 ({exc.reason} at byte {exc.start})")
        return None


def _line_rows(path: Path, on_bad: BadRow, count: ByteCounter, named_json: bool) -> Iterator[tuple[str, Any]]:
    with open_binary(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            count(len(raw))
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            line = _decode(raw, where, on_bad)
            if line is None:
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                hint = (" (a .json file holds one JSON array of rows, or one JSON value per line)"
                        if named_json and line_no == 1 else "")
                on_bad(where, "invalid_json", f"{where}: invalid JSON ({exc.msg} at column {exc.colno}){hint}")


def _array_rows(path: Path, on_bad: BadRow, count: ByteCounter) -> Iterator[tuple[str, Any]]:
    with open_binary(path) as fh:
        raw = fh.read()
    count(len(raw))
    text = _decode(raw, str(path), on_bad)
    if text is None:
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    yield from ((f"{path}[{index}]", row) for index, row in enumerate(rows))
