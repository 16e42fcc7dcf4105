"""Tests for utils/lm/tokenizer.py: HF ids == SentencePiece ids, lossless round trip, specials, ChatML, determinism.

    .venv/bin/python -m pytest -q tests/lm/test_tokenizer.py
"""

import os
import random
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from utils.core.errors import ConfigError, DataError
from utils.lm.templates import CHATML_JINJA, IM_END, IM_START
from utils.lm.tokenizer import (
    SPM_MODEL_FILE,
    SentencePieceEncoder,
    load_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)

SMALL_VOCAB = 512
AUSTEN_VOCAB = 1000
SYNTHETIC_LINES = 2000
AUSTEN = Path(os.environ.get("LUMI_DATA_DIR", "/nonexistent")) / "prose/british-fiction/Austen_Emma.txt"

# Layout that breaks naive SentencePiece -> HF conversions: leading/multiple spaces, tabs, blank lines, digits,
# punctuation, emoji and CJK (byte fallback for unseen characters), accented letters.
SAMPLE = """Emma Woodhouse, handsome, clever, and rich; she was 21 years old.
  two leading spaces, then   three inside and a trailing one 
\tA tab-indented line\twith\ttabs, and 3.14159 or 1,000,000 (digits split).

    def f(x):  # four-space indent
        return x ** 2 + 42

Emoji 😀🎉👍🏽 and CJK 你好，世界！日本語のテキスト 한국어
Accents: naïve café, Ærøskøbing, Straße, São Paulo, Ωmega — “quotes” ‘single’ … end.
"""


def _synthetic_corpus() -> list[str]:
    """Deterministic pseudo-English, so the always-on tests need no data files."""
    rng = random.Random(0)
    syllables = ["th", "e", "an", "in", "er", "on", "re", "at", "ou", "st", "ha", "ing", "ed", "wo", "ly", "s", "a"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(300)]
    lines = []
    for _ in range(SYNTHETIC_LINES):
        line = " ".join(rng.choices(words, k=rng.randint(4, 14)))
        indent = " " * rng.choice([0, 0, 0, 2, 4])
        lines.append(f"{indent}{line.capitalize()} {rng.randint(0, 9999)}{rng.choice('.,;!?')}")
    return lines + SAMPLE.splitlines()


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _probe_texts() -> list[str]:
    """Each sample line and the whole multi-line sample (newlines only ever appear via byte fallback)."""
    return SAMPLE.splitlines() + [SAMPLE]


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_lines(tmp_path_factory.mktemp("sample") / "sample.txt", _synthetic_corpus())


@pytest.fixture(scope="module")
def tok_dir(sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(sample_path, tmp_path_factory.mktemp("tok"), vocab_size=SMALL_VOCAB)


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    return load_tokenizer(tok_dir)


def _assert_hf_matches_spm(tok, tok_dir: Path, texts: list[str]) -> None:
    spm_ids = SentencePieceEncoder(tok_dir).encode_batch(texts)
    hf_ids = tok(texts)["input_ids"]  # add_special_tokens defaults to True: it must still add nothing
    for text, hf, sp in zip(texts, hf_ids, spm_ids, strict=True):
        assert hf == sp, f"HF and SentencePiece ids differ on {text!r}"


def test_hf_ids_match_spm_on_sample(tok, tok_dir: Path) -> None:
    _assert_hf_matches_spm(tok, tok_dir, _probe_texts())


@pytest.mark.skipif(not AUSTEN.is_file(), reason=f"{AUSTEN} is absent (shared data not checked out)")
def test_hf_ids_match_spm_on_austen(tmp_path: Path) -> None:
    lines = [line for line in AUSTEN.read_text(encoding="utf-8").splitlines() if line.strip()]
    austen_dir = train_tokenizer(_write_lines(tmp_path / "emma.txt", lines), tmp_path / "tok", AUSTEN_VOCAB)
    austen_tok = load_tokenizer(austen_dir)
    _assert_hf_matches_spm(austen_tok, austen_dir, lines + _probe_texts())
    assert all(austen_tok.decode(ids) == line for line, ids in zip(lines, austen_tok(lines)["input_ids"]))


def test_round_trip_is_lossless(tok) -> None:
    for text in _probe_texts():
        ids = tok.encode(text)
        assert tok.unk_token_id not in ids, f"byte fallback should leave no <unk> in {text!r}"
        assert tok.decode(ids) == text


def test_special_tokens(tok, tok_dir: Path) -> None:
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    for piece in (IM_START, IM_END):
        assert len(tok.encode(piece)) == 1
        assert tok.convert_ids_to_tokens(tok.encode(piece)) == [piece]
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False), "HF must not add BOS/EOS itself"
    encoder = SentencePieceEncoder(tok_dir)
    assert (encoder.vocab_size, encoder.bos_id, encoder.eos_id) == (len(tok), 1, 2)
    assert len(tok) == SMALL_VOCAB


def test_chatml_template(tok) -> None:
    messages = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == tok.encode(text)


def test_autotokenizer_loads_same_tokenizer(tok, tok_dir: Path) -> None:
    auto = AutoTokenizer.from_pretrained(tok_dir)
    assert auto.is_fast
    assert auto.special_tokens_map == tok.special_tokens_map
    assert auto.all_special_tokens == tok.all_special_tokens
    assert auto.chat_template == CHATML_JINJA
    texts = _probe_texts()
    assert auto(texts)["input_ids"] == tok(texts)["input_ids"]


def test_training_is_deterministic(sample_path: Path, tok_dir: Path, tmp_path: Path) -> None:
    # A copy at another path must give the same bytes too: the model must not record where its sample lived.
    moved_sample = Path(shutil.copy(sample_path, tmp_path / "moved.txt"))
    again = train_tokenizer(moved_sample, tmp_path / "again", vocab_size=SMALL_VOCAB)
    assert (again / SPM_MODEL_FILE).read_bytes() == (tok_dir / SPM_MODEL_FILE).read_bytes()
    assert tokenizer_sha256(again) == tokenizer_sha256(tok_dir)
    assert (again / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()


def test_too_small_sample_names_vocab_size(tmp_path: Path) -> None:
    tiny = _write_lines(tmp_path / "tiny.txt", ["a tiny sample", "with few lines"] * 5)
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(tiny, tmp_path / "tok", vocab_size=SMALL_VOCAB * 8)


def test_missing_tokenizer_files_name_the_path(tmp_path: Path) -> None:
    for load in (load_tokenizer, tokenizer_sha256, SentencePieceEncoder):
        with pytest.raises(DataError, match=re.escape(str(tmp_path))):
            load(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "absent")
