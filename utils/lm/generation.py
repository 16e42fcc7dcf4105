"""The one text-generation engine: pretraining samples, evaluation smoke prompts, the chat REPL and the API server.

    gen = TextGenerator(loaded.model, loaded.tokenizer)
    stream = gen.stream(gen.encode("Once upon a time"), GenerationParams(temperature=0.7, seed=1, stop=("\\n",)))
    for delta in stream:          # text as it becomes final; never half a character, never part of a stop string
        print(delta, end="")
    stream.result                 # GenerationResult: text, token_ids, prompt_tokens, finish_reason

- KV cache: the prompt is encoded once, then one token per forward pass through a `DynamicCache`.
- Sampling math is transformers' own logits processors (repetition penalty, then temperature, top-k, top-p, in the
  order `generate` applies them), so a setting means here what it means in `generate`.
- Sampling draws from a `torch.Generator` seeded with `params.seed`: the same seed gives the same text, and the global
  RNG is never touched, so taking samples during training cannot change what the run does next (exact resume holds).
- Streaming never splits a character: an emoji or a CJK character arrives as several byte-fallback tokens
  (<0xF0><0x9F>...) that decode to U+FFFD until the last one, so text is released only once its decode no longer ends
  in U+FFFD (IncrementalDecoder, the prefix/read-offset scheme of TGI and vLLM). A tail that could be the start of a
  stop string is held back too. The deltas join to exactly `result.text`, which equals the tokenizer's decode of the
  tokens whenever they form valid UTF-8 (a model that emits broken byte runs gets U+FFFD in both, possibly placed
  differently, as in vLLM).
- Stop: EOS or a stop string that is a single special token (ChatML's <|im_end|>) ends generation by id; any other stop
  string by text, and the text returned excludes it. finish_reason is "stop", "length", or "cancelled" when the
  caller's `cancel` event was set (checked before every forward pass, so a cancelled generation frees its thread
  within one token).
- Generation never runs past the context window: max_new_tokens is capped at what the context has left.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

TEMPERATURE_MAX = 2.0  # OpenAI's and vLLM's upper bound
# Below this a temperature is greedy (vLLM's rule): dividing logits by 1e-250 overflows them to inf and NaN.
GREEDY_BELOW = 1e-5
SEED_LIMIT = 2**63
REPLACEMENT_CHAR = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence

FinishReason = Literal["stop", "length", "cancelled"]


class InvalidParam(ValueError):
    """A generation setting out of its range; `param` names the field so an API error can point at it."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param} {problem}")
        self.param, self.problem = param, problem


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1 = off
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            ("max_new_tokens", self.max_new_tokens >= 1, f"must be at least 1, got {self.max_new_tokens}"),
            ("temperature", 0.0 <= self.temperature <= TEMPERATURE_MAX,
             f"must be in [0, {TEMPERATURE_MAX:g}] (0 = greedy), got {self.temperature}"),
            ("top_k", self.top_k >= 0, f"must be 0 (off) or positive, got {self.top_k}"),
            ("top_p", 0.0 < self.top_p <= 1.0, f"must be in (0, 1], got {self.top_p}"),
            ("repetition_penalty", self.repetition_penalty > 0.0,
             f"must be positive (1 = off), got {self.repetition_penalty}"),
            ("seed", 0 <= self.seed < SEED_LIMIT, f"must be in [0, 2^63), got {self.seed}"),
            ("stop", all(self.stop), "must not contain an empty string (it would match before the first token)"),
        )
        for param, ok, problem in checks:
            if not ok:
                raise InvalidParam(param, problem)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def fresh_seed() -> int:
    """A seed for a request that names none."""
    return secrets.randbelow(SEED_LIMIT)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]  # every generated token, the closing EOS / stop token included
    prompt_tokens: int
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def context_length(model: Any) -> int:
    return int(model.config.max_position_embeddings)


def logits_processors(params: GenerationParams) -> Any:
    """transformers' processors for `params`, in `generate`'s order; greedy keeps only the repetition penalty."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.greedy:
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    return processors


@torch.inference_mode()  # per call, not around the generator: a generator may resume on another thread
def _next_logits(model: Any, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float()


@torch.inference_mode()
def _choose(logits: torch.Tensor, seen: torch.Tensor, processors: Any, generator: torch.Generator | None) -> int:
    scores = processors(seen, logits)
    if generator is None:
        return int(scores.argmax(dim=-1).item())
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def iter_token_ids(model: Any, prompt_ids: list[int], params: GenerationParams, stop_ids: set[int],
                   cancel: threading.Event | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (KV-cached); ends after a token in `stop_ids`, at the length limit, or
    before the next forward pass once `cancel` is set."""
    if not prompt_ids:
        raise ValueError("the prompt is empty: pass at least one token (TextGenerator.encode gives BOS for '')")
    budget = min(params.max_new_tokens, context_length(model) - len(prompt_ids))
    if budget < 1:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens, which fills the model's context of "
                         f"{context_length(model)}; shorten it")
    from transformers import DynamicCache

    device = next(model.parameters()).device
    processors = logits_processors(params)
    generator = None if params.greedy else torch.Generator(device=device).manual_seed(params.seed)
    seen = torch.zeros((1, len(prompt_ids) + budget), dtype=torch.long, device=device)
    seen[0, : len(prompt_ids)] = torch.tensor(prompt_ids)
    cache = DynamicCache(config=model.config)
    logits = _next_logits(model, seen[:, : len(prompt_ids)], cache)
    for length in range(len(prompt_ids), len(prompt_ids) + budget):
        token = _choose(logits, seen[:, :length], processors, generator)
        seen[0, length] = token
        yield token
        if token in stop_ids or length + 1 == seen.shape[1] or (cancel is not None and cancel.is_set()):
            return
        logits = _next_logits(model, seen[:, length: length + 1], cache)


