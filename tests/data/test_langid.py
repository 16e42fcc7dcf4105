"""Batched language identification equals py3langid's own classify, text by text, in one mixed batch."""

from __future__ import annotations

import pytest
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from tests.conftest import mirror_dir, story_texts
from utils.data.filters import FilterOptions
from utils.data.langid import classify_batch

SAMPLE_CHARS = FilterOptions().language_sample_chars
PROBABILITY_TOLERANCE = 1e-5  # float32 sums in another order
OTHER_LANGUAGES = [
    "Der alte Mann ging am Morgen auf den Markt und kaufte Brot für seine Familie.",
    "C'est une phrase française très simple, écrite pour le test.",
    "Il vecchio andò al mercato la mattina e comprò il pane per la sua famiglia.",
    "ЭТО РУССКИЙ ТЕКСТ, НАПИСАННЫЙ ЗАГЛАВНЫМИ БУКВАМИ",  # all caps: lowered first, as py3langid does
    "日本語のテキストです。", "Ελληνικά κείμενα για τη δοκιμή", "", "12345 !!! ???", "\ud83d\ude00 emoji only",
]


def _prose() -> list[str]:
    """Prose of 300-4,000 characters from the mirror's novels, when the mirror is there."""
    mirror = mirror_dir()
    if mirror is None:
        return []
    books = sorted((mirror / "prose" / "british-fiction").glob("*.txt"))[:3]
    text = " ".join(path.read_text(encoding="utf-8")[:60_000] for path in books)
    return [text[start:start + size] for start, size in zip(range(0, 150_000, 5_000), [300, 900, 2500, 4000] * 10)]


def test_labels_and_probabilities_equal_py3langid() -> None:
    texts = story_texts(200, seed=3) + OTHER_LANGUAGES + _prose()
    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    expected = [reference.classify(text[:SAMPLE_CHARS]) for text in texts]
    found = classify_batch(texts, SAMPLE_CHARS)
    assert [label for label, _ in found] == [label for label, _ in expected]
    for (_, probability), (_, want) in zip(found, expected):
        assert probability == pytest.approx(want, abs=PROBABILITY_TOLERANCE)
    assert {label for label, _ in found[200:206]} == {"de", "fr", "it", "ru", "ja", "el"}


def test_a_document_is_scored_the_same_alone_and_in_a_batch() -> None:
    texts = story_texts(10, seed=4) + OTHER_LANGUAGES
    alone = [classify_batch([text], SAMPLE_CHARS)[0] for text in texts]
    together = classify_batch(texts, SAMPLE_CHARS)
    assert [a[0] for a in alone] == [t[0] for t in together]
    assert [a[1] for a in alone] == pytest.approx([t[1] for t in together], abs=PROBABILITY_TOLERANCE)
