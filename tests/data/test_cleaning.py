"""Cleaning, each rule on text that must trip it and text that must pass."""

from __future__ import annotations

from utils.data.cleaning import CleaningOptions, clean_text, split_long_text


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
