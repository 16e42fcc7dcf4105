"""What the scorer reads, built by the benchmark loaders (stage 05, and pretraining's periodic HellaSwag): a
multiple-choice item and a rolling-perplexity document, with lm-eval's word and byte counts. No torch here, so the
loaders and a session's start-up stay light."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MultipleChoiceItem:
    id: str
    context: str
    choices: list[str]  # without the leading target delimiter
    gold: int


@dataclass(frozen=True)
class RollingDocument:
    """A perplexity document: `text` is scored; words and bytes are the units of word/byte perplexity."""

    text: str
    words: int
    bytes: int

    @classmethod
    def from_text(cls, text: str) -> RollingDocument:
        """lm-eval's default `count_words`/`count_bytes`, counted on the scored text itself."""
        return cls(text=text, words=count_words(text), bytes=count_bytes(text))


def count_words(text: str) -> int:
    """lm-eval's word count: pieces of re.split(r"\\s+"), so leading/trailing whitespace counts as an empty word."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))
