"""Stage 01 end to end: outputs, determinism, idempotence, atomic replacement, tokenizer reuse, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import story_texts
from utils.core.errors import ConfigError, DataError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.lm.shards import read_shard
from utils.lm.tokenizer import SentencePieceEncoder, load_tokenizer, tokenizer_sha256

REPO = Path(__file__).resolve().parents[2]
EXPECTED_FILES = {"DATA_CARD.md", "config.resolved.json", "manifest.json", "meta.json", "stats.json", "tokenizer",
                  "train_00000.bin", "val_00000.bin"}


def _local(tmp_path: Path, corpus: Path, **overrides) -> DataConfig:
    values = dict(name="corpus", source="local", input_path=str(corpus), vocab_size=400, num_workers=0,
                  output_dir=str(tmp_path / "processed"))
    values.update(overrides)
    return DataConfig(**values)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def test_outputs_are_complete_and_consistent(tmp_path: Path, jsonl_corpus: Path) -> None:
    out = prepare_dataset(_local(tmp_path, jsonl_corpus))
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    manifest = json.loads((out / "manifest.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    sha = tokenizer_sha256(out / "tokenizer")
    assert manifest["tokenizer"]["sha256"] == sha and manifest["dtype"] == "uint16"
    assert stats["documents"]["read"] == 300 and stats["documents"]["train"] + stats["documents"]["val"] == 300
    assert stats["documents"]["val"] == 6  # 2 % of 300, chosen by content hash
    encoder = SentencePieceEncoder(out / "tokenizer")
    for split in ("train", "val"):
        tokens = np.concatenate([read_shard(out / s["file"], sha) for s in manifest["splits"][split]["shards"]])
        assert len(tokens) == manifest["splits"][split]["tokens"] == stats["tokens"][split]
        assert (tokens == encoder.bos_id).sum() == (tokens == encoder.eos_id).sum() == stats["documents"][split]
    # The shards decode back to the corpus text, and HF ids equal SentencePiece ids on it.
    train = np.concatenate([read_shard(out / s["file"]) for s in manifest["splits"]["train"]["shards"]])
    first_doc = train[1:int(np.argmax(train == encoder.eos_id))].tolist()
    tokenizer = load_tokenizer(out / "tokenizer")
    text = tokenizer.decode(first_doc)
    assert text in set(story_texts(300))
    assert tokenizer(text)["input_ids"] == first_doc
    assert "| read | 300 |" in (out / "DATA_CARD.md").read_text()
    assert json.loads((out / "config.resolved.json").read_text())["vocab_size"] == 400
    assert json.loads((out / "meta.json").read_text())["tokenizer_sha256"] == sha


def test_rerun_is_a_no_op_and_force_is_byte_identical(tmp_path: Path, jsonl_corpus: Path) -> None:
    config = _local(tmp_path, jsonl_corpus)
    out = prepare_dataset(config)
    first, meta_mtime = _shard_bytes(out), (out / "meta.json").stat().st_mtime_ns
    prepare_dataset(config)
    assert (out / "meta.json").stat().st_mtime_ns == meta_mtime  # nothing was rebuilt
    prepare_dataset(replace(config, force=True, num_workers=2))  # worker processes change nothing either
    assert (out / "meta.json").stat().st_mtime_ns != meta_mtime
    assert _shard_bytes(out) == first


def test_changed_config_is_an_error_and_keeps_the_old_output(tmp_path: Path, jsonl_corpus: Path) -> None:
    config = _local(tmp_path, jsonl_corpus)
    out = prepare_dataset(config)
    before = _shard_bytes(out)
    with pytest.raises(ConfigError, match="different config.*--force"):
        prepare_dataset(replace(config, min_chars=60))
    # A forced rebuild that fails midway (vocab too large for the corpus) leaves the old output intact.
    with pytest.raises(ConfigError, match="vocab_size"):
        prepare_dataset(replace(config, vocab_size=50000, force=True))
    assert _shard_bytes(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["corpus"]  # no temporary directories left


def test_dedup_counts_in_stats(tmp_path: Path) -> None:
    stories = story_texts(200, seed=11)
    rows = stories + stories[:20] + [s.replace(".", "!", 1) + " Then it rained." for s in stories[20:30]]
    corpus = tmp_path / "dups.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    stats = json.loads((prepare_dataset(_local(tmp_path, corpus)) / "stats.json").read_text())
    assert stats["dropped"]["exact_duplicate"] == 20
    assert stats["dropped"]["near_duplicate"] >= 8
    assert stats["documents"]["kept"] <= 202


def test_tokenizer_reuse_records_sha_and_rejects_conflicting_vocab(tmp_path: Path, jsonl_corpus: Path) -> None:
    first = prepare_dataset(_local(tmp_path, jsonl_corpus))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": t}) + "\n" for t in story_texts(100, seed=99)))
    config = _local(tmp_path, other, name="other", vocab_size=None, tokenizer_path=str(first / "tokenizer"))
    second = prepare_dataset(config)
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(first / "tokenizer")
    assert manifest["tokenizer"]["reused_from"] == str(first / "tokenizer")
    with pytest.raises(ConfigError, match="conflicts with the tokenizer"):
        prepare_dataset(replace(config, name="third", vocab_size=512))


def test_empty_input_and_everything_filtered(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="the input is empty"):
        prepare_dataset(_local(tmp_path, empty))
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "too short"}\n' * 5)
    with pytest.raises(DataError, match="survived"):
        prepare_dataset(_local(tmp_path, short, name="short"))
    assert not (tmp_path / "processed" / "short").exists()


def test_strict_makes_bad_lines_fatal(tmp_path: Path, jsonl_corpus: Path) -> None:
    with jsonl_corpus.open("a") as fh:
        fh.write("{not json\n")
    stats = json.loads((prepare_dataset(_local(tmp_path, jsonl_corpus)) / "stats.json").read_text())
    assert stats["read_errors"] == {"invalid_json": 1}
    assert stats["read_error_locations"]["invalid_json"] == [f"{jsonl_corpus}:301"]
    with pytest.raises(DataError, match=":301: invalid JSON"):
        prepare_dataset(_local(tmp_path, jsonl_corpus, name="strict", strict=True))


def test_demo_source_writes_task_files(tmp_path: Path) -> None:
    config = DataConfig(name="demo", source="demo", demo_num_stories=400, vocab_size=400, num_workers=0,
                        output_dir=str(tmp_path))
    out = prepare_dataset(config)
    names = {p.name for p in (out / "demo").iterdir()}
    assert {"sft_train.json", "dpo_train.json", "mc_validation.jsonl", "stories.jsonl"} <= names
    assert json.loads((out / "stats.json").read_text())["documents"]["read"] == 400


def test_local_prose_config_on_shared_books(tmp_path: Path, shared_data: Path) -> None:
    books = shared_data / "prose" / "british-fiction"
    config = _local(tmp_path, books / "Austen_*.txt", name="austen", vocab_size=2000, max_documents=150)
    stats = json.loads((prepare_dataset(config) / "stats.json").read_text())
    assert stats["documents"]["read"] == 150 and stats["documents"]["kept"] > 100
    assert 3.0 < stats["bytes_per_token"] < 5.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/01_prepare_data.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_success_prints_outputs_and_next_command(tmp_path: Path, jsonl_corpus: Path) -> None:
    result = _cli("--source", "local", "--name", "c", "--input_path", str(jsonl_corpus), "--vocab_size", "400",
                  "--output_dir", str(tmp_path), "--num_workers", "0")
    assert result.returncode == 0, result.stderr
    assert "dataset ready in" in result.stderr and "next: make pretrain-tiny" in result.stderr


def test_cli_errors_exit_non_zero_with_message(tmp_path: Path) -> None:
    result = _cli("--source", "local", "--input_path", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path))
    assert result.returncode == 1 and "input path not found" in result.stderr and "Traceback" not in result.stderr
    result = _cli("--source", "local", "--output_dir", str(tmp_path))
    assert result.returncode == 2 and "needs input_path" in result.stderr


def test_input_path_alone_means_a_local_corpus_named_by_its_file(tmp_path: Path, jsonl_corpus: Path) -> None:
    result = _cli("--input_path", str(jsonl_corpus), "--vocab_size", "400", "--output_dir", str(tmp_path),
                  "--num_workers", "0")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())  # corpus.jsonl -> "corpus"
    assert manifest["dataset"] == "corpus" and not (tmp_path / "demo_tiny").exists()
    assert DataConfig(input_path="data/raw/books/*.txt").name == "books"
    assert DataConfig(input_path="my_corpus.jsonl.gz").name == "my_corpus"
    assert DataConfig(source="local", input_path="dir/").name == "dir"


def test_input_path_with_a_hub_config_says_to_add_source_local(tmp_path: Path, jsonl_corpus: Path) -> None:
    args = ["--config_path", "config/datasets/openwebtext.json", "--input_path", str(jsonl_corpus),
            "--output_dir", str(tmp_path)]
    result = _cli(*args)
    assert result.returncode == 2 and "add --source local" in result.stderr
    fixed = _cli(*args, "--source", "local", "--vocab_size", "400", "--num_workers", "0")  # the suggested command
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "openwebtext" / "manifest.json").is_file()


def test_bytelevel_tokenizer_option(tmp_path: Path, jsonl_corpus: Path) -> None:
    out = prepare_dataset(_local(tmp_path, jsonl_corpus, tokenizer_type="bytelevel", vocab_size=600))
    tokenizer_dir = out / "tokenizer"
    assert not (tokenizer_dir / "tokenizer.model").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(tokenizer_dir)
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok) == 600 and [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    text = "Naïve café — 東京 🎉\n\tindented  twice"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert 0 not in ids and tok.decode(ids) == text  # bytes: nothing is unknown, the round trip is exact
    train = read_shard(out / manifest["splits"]["train"]["shards"][0]["file"], manifest["tokenizer"]["sha256"])
    first_doc = train[1:int(np.argmax(train == 2))]
    assert train[0] == 1 and len(first_doc) > 5  # BOS ids EOS, framed as with SentencePiece
    decoded = tok.decode(first_doc.tolist())
    assert tok(decoded, add_special_tokens=False)["input_ids"] == first_doc.tolist()  # pipeline ids == HF ids
