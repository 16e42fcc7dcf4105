"""Fine-tuning rows for the trainers, tokenized with the shared prompt templates: SFT rows {input_ids,
completion_mask} (answers, closing markers and EOS trained), DPO rows in TRL's text preference format, and the
count of sequences longer than max_length (truncated, dropped, or with --strict an error)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from utils.core.errors import DataError
from utils.finetune.datasets import PreferencePair, SFTExample
from utils.lm.templates import Message, PromptTemplate

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class LengthReport:
    """Sequences longer than the model's context: truncated (and counted) or, with --strict, an error."""

    max_length: int
    sequences: int = 0
    truncated: int = 0
    dropped: int = 0  # the prompt alone fills max_length: no answer token would remain to learn from
    longest: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"max_length": self.max_length, "sequences": self.sequences, "truncated": self.truncated,
                "dropped_prompt_too_long": self.dropped, "longest": self.longest}


def _check_length(report: LengthReport, length: int, prompt_length: int, index: int, strict: bool,
                  source: str) -> None:
    report.sequences += 1
    report.longest = max(report.longest, length)
    if length <= report.max_length:
        return
    if strict:
        raise DataError(f"{source}: item {index} is {length} tokens, longer than max_length {report.max_length} "
                        f"(the model's context at most). Shorten or drop it, or run without --strict to truncate.")
    if prompt_length >= report.max_length:
        report.dropped += 1
    else:
        report.truncated += 1


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sft_segments(messages: list[Message], template: PromptTemplate) -> list[tuple[str, bool]]:
    """(text, trained) spans: each assistant answer and its closing marker is trained; everything before it
    (system, user turns and the template's generation prompt) is context."""
    segments, start = [], 0
    for position, message in enumerate(messages):
        if message["role"] == "assistant":
            segments.append((template.render(messages[start:position], add_generation_prompt=True), False))
            segments.append((message["content"] + template.assistant_close, True))
            start = position + 1
    return segments


def tokenize_sft(examples: Iterable[SFTExample], tokenizer: Any, template: PromptTemplate, max_length: int,
                 strict: bool, source: str) -> tuple[list[dict[str, list[int]]], LengthReport]:
    """Rows {input_ids, completion_mask} with EOS appended (trained). Each context span is tokenized on its own,
    exactly as the prompt is at inference, so training and generation see the same prompt tokens. Rows longer
    than max_length are left for the trainer to truncate (keep the start) and counted here."""
    report = LengthReport(max_length)
    rows = []
    for example in examples:
        ids, mask = [], []
        prompt_length = None
        for text, trained in sft_segments(example.messages, template):
            tokens = _encode(tokenizer, text)
            ids += tokens
            mask += [int(trained)] * len(tokens)
            if prompt_length is None:
                prompt_length = len(ids)
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
        _check_length(report, len(ids), prompt_length or 0, example.index, strict, source)
        rows.append({"input_ids": ids, "completion_mask": mask})
    _log_lengths(report, source)
    return rows, report


def dpo_rows(pairs: Iterable[PreferencePair], template: PromptTemplate) -> list[dict[str, str]]:
    """TRL's text preference format, rendered with our template: the prompt ends with the generation prompt, each
    answer with the template's closing marker (TRL appends EOS)."""
    return [{"prompt": template.render(p.prompt, add_generation_prompt=True),
             "chosen": p.chosen + template.assistant_close, "rejected": p.rejected + template.assistant_close}
            for p in pairs]


def check_dpo_lengths(pairs: Sequence[PreferencePair], rows: Sequence[dict[str, str]], tokenizer: Any,
                      max_length: int, strict: bool, source: str) -> LengthReport:
    """Count the pairs the trainer will truncate (keep the start) or drop (prompt alone fills max_length)."""
    report = LengthReport(max_length)
    for pair, row in zip(pairs, rows, strict=True):
        prompt = len(_encode(tokenizer, row["prompt"]))
        answer = max(len(_encode(tokenizer, row["chosen"])), len(_encode(tokenizer, row["rejected"])))
        _check_length(report, prompt + answer + 1, prompt, pair.index, strict, source)  # + EOS
    _log_lengths(report, source)
    return report


def _log_lengths(report: LengthReport, source: str) -> None:
    if report.truncated or report.dropped:
        log.warning("%s: %d of %d sequences exceed max_length %d (longest %d tokens): %d truncated, %d dropped "
                    "because the prompt alone fills the context (--strict makes this an error)", source,
                    report.truncated + report.dropped, report.sequences, report.max_length, report.longest,
                    report.truncated, report.dropped)
