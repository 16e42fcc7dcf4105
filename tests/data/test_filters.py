"""Filters, each rule on text that must trip it and text that must pass."""

from __future__ import annotations

import pytest

from utils.data.filters import FilterOptions, drop_reason

GOOD = ("The old man walked to the market in the morning, and he bought bread for his family. "
        "It was a cold day, but the sun was shining over the hills.")


@pytest.mark.parametrize("text,reason", [
    ("Too short.", "too_short"),
    (GOOD * 100, "too_long"),
    ("{{#}} <<@@>> ## $$ %% [[ ]] || " * 5, "symbol_ratio"),
    ("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3, "mean_word_length"),
    ("Green apples, red cherries, yellow bananas, purple grapes, orange carrots, fresh herbs. " * 2,
     "few_stop_words"),
    ("Der alte Mann ging am Morgen auf den Markt und kaufte Brot für seine Familie. Es war ein kalter Tag, "
     "aber die Sonne schien über den Hügeln.", "language"),
])
def test_each_filter_rule(text: str, reason: str) -> None:
    assert drop_reason(text, FilterOptions()) == reason
    assert drop_reason(GOOD, FilterOptions()) is None


def test_language_filter_can_be_disabled() -> None:
    german = "Der alte Mann ging am Morgen auf den Markt und kaufte Brot für seine Familie, und es war kalt."
    assert drop_reason(german, FilterOptions(language=None, min_stop_words=0)) is None
