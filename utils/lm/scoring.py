"""Log-likelihood scoring of a causal LM, reproducing lm-evaluation-harness 0.4.13's `HFLM` (models/huggingface.py).

What we match, function by function:
* Tokenisation (`TemplateLM._encode_pair`, `TemplateLM.loglikelihood`, `HFLM.tok_encode`): trailing whitespace of
  the context moves to the continuation; whole = encode(context + continuation), context = encode(context),
  continuation tokens = whole[len(context):]. An empty context becomes [prefix token] (BOS, or EOS when the
  tokenizer has no BOS: `HFLM.prefix_token_id`), unless the continuation already starts with that token.
* BOS: 0.4.13's `add_bos_token` defaults to None, which passes NO add_special_tokens argument, so the tokenizer's
  own default decides (`_add_special_kwargs`); a string that already starts with the BOS text is encoded without
  special tokens (`has_bos_prefix`). Lumi's tokenizer adds none, so nothing is prepended; a HF LLaMA tokenizer
  would prepend <s>. `add_bos_token=True/False` forces it, like `--model_args add_bos_token=...`. (Earlier 0.4.x
  releases defaulted to add_bos_token=False, so published numbers may differ for tokenizers that add BOS.)
* Batching (`HFLM._loglikelihood_tokens`): requests sorted by descending total length (the Collator's key),
  input = (context + continuation)[-(max_length + 1):][:-1] (left truncation), right padding, one forward per
  batch, the last len(continuation) logits gathered; is_greedy = every continuation token is the argmax.
  max_length defaults to the model config's n_positions / max_position_embeddings / n_ctx (`resolve_max_length`).
  Like lm-eval we pass no attention mask: with right padding a causal LM's real positions never see the pads.
  Differences that do not change the numbers: log_softmax runs in float32 (lm-eval: model dtype unless
  softmax_dtype is set), and one-token continuations sharing a context are not deduplicated (lm-eval's logits
  cache only saves compute).
* Multiple choice (`ConfigurableTask.process_results`): acc = argmax of summed loglikelihoods, acc_norm = argmax of
  ll / len(choice) in CHARACTERS of the choice string without the target delimiter, acc_bytes = argmax of
  ll / UTF-8 bytes of the same string; ties go to the first choice (np.argmax). stderr = `mean_stderr`
  (sample standard deviation / sqrt(n)); "N/A" (None here) for fewer than 2 items.
* Perplexity: utils/lm/perplexity.py, on this scorer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from utils.core.errors import ConfigError, DataError
from utils.lm.documents import MultipleChoiceItem

log = logging.getLogger(__name__)

TARGET_DELIMITER = " "  # lm-eval's default between context and choice
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer names a length
SEQLEN_CONFIG_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")  # resolve_max_length's order
TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length
PAD_TOKEN_ID = 0  # pad_and_concat pads with zeros; causal attention keeps pads out of real positions

TokenPair = tuple[list[int], list[int]]


@dataclass
class ScorerStats:
    """Running totals, for throughput: requests scored, forward passes, input tokens (with padding), seconds."""

    requests: int = 0
    forward_passes: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def resolve_max_length(model: Any, tokenizer: Any) -> int:
    """lm-eval `models/utils.py::resolve_max_length`: config attribute, tokenizer's model_max_length, 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in SEQLEN_CONFIG_ATTRS:
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if model_max_length is not None and model_max_length != TOKENIZER_INFINITY:
        return int(model_max_length)
    return DEFAULT_MAX_LENGTH


