"""Readers: every format, bad records counted with their location (or fatal under strict), clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from utils.core.errors import DataError
from utils.core.hub import PublicDataset
from utils.data.sources import ReadStats, SourceOptions, iter_hub_documents, iter_local_documents, resolve_input_files


def _read(files: list[Path], **options) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    return list(iter_local_documents(files, stats, SourceOptions(**options))), stats


def test_formats_directories_globs_and_gzip(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "from json"}]))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"text": "from gzip"}) + "\n")
    pq.write_table(pa.table({"text": ["from parquet"], "id": [1]}), tmp_path / "e.parquet")
    (tmp_path / "notes.csv").write_text("ignored")
    files = resolve_input_files(str(tmp_path))
    assert [f.name for f in files] == ["a.txt", "b.jsonl", "c.json", "d.jsonl.gz", "e.parquet"]
    docs, stats = _read(files)
    assert docs == ["first paragraph\nstill first\n", "second paragraph\n", "from jsonl", "from json",
                    "from gzip", "from parquet"]
    assert stats.documents == 6
    assert resolve_input_files(str(tmp_path / "*.json*")) == [tmp_path / "b.jsonl", tmp_path / "c.json",
                                                               tmp_path / "d.jsonl.gz"]


def test_text_units(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("l1\nl2\n\nl3\n")
    assert _read([path], text_unit="line")[0] == ["l1\n", "l2\n", "l3\n"]
    assert _read([path], text_unit="file")[0] == ["l1\nl2\n\nl3\n"]


def test_paragraph_blocks_split_before_block_chars(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("".join(f"line number {i:03d}\n" for i in range(100)))  # 16 chars a line, no blank lines
    docs, stats = _read([path], block_chars=100)
    assert all(len(d) <= 100 for d in docs) and "".join(docs) == path.read_text()
    assert stats.capped == 0


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="input path not found: .*nothing.*--input_path"):
        resolve_input_files(str(tmp_path / "nothing"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="no supported files"):
        resolve_input_files(str(tmp_path))


def test_invalid_json_line_counted_with_line_number_or_fatal_when_strict(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok one"}\n{"text": broken\n{"text": "ok two"}\n')
    docs, stats = _read([path])
    assert docs == ["ok one", "ok two"]
    assert stats.skipped == {"invalid_json": 1} and stats.skipped_examples["invalid_json"] == [f"{path}:2"]
    with pytest.raises(DataError, match=f"{path}:2: invalid JSON"):
        _read([path], strict=True)


def test_wrong_text_field_lists_fields_present(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"content": "x", "id": 1}\n')
    with pytest.raises(DataError, match="text field 'text' not found; fields present: content, id"):
        _read([path])
    assert _read([path], text_field="content")[0] == ["x"]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="columns present: body"):
        _read([tmp_path / "p.parquet"])


def test_non_utf8_bytes_are_counted_and_skipped(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"good paragraph\n\nbad \xff\xfe bytes\n\nanother good one\n")
    docs, stats = _read([txt])
    assert docs == ["good paragraph\n", "another good one\n"] and stats.skipped == {"invalid_utf8": 1}
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "\xc3\x28"}\n')
    docs, stats = _read([jsonl])
    assert docs == ["fine"] and stats.skipped_examples["invalid_utf8"] == [f"{jsonl}:2"]


def test_huge_single_document_is_capped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    huge = "word " * (10 * 1024 * 1024)  # a 50 MB document on one line
    path.write_text(json.dumps({"text": huge}) + "\n")
    del huge
    docs, stats = _read([path], max_doc_chars=1_000_000)
    assert len(docs) == 1 and len(docs[0]) == 1_000_000 and stats.capped == 1


WIKITEXT = PublicDataset("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", "train", ("wikitext-2/*.raw",))


def test_streamed_hub_source_offline_fails_at_once_naming_dataset_and_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"Salesforce/wikitext, wikitext-2-raw-v1.*LUMI_DATA_DIR/wikitext-2/\*\.raw"):
        next(iter_hub_documents(WIKITEXT, True, ReadStats(), SourceOptions()))


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(DataError, match="(?s)unreachable.*roneneldan/TinyStories"):
        tiny = PublicDataset("tinystories", "roneneldan/TinyStories", None, "train", ("tinystories/*.txt",))
        next(iter_hub_documents(tiny, True, ReadStats(), SourceOptions()))
