"""Rolling log-likelihood perplexity against lm-eval's window scheme, on the bigram stub of test_scoring.py.

    .venv/bin/python -m pytest -q tests/lm/test_perplexity.py
"""

from __future__ import annotations

import math
import re

import pytest

from tests.lm.test_scoring import BOS, TOK, TOLERANCE, hand_ll, logp, stub_scorer
from utils.lm.documents import RollingDocument
from utils.lm.perplexity import rolling_loglikelihood, rolling_windows


def test_rolling_windows_match_lm_eval() -> None:
    tokens, prefix = list(range(10)), 99
    # get_rolling_token_windows(context_len=1) + make_disjoint_window, max_seq_len 4
    assert rolling_windows(tokens, prefix, 4) == [([99], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
    # context_len 2 = stride 3
    assert rolling_windows(tokens, prefix, 4, context_len=2) == [([99], [0, 1, 2, 3]), ([2, 3], [4, 5, 6]),
                                                                  ([5, 6], [7, 8, 9])]
    assert rolling_windows([5], prefix, 4) == [([99], [5])]
    assert rolling_windows([], prefix, 4) == []


@pytest.mark.parametrize("stride", [None, 3])
def test_rolling_loglikelihood_and_perplexities(stride: int | None) -> None:
    texts = ["abc de.xyz Qa:b", "a", "zz yy xx ee dd cc bb aa"]
    result = rolling_loglikelihood(stub_scorer(batch_size=3, max_length=5), texts, stride=stride)
    # A bigram model sees the previous token in every window, so the windows do not change the sum.
    expected = [hand_ll(t[0], t[1:]) + logp(BOS, TOK.encode(t[0])[0]) for t in texts]
    assert result.loglikelihoods == pytest.approx(expected, abs=TOLERANCE)
    assert result.tokens == [len(t) for t in texts]
    total = sum(expected)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    num_bytes = sum(len(t.encode()) for t in texts)
    assert result.word_perplexity == pytest.approx(math.exp(-total / words))
    assert result.byte_perplexity == pytest.approx(math.exp(-total / num_bytes))
    assert result.bits_per_byte == pytest.approx(-total / num_bytes / math.log(2))
    assert result.token_perplexity == pytest.approx(math.exp(-total / sum(len(t) for t in texts)))


def test_rolling_documents_count_their_own_words_and_bytes() -> None:
    doc = RollingDocument(text="ab", words=10, bytes=20)  # e.g. a wikitext page counted before detokenizing
    result = rolling_loglikelihood(stub_scorer(), [doc])
    assert (result.words, result.bytes) == ([10], [20])
    assert result.word_perplexity == pytest.approx(math.exp(-result.loglikelihoods[0] / 10))
