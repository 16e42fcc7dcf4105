"""Rolling log-likelihood perplexity, reproducing lm-evaluation-harness 0.4.13's `HFLM.loglikelihood_rolling`
(`utils.get_rolling_token_windows` with context_len=1, `utils.make_disjoint_window`) on the scorer of
utils/lm/scoring.py; aggregations `weighted_perplexity` (word/byte perplexity) and `bits_per_byte` from
api/metrics.py."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from utils.core.errors import ConfigError, DataError
from utils.lm.documents import RollingDocument
from utils.lm.scoring import LoglikelihoodScorer, TokenPair

log = logging.getLogger(__name__)


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int, context_len: int = 1) -> list[TokenPair]:
    """`utils.get_rolling_token_windows` followed by `utils.make_disjoint_window`: (context, targets) pairs.

    Every token is a target exactly once. The first window predicts the first max_length tokens after the prefix
    token; each later one predicts the next max_length - context_len + 1 tokens, conditioned on the context_len
    tokens before them, except the last (shorter) window, whose context is widened to fill max_length.
    """
    if not 1 <= context_len <= max_length:
        raise ConfigError(f"context_len must be in 1..max_length ({max_length}), got {context_len}")
    if not tokens:
        return []
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    windows = [([prefix_token] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        end = predicted + window_pred_len
        windows.append((tokens[end - max_length - 1:end - 1], tokens[end - window_pred_len:end]))
        predicted += window_pred_len
    return [(inputs[:len(inputs) - (len(targets) - 1)], targets) for inputs, targets in windows]


@dataclass(frozen=True)
class PerplexityResult:
    loglikelihoods: list[float]  # per document
    tokens: list[int]  # tokens scored per document
    words: list[int]
    bytes: list[int]
    token_perplexity: float
    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float


def rolling_loglikelihood(scorer: LoglikelihoodScorer, documents: Sequence[str | RollingDocument],
                          stride: int | None = None) -> PerplexityResult:
    """Whole-document loglikelihoods (`HFLM.loglikelihood_rolling`) and the perplexities lm-eval reports.

    A document's tokens (encoded like `tok_encode`, so a tokenizer that adds BOS adds it here too) are each predicted
    exactly once, in windows of at most max_length tokens: the first window predicts the first max_length tokens
    after the prefix token; each later one predicts the next `stride` tokens after the max_length - stride + 1
    tokens before them (the last, shorter chunk gets as much preceding context as fills the window). lm-eval uses
    stride = max_length (its context_len=1): disjoint max_length-token chunks, each conditioned only on the last
    token of the previous one. A smaller stride gives every prediction more context for about max_length / stride
    times the compute; it is not what lm-eval reports.

    Plain strings are counted as lm-eval's default task does (words and bytes of the scored text); wikitext passes
    `RollingDocument`s counted on the original page. Formulas (api/metrics.py): word_perplexity =
    exp(-sum ll / sum words), byte_perplexity = exp(-sum ll / sum bytes), bits_per_byte = -sum ll / sum bytes / ln 2;
    token_perplexity = exp(-sum ll / tokens scored).
    """
    stride = scorer.max_length if stride is None else stride
    if not 1 <= stride <= scorer.max_length:
        raise ConfigError(f"stride must be in 1..max_length ({scorer.max_length}), got {stride}")
    docs = [RollingDocument.from_text(doc) if isinstance(doc, str) else doc for doc in documents]
    if not docs:
        raise DataError("no documents to score")
    windows, owners, token_counts = [], [], []
    for index, doc in enumerate(docs):
        tokens = scorer.tok_encode(doc.text)
        doc_windows = rolling_windows(tokens, scorer.prefix_token_id, scorer.max_length,
                                      context_len=scorer.max_length - stride + 1)
        windows += doc_windows
        owners += [index] * len(doc_windows)
        token_counts.append(len(tokens))
    loglikelihoods = [0.0] * len(docs)
    for owner, (ll, _) in zip(owners, scorer.score_tokens(windows), strict=True):
        loglikelihoods[owner] += ll
    total_ll, total_tokens = sum(loglikelihoods), sum(token_counts)
    total_words, total_bytes = sum(d.words for d in docs), sum(d.bytes for d in docs)
    if not total_tokens or not total_bytes:
        raise DataError("the documents contain no tokens to score")
    result = PerplexityResult(
        loglikelihoods=loglikelihoods, tokens=token_counts, words=[d.words for d in docs],
        bytes=[d.bytes for d in docs], token_perplexity=math.exp(-total_ll / total_tokens),
        word_perplexity=math.exp(-total_ll / total_words), byte_perplexity=math.exp(-total_ll / total_bytes),
        bits_per_byte=-total_ll / total_bytes / math.log(2))
    log.info("perplexity over %d documents (%d windows, %d tokens): token %.3f, word %.3f, byte %.4f, bpb %.4f",
             len(docs), len(windows), total_tokens, result.token_perplexity, result.word_perplexity,
             result.byte_perplexity, result.bits_per_byte)
    return result
