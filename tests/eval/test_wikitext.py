"""WikiText-2 pages as lm-eval's wikitext task sees them: its detokenizer, page split and word counts.

    .venv/bin/python -m pytest -q tests/eval/test_wikitext.py
"""

from __future__ import annotations

import re
from pathlib import Path

from utils.eval.wikitext import load_wikitext_documents, split_wikitext_pages, wikitext_detokenizer
from utils.lm.documents import count_words


def test_wikitext_detokenizer_on_a_known_string() -> None:
    page = " = Homarus gammarus = \n \n The lobster 's claws , 1 @,@ 000 @-@ year ( 24 in ) . \n"
    assert wikitext_detokenizer(page) == " = Homarus gammarus =\n\nThe lobster's claws, 1,000-year (24 in).\n"
    assert wikitext_detokenizer(" = = Sub = = \n") == " == Sub ==\n"


def test_word_count_is_lm_eval_split_count() -> None:
    assert count_words(" a b\n") == 4  # re.split(r"\s+") keeps the empty edges: ['', 'a', 'b', '']


def test_split_pages_at_top_level_headings_only() -> None:
    text = " \n = First = \n \n Text . \n = = Section = = \n More . \n = Second = \n Body . \n"
    pages = split_wikitext_pages(text)
    assert pages == [" = First = \n \n Text . \n = = Section = = \n More . ", " = Second = \n Body . \n"]


def test_shared_wikitext_tokens_file_splits_into_articles(shared_data: Path) -> None:
    path = shared_data / "wikitext-2/wiki.valid.tokens"
    text = path.read_text(encoding="utf-8")
    headings = re.findall(r"^ = [^=].* = $", text, flags=re.MULTILINE)
    documents = load_wikitext_documents(shared_data)  # finds wikitext-2/wiki.valid.tokens
    assert len(documents) == len(headings) == 60
    pages = split_wikitext_pages(text)
    assert "\n".join(pages) == text.split("\n", 1)[1]  # nothing lost but the blank first line
    assert pages[0].startswith(" = Homarus gammarus = \n")
    first = documents[0]
    assert first.text == wikitext_detokenizer(pages[0])
    # Counted on the original page, as lm-eval's wikitext process_results does, not on the detokenized text.
    assert (first.words, first.bytes) == (len(re.split(r"\s+", pages[0])), len(pages[0].encode("utf-8")))
    assert first.words != count_words(first.text)
