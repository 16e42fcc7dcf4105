"""The one JSON row reader: the same rows and locations from every spelling of a file, and one rule for bad rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from utils.core.errors import DataError
from utils.core.records import is_record_file, iter_records, read_records

ROWS = [{"text": "one"}, {"text": "two"}, {"text": "three"}]


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("name", ["r.jsonl", "r.ndjson", "r.json", "r.jsonl.gz", "r.json.gz"])
def test_json_lines_under_every_name_give_the_same_rows_and_line_locations(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, _lines(ROWS[:2]) + b"\n" + _lines(ROWS[2:]))  # a blank line is skipped
    assert list(iter_records(path)) == [(f"{path}:1", ROWS[0]), (f"{path}:2", ROWS[1]), (f"{path}:4", ROWS[2])]


@pytest.mark.parametrize("name", ["r.json", "r.json.gz"])
def test_a_json_array_gives_indexed_locations(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, b"  \n" + json.dumps(ROWS, indent=2).encode())
    assert list(iter_records(path)) == [(f"{path}[{i}]", row) for i, row in enumerate(ROWS)]
    assert read_records(path) == ROWS


def test_a_bad_line_stops_the_read_by_default_and_is_skipped_when_the_caller_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl.gz", _lines(ROWS[:1]) + b"{not json\n" + b"\xff\xfe\n" + _lines(ROWS[1:]))
    with pytest.raises(DataError, match=f"{path}:2: invalid JSON"):
        list(iter_records(path))
    bad: list[tuple[str, str]] = []
    rows = [row for _, row in iter_records(path, on_bad=lambda where, reason, message: bad.append((where, reason)))]
    assert rows == ROWS and bad == [(f"{path}:2", "invalid_json"), (f"{path}:3", "invalid_utf8")]


def test_an_array_that_does_not_parse_is_an_error_even_for_a_caller_that_skips(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.json", b'[{"text": "a"},\n {"text": ]')
    with pytest.raises(DataError, match=r"r.json: invalid JSON at line 2 column"):
        list(iter_records(path, on_bad=lambda *_: None))


def test_a_pretty_printed_object_in_a_json_file_says_what_a_json_file_may_hold(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.json", json.dumps({"data": ROWS}, indent=2).encode())
    with pytest.raises(DataError, match="r.json:1: invalid JSON .*one JSON array of rows, or one JSON value per line"):
        list(iter_records(path))


def test_bytes_are_counted_uncompressed_and_other_suffixes_are_refused(tmp_path: Path) -> None:
    data = _lines(ROWS)
    seen: list[int] = []
    list(iter_records(_write(tmp_path / "r.jsonl.gz", data), count_bytes=seen.append))
    assert sum(seen) == len(data)
    assert is_record_file(tmp_path / "x.JSONL.GZ") and not is_record_file(tmp_path / "x.txt")
    with pytest.raises(DataError, match="not a JSON row file"):
        list(iter_records(_write(tmp_path / "r.txt", data)))
