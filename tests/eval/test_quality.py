"""Smoke-response heuristics, each on inputs built to trip them."""

from __future__ import annotations

from utils.eval.quality import assess_response

PROMPT = "Write a short story about a cat who finds a lost key."
GOOD = ("A small grey cat named Tom found a lost key under the old bench in the garden. He carried it home, and "
        "the girl who had dropped it smiled and gave him a warm bowl of milk.")


def test_good_response_scores_high() -> None:
    signals = assess_response(PROMPT, GOOD, 20, 200)
    assert signals.score > 0.85 and signals.relevance == 0.75 and signals.ending == 1.0  # all but finds/found


def test_loop_scores_low_on_repetition_and_distinct() -> None:
    loop = "the cat the key the cat the key " * 10
    signals = assess_response(PROMPT, loop, 20, 200)
    assert signals.repetition < 0.2 and signals.distinct < 0.2 and signals.score < 0.6


def test_garbage_characters_and_unfinished_and_empty() -> None:
    assert assess_response(PROMPT, "cat key \ufffd\ufffd\ufffd ###@@@ {{}} " * 3).clean < 0.7
    assert assess_response(PROMPT, "The cat found the key and then").ending == 0.5
    empty = assess_response(PROMPT, "")
    assert empty.length == 0.0 and empty.clean == 0.0 and empty.score < 0.5


def test_length_and_relevance() -> None:
    assert assess_response(PROMPT, "Cat.", 20, 200).length == 1 / 20
    assert assess_response(PROMPT, "word " * 700, 20, 200).length == 0.0
    off_topic = assess_response(PROMPT, "The stock market rose sharply on Monday after the announcement.", 5, 200)
    assert off_topic.relevance == 0.0 and off_topic.score < assess_response(PROMPT, GOOD, 5, 200).score
