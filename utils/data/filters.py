"""Document filters: length, language (py3langid's model, which ships in its package, batched in utils/data/langid.py),
and Gopher-style quality heuristics. `drop_reasons` returns each text's first failing rule's name, so every drop is
counted by reason."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from utils.data.langid import classify_batch

LANGUAGE_BATCH = 256  # texts per language-identification batch: its byte matrices stay a few MB
# Characters that are rare in prose and common in markup, code and spam.
_SYMBOL_RE = re.compile(r"[#@*\\/&%$^~`|<>{}=+_\[\]]")
# Gopher's rule: real English text contains several of these function words.
STOP_WORDS = frozenset(
    "the be to of and that have with a an in is it for on as was he she they you i at by this not but from".split()
)


@dataclass(frozen=True)
class FilterOptions:
    min_chars: int = 50
    max_chars: int = 10_000
    language: str | None = "en"
    language_threshold: float = 0.7
    language_sample_chars: int = 2000  # classifying a prefix is as accurate for prose and 3-5x faster
    max_symbol_ratio: float = 0.1
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    min_stop_words: int = 2


def drop_reasons(texts: Sequence[str], options: FilterOptions) -> list[str | None]:
    """For each text, the name of the first rule it fails, or None to keep it. Language identification runs once
    for the texts that reach it, in length-sorted batches (utils/data/langid.py)."""
    reasons = [_cheap_reason(text, options) for text in texts]
    if options.language:
        pending = sorted((i for i, reason in enumerate(reasons) if reason is None), key=lambda i: len(texts[i]))
        for start in range(0, len(pending), LANGUAGE_BATCH):
            chunk = pending[start:start + LANGUAGE_BATCH]
            found = classify_batch([texts[i] for i in chunk], options.language_sample_chars)
            for i, (language, probability) in zip(chunk, found):
                if language != options.language or probability < options.language_threshold:
                    reasons[i] = "language"
    if options.min_stop_words:  # after the language rule: it only makes sense for English
        for i, reason in enumerate(reasons):
            if reason is None and _count_stop_words(texts[i].split(), options.min_stop_words) < options.min_stop_words:
                reasons[i] = "few_stop_words"
    return reasons


def drop_reason(text: str, options: FilterOptions) -> str | None:
    return drop_reasons([text], options)[0]


def _cheap_reason(text: str, options: FilterOptions) -> str | None:
    if len(text) < options.min_chars:
        return "too_short"
    if len(text) > options.max_chars:
        return "too_long"
    if len(_SYMBOL_RE.findall(text)) > options.max_symbol_ratio * len(text):
        return "symbol_ratio"
    words = text.split()
    mean_length = sum(map(len, words)) / max(len(words), 1)
    if not options.min_mean_word_length <= mean_length <= options.max_mean_word_length:
        return "mean_word_length"
    return None


def _count_stop_words(words: list[str], enough: int) -> int:
    count = 0
    for word in words:
        if word.lower().strip(".,;:!?\"'()") in STOP_WORDS:
            count += 1
            if count >= enough:
                break
    return count
