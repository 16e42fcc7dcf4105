"""Cleaning, each rule on text that must trip it and text that must pass."""

from __future__ import annotations

import random
import re
import unicodedata

import ftfy
import pytest

from tests.conftest import story_texts
from utils.data import cleaning
from utils.data.cleaning import CleaningOptions, clean_text, split_long_text

# What each step can match or change: mojibake, entities, escapes, controls, odd spaces, fences, URL pieces.
TRICKY = "ab \t\n\r&<>`~:/.wW\x1b\x00\x0c\x7f\x85\u00a0\u2003\u3000é\u0301’“ﬁＡÃ©"


def test_cleaning_repairs_and_strips() -> None:
    raw = "Caf\u00c3\u00a9 \x00bell\x07\r\nvisit https://example.com/x?y=1 now\n\n\n\n```python\nprint(1)\n```\nend   here"
    assert clean_text(raw, CleaningOptions()) == "Café bell\nvisit now\n\nend here"


def test_cleaning_options_keep_urls_and_code() -> None:
    raw = "see www.example.org/page\n```\ncode\n```"
    kept = clean_text(raw, CleaningOptions(remove_urls=False, remove_code_blocks=False))
    assert "www.example.org/page" in kept and "code" in kept


def test_nfc_normalisation() -> None:
    assert clean_text("Cafe\u0301", CleaningOptions(fix_unicode=False)) == "Caf\u00e9"


def test_split_long_text_respects_limit_and_keeps_words() -> None:
    text = "\n".join(f"line {i} " + "word " * 20 for i in range(50))
    pieces = split_long_text(text, 500)
    assert all(len(p) <= 500 for p in pieces) and len(pieces) > 1
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())
    assert split_long_text("x" * 1200, 500) == ["x" * 500, "x" * 500, "x" * 200]


def _every_step(text: str, options: CleaningOptions) -> str:
    """clean_text with every step applied unconditionally: what its skip tests must not change."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = ftfy.fix_text(text, normalization="NFC") if options.fix_unicode else unicodedata.normalize("NFC", text)
    text = cleaning._CONTROL_RE.sub("", text)
    if options.remove_code_blocks:
        text = cleaning._FENCED_CODE_RE.sub("", text)
    if options.remove_urls:
        text = cleaning._URL_RE.sub("", text)
    text = re.sub(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+", " ", text)
    text = cleaning._SPACE_AROUND_NEWLINE_RE.sub("\n", text)
    return cleaning._MANY_NEWLINES_RE.sub("\n\n", text).strip()


@pytest.mark.parametrize("options", [CleaningOptions(), CleaningOptions(False, False, False)])
def test_skipped_steps_change_nothing(options: CleaningOptions) -> None:
    rng = random.Random(11)
    texts = ["".join(rng.choice(TRICKY) for _ in range(rng.randrange(1, 60))) for _ in range(20_000)]
    texts += story_texts(200) + ["visit WWW.Example.com today", "a ``` b\n```\n c", "x &amp; y", "\x1b[31mred"]
    for text in texts:
        assert clean_text(text, options) == _every_step(text, options), repr(text)