class LoglikelihoodScorer:
    """loglikelihood(context, continuation) -> (sum of continuation log-probs, is_greedy), batched like HFLM."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, max_length: int | None = None,
                 device: str | torch.device | None = None, add_bos_token: bool | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or resolve_max_length(model, tokenizer)
        self.add_bos_token = add_bos_token
        bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix_token_id: int = bos if bos is not None else tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(self.prefix_token_id)
        self.stats = ScorerStats()

    # ------------------------------------------------------------ tokenisation

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """`HFLM.tok_encode`: no add_special_tokens argument unless asked for, so the tokenizer's default applies."""
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and text.startswith(self._prefix_text):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        """(context tokens, continuation tokens) by `TemplateLM.loglikelihood` + `_encode_pair`."""
        if context == "":
            continuation_enc = self.tok_encode(continuation, add_special_tokens=False)
            if continuation_enc and continuation_enc[0] == self.prefix_token_id:
                return continuation_enc[:1], continuation_enc[1:]
            return [self.prefix_token_id], continuation_enc
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            # "Answer: " + "yes" must tokenize like "Answer:" + " yes": the space belongs to the next word.
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_enc = self.tok_encode(context)
        return context_enc, whole[len(context_enc):]

    # ------------------------------------------------------------ scoring

    def score(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(loglikelihood, is_greedy) per (context, continuation), in the order given."""
        return self.score_tokens([self.encode_pair(context, continuation) for context, continuation in requests])

    def score_tokens(self, requests: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """Score pre-tokenised (context, continuation) pairs; contexts must be non-empty."""
        for context_enc, continuation_enc in requests:
            self._check(context_enc, continuation_enc)
        # Longest first (the Collator's key): the first batch shows the peak memory, and padding stays small.
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][0] + requests[i][1]),
                                                            tuple(requests[i][0] + requests[i][1])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        start = time.perf_counter()
        for batch in _chunks(order, self.batch_size):
            for index, result in zip(batch, self._score_batch([requests[i] for i in batch]), strict=True):
                results[index] = result
        elapsed = time.perf_counter() - start
        self.stats.requests += len(requests)
        self.stats.seconds += elapsed
        log.debug("scored %d requests in %.2f s (%.1f requests/s)", len(requests), elapsed,
                  len(requests) / elapsed if elapsed else 0.0)
        return results  # type: ignore[return-value]  # every index was filled

    def _check(self, context_enc: list[int], continuation_enc: list[int]) -> None:
        if not context_enc:
            raise DataError("a request has no context tokens; use score() with an empty context string, which "
                            "conditions on the prefix token")
        if not continuation_enc:
            raise DataError("a request's continuation encodes to no tokens (empty choice?)")
        if len(continuation_enc) > self.max_length:
            raise DataError(f"a continuation of {len(continuation_enc)} tokens does not fit max_length "
                            f"{self.max_length}")

    def _score_batch(self, batch: list[TokenPair]) -> list[tuple[float, bool]]:
        inputs = [(context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
                  for context_enc, continuation_enc in batch]
        width = max(len(tokens) for tokens in inputs)
        input_ids = torch.full((len(inputs), width), PAD_TOKEN_ID, dtype=torch.long)
        for row, tokens in enumerate(inputs):
            input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        with torch.inference_mode():
            # No attention mask, as in lm-eval: pads only follow a row's real tokens, and causal attention never
            # lets a position see later ones. Without a mask SDPA also keeps its fused causal kernel; a padding
            # mask made long BoolQ batches 2-3x slower on CPU (batch x length x length scores materialised).
            logits = self.model(input_ids=input_ids.to(self.device)).logits
            self.stats.forward_passes += 1
            self.stats.tokens += input_ids.numel()
            results = []
            for row, (tokens, (_, continuation_enc)) in enumerate(zip(inputs, batch, strict=True)):
                length = len(continuation_enc)
                # Logits at positions len-contlen .. len-1 predict the continuation; pads lie beyond len.
                log_probs = logits[row, len(tokens) - length:len(tokens)].float().log_softmax(dim=-1)
                targets = torch.tensor(continuation_enc, dtype=torch.long, device=log_probs.device)
                is_greedy = bool((log_probs.argmax(dim=-1) == targets).all())
                results.append((float(log_probs.gather(1, targets[:, None]).sum()), is_greedy))
        return results


def _chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start:start + size]


# ---------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class ItemResult:
    id: str
    lls: list[float]
    is_greedy: list[bool]
    pred: int  # argmax ll
    pred_norm: int  # argmax ll / characters of the choice
    pred_bytes: int  # argmax ll / UTF-8 bytes of the choice
    gold: int
    correct: bool
    correct_norm: bool
    correct_bytes: bool


def _argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as np.argmax."""
    return max(range(len(values)), key=values.__getitem__)


def item_result(item: MultipleChoiceItem, scored: Sequence[tuple[float, bool]]) -> ItemResult:
    """`ConfigurableTask.process_results` for multiple_choice: acc, acc_norm (characters), acc_bytes."""
    lls = [ll for ll, _ in scored]
    pred = _argmax(lls)
    pred_norm = _argmax([ll / len(choice) for ll, choice in zip(lls, item.choices, strict=True)])
    pred_bytes = _argmax([ll / len(choice.encode("utf-8")) for ll, choice in zip(lls, item.choices, strict=True)])
    return ItemResult(id=item.id, lls=lls, is_greedy=[greedy for _, greedy in scored], pred=pred,
                      pred_norm=pred_norm, pred_bytes=pred_bytes, gold=item.gold, correct=pred == item.gold,
                      correct_norm=pred_norm == item.gold, correct_bytes=pred_bytes == item.gold)


def score_multiple_choice(items: Sequence[MultipleChoiceItem], scorer: LoglikelihoodScorer) -> list[ItemResult]:
    """One loglikelihood request per (item, choice): (context, " " + choice), all batched together."""
    requests = [(item.context, TARGET_DELIMITER + choice) for item in items for choice in item.choices]
    start = time.perf_counter()
    scored = scorer.score(requests)
    elapsed = time.perf_counter() - start
    results, offset = [], 0
    for item in items:
        results.append(item_result(item, scored[offset:offset + len(item.choices)]))
        offset += len(item.choices)
    log.info("scored %d items (%d requests) in %.1f s: %.2f items/s", len(items), len(requests), elapsed,
             len(items) / elapsed if elapsed else 0.0)
    return results


def mean_stderr(values: Sequence[float]) -> float | None:
    """lm-eval `mean_stderr`: sample standard deviation (divisor n - 1) / sqrt(n); None ("N/A") below 2 values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    sample_stddev = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))
    return sample_stddev / math.sqrt(len(values))


def aggregate(results: Sequence[ItemResult]) -> dict[str, float | int | None]:
    """acc, acc_norm, acc_bytes as means over items, each with lm-eval's stderr of the mean, and n."""
    if not results:
        raise DataError("no results to aggregate")
    summary: dict[str, float | int | None] = {}
    for metric, field in (("acc", "correct"), ("acc_norm", "correct_norm"), ("acc_bytes", "correct_bytes")):
        values = [float(getattr(result, field)) for result in results]
        summary[metric] = sum(values) / len(values)
        summary[f"{metric}_stderr"] = mean_stderr(values)
    summary["n"] = len(results)
    return summary