def stop_token_ids(tokenizer: Any, stop: tuple[str, ...]) -> set[int]:
    """EOS plus every stop string that is one special token: those end generation by id, since decoding with
    skip_special_tokens hides them from the text."""
    special = set(tokenizer.all_special_ids)
    ids = {tokenizer.eos_token_id}
    for text in stop:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1 and encoded[0] in special:
            ids.add(encoded[0])
    return ids


def find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    found = [index for index in (text.find(s) for s in stop) if index >= 0]
    return min(found) if found else None


def partial_stop_length(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is the start of a stop string (held back while streaming)."""
    best = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:length]):
                best = length
                break
    return best


class IncrementalDecoder:
    """Text of a growing list of token ids, released once it can no longer change. Each step decodes a short window:
    the tokens of the previous release (context, so that merged pieces and spaces decode as in the full text) and
    those since; the text beyond the window's old part is released unless it ends in U+FFFD (a character still
    incomplete)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the window
        self._read = 0  # tokens before this are released

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def add(self, token: int) -> str:
        """Append a token; returns the text it released (often '', e.g. inside a multi-byte character)."""
        self.tokens.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        """Release whatever is left (an unfinished character becomes U+FFFD, as the full decode shows it)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        released = self._decode(self.tokens[self._prefix: self._read])
        window = self._decode(self.tokens[self._prefix:])
        if len(window) <= len(released) or (window.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        delta = window[len(released):]
        self._prefix, self._read = self._read, len(self.tokens)
        self.text += delta
        return delta


class TextStream:
    """One generation as text deltas. Iterate it once; `result` is set when iteration ends (cancelled included)."""

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: list[int], params: GenerationParams,
                 cancel: threading.Event | None = None) -> None:
        self.model, self.tokenizer, self.prompt_ids, self.params, self.cancel = (model, tokenizer, prompt_ids,
                                                                                 params, cancel)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        stop, stop_ids = self.params.stop, stop_token_ids(self.tokenizer, self.params.stop)
        decoder = IncrementalDecoder(self.tokenizer)
        tokens: list[int] = []
        sent = 0  # characters of decoder.text already yielded
        finish: FinishReason | None = None
        for token in iter_token_ids(self.model, self.prompt_ids, self.params, stop_ids, self.cancel):
            tokens.append(token)
            if token in stop_ids:
                finish = "stop"
                break
            if not decoder.add(token):
                continue
            if find_stop(decoder.text, stop) is not None:
                finish = "stop"
                break
            end = len(decoder.text) - partial_stop_length(decoder.text, stop)
            if end > sent:
                yield decoder.text[sent:end]
                sent = end
        decoder.flush()
        cut = find_stop(decoder.text, stop)
        text = decoder.text if cut is None else decoder.text[:cut]
        if finish is None:
            finish = "cancelled" if self.cancel is not None and self.cancel.is_set() else "length"
        if len(text) > sent:
            yield text[sent:]
        self.result = GenerationResult(text, tokens, len(self.prompt_ids), finish)


class TextGenerator:
    """A model and its tokenizer, ready to encode prompts and generate text."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @property
    def context_length(self) -> int:
        return context_length(self.model)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (as evaluation encodes); '' gives [BOS] so that there is
        something to continue."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids or [self.tokenizer.bos_token_id]

    def stream(self, prompt_ids: list[int], params: GenerationParams,
               cancel: threading.Event | None = None) -> TextStream:
        return TextStream(self.model, self.tokenizer, prompt_ids, params, cancel)

    def generate(self, prompt_ids: list[int], params: GenerationParams,
                 cancel: threading.Event | None = None) -> GenerationResult:
        stream = self.stream(prompt_ids, params, cancel)
        for _ in stream:
            pass
        assert stream.result is not None  # set when the iteration above ends
        return stream.result


def generate_ids(model: Any, prompt_ids: list[int], params: GenerationParams, eos_token_id: int,
                 pad_token_id: int | None = None) -> list[int]:
    """New token ids after `prompt_ids` (EOS included when reached), with the model in eval mode for the call.

    `pad_token_id` is accepted for callers written against `model.generate`; one sequence needs no padding.
    """
    was_training = model.training
    model.eval()
    try:
        return list(iter_token_ids(model, prompt_ids, params, {eos_token_id}))
    finally:
        model.train(was_training)
