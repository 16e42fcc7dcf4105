"""Tokenization of fine-tuning rows: template rendering, label masks, DPO rows and lengths over max_length."""

from __future__ import annotations

import pytest

from utils.core.errors import DataError
from utils.finetune.datasets import PreferencePair, SFTExample
from utils.finetune.tokenization import IGNORE_INDEX, check_dpo_lengths, dpo_rows, sft_segments, tokenize_sft
from utils.lm.templates import get_template

EOS = 0


class CharTokenizer:
    """One token per character (ids from 1) and EOS 0: lengths and masks are easy to check by hand."""

    eos_token_id = EOS

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_templates_render_training_rows_exactly() -> None:
    chatml = get_template("chatml")
    messages = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    assert sft_segments(messages, chatml) == [
        ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n", False), ("A1<|im_end|>\n", True),
        ("<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", False), ("A2<|im_end|>\n", True)]
    pair = PreferencePair([{"role": "user", "content": "Q"}], "yes", "no", 0)
    assert dpo_rows([pair], get_template("instruct")) == [
        {"prompt": "### Instruction:\nQ\n\n### Response:\n", "chosen": "yes\n\n", "rejected": "no\n\n"}]
    assert dpo_rows([pair], get_template("chat"))[0]["prompt"] == "Human: Q\n\nAssistant: "


def test_label_mask_covers_answers_closing_markers_and_eos_only() -> None:
    messages = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    rows, report = tokenize_sft([SFTExample(messages, 0)], CharTokenizer(), get_template("chatml"), 512, False, "t")
    ids, mask = rows[0]["input_ids"], rows[0]["completion_mask"]
    trained = "".join(chr(i) if i != EOS else "<eos>" for i, m in zip(ids, mask) if m)
    assert trained == "A1<|im_end|>\nA2<|im_end|>\n<eos>"
    assert ids[-1] == EOS and mask[-1] == 1 and report.truncated == 0 and IGNORE_INDEX == -100


def test_long_sequences_are_counted_or_rejected_with_strict() -> None:
    chatml = get_template("chatml")
    long = SFTExample([{"role": "user", "content": "q" * 10}, {"role": "assistant", "content": "a" * 40}], 3)
    prompt_only = SFTExample([{"role": "user", "content": "q" * 80}, {"role": "assistant", "content": "a"}], 4)
    _, report = tokenize_sft([long, prompt_only], CharTokenizer(), chatml, 80, False, "t")
    assert (report.truncated, report.dropped, report.sequences) == (1, 1, 2) and report.longest > 80
    with pytest.raises(DataError, match=r"item 3 is \d+ tokens, longer than max_length 80.*--strict"):
        tokenize_sft([long], CharTokenizer(), chatml, 80, True, "t")
    pair = PreferencePair([{"role": "user", "content": "q" * 10}], "a" * 40, "b", 7)
    rows = dpo_rows([pair], chatml)
    assert check_dpo_lengths([pair], rows, CharTokenizer(), 80, False, "t").truncated == 1
    with pytest.raises(DataError, match="item 7"):
        check_dpo_lengths([pair], rows, CharTokenizer(), 80, True, "t")
