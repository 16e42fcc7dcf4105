"""Fine-tuning data: every SFT and DPO format, bad items, hub ids offline, template rendering, label masks, lengths."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from utils.core.errors import DataError
from utils.finetune.datasets import (
    IGNORE_INDEX,
    PreferencePair,
    SFTExample,
    check_dpo_lengths,
    dpo_rows,
    hh_messages,
    load_preference_pairs,
    load_sft_examples,
    seeded_split,
    sft_segments,
    split_hh_dialogue,
    tokenize_sft,
)
from utils.lm.templates import get_template

EOS = 0


class CharTokenizer:
    """One token per character (ids from 1) and EOS 0: lengths and masks are easy to check by hand."""

    eos_token_id = EOS

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def _write(path: Path, rows: list[dict] | list, jsonl: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows) if jsonl else json.dumps(rows)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- SFT formats


def test_prompt_response_json_and_jsonl_read_alike(tmp_path: Path) -> None:
    rows = [{"prompt": "Q1", "response": "A1", "answer": "A"},
            {"prompt": "Q2", "response": "A2", "system": "Be brief."}]
    for path in (_write(tmp_path / "d.json", rows), _write(tmp_path / "d.jsonl", rows, jsonl=True)):
        examples, report = load_sft_examples(str(path))
        assert report.format == "prompt_response" and report.kept == 2
        assert examples[0] == SFTExample([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
                                         0, "A")
        assert examples[1].messages[0] == {"role": "system", "content": "Be brief."}


def test_alpaca_dolly_and_messages_become_conversations(tmp_path: Path) -> None:
    alpaca = [{"instruction": "Sort", "input": "b, a", "output": "a, b"},
              {"instruction": "Hi", "input": "", "output": "Hello"}]
    examples, _ = load_sft_examples(str(_write(tmp_path / "a.json", alpaca)))
    assert examples[0].messages[0]["content"] == "Sort\n\nb, a" and examples[1].messages[0]["content"] == "Hi"
    dolly = [{"instruction": "Summarise", "context": "Long text", "response": "Short", "category": "summarization"}]
    examples, report = load_sft_examples(str(_write(tmp_path / "b.jsonl", dolly, jsonl=True)))
    assert report.format == "dolly" and examples[0].messages[0]["content"] == "Summarise\n\nLong text"
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    examples, report = load_sft_examples(str(_write(tmp_path / "c.json", [{"messages": turns}])))
    assert report.format == "messages" and examples[0].messages == turns


def test_oasst_rows_follow_the_best_ranked_replies(tmp_path: Path) -> None:
    rows = [{"message_id": "r", "parent_id": None, "role": "prompter", "text": "Q"},
            {"message_id": "a1", "parent_id": "r", "role": "assistant", "text": "worse", "rank": 1},
            {"message_id": "a0", "parent_id": "r", "role": "assistant", "text": "best", "rank": 0},
            {"message_id": "q2", "parent_id": "a0", "role": "prompter", "text": "more?"},
            {"message_id": "a2", "parent_id": "q2", "role": "assistant", "text": "yes", "rank": 0}]
    examples, report = load_sft_examples(str(_write(tmp_path / "o.jsonl", rows, jsonl=True)))
    assert report.format == "oasst"
    assert [m["content"] for m in examples[0].messages] == ["Q", "best", "more?", "yes"]


def test_real_alpaca_slice_drops_the_empty_outputs(shared_data: Path) -> None:
    examples, report = load_sft_examples(str(shared_data / "alpaca" / "alpaca_data_5000.json"))
    assert report.items == 5000 and report.dropped["empty_response"] == 2 and len(examples) == 4998


def test_missing_field_names_the_item_and_its_fields(tmp_path: Path) -> None:
    rows = [{"prompt": "Q", "response": "A"}, {"prompt": "Q", "response": "A"}, {"prompt": "Q", "answer": "x"}]
    with pytest.raises(DataError, match=r"item 2 is missing field\(s\) response.*the item has: answer, prompt"):
        load_sft_examples(str(_write(tmp_path / "d.json", rows)))
    with pytest.raises(DataError, match=r"item 0 matches no known format; it has fields: question"):
        load_sft_examples(str(_write(tmp_path / "e.json", [{"question": "?"}])))
    with pytest.raises(DataError, match=r"item 1 does not end with an assistant message"):
        load_sft_examples(str(_write(tmp_path / "f.json", [{"messages": [{"role": "user", "content": "a"},
                                                                          {"role": "assistant", "content": "b"}]},
                                                           {"messages": [{"role": "user", "content": "a"}]}])))


def test_empty_and_missing_datasets_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is empty"):
        load_sft_examples(str(_write(tmp_path / "empty.json", [])))
    with pytest.raises(DataError, match="no usable items"):
        load_sft_examples(str(_write(tmp_path / "blank.json", [{"prompt": "Q", "response": "  "}])))
    with pytest.raises(DataError, match="dataset not found"):
        load_sft_examples(str(tmp_path / "nope.json"))


def test_hub_ids_fail_fast_offline_naming_dataset_and_local_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LUMI_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"(?s)tatsu-lab/alpaca.*--dataset_path"):
        load_sft_examples("tatsu-lab/alpaca")
    with pytest.raises(DataError, match=r"(?s)Anthropic/hh-rlhf.*--dataset_path"):
        load_preference_pairs("Anthropic/hh-rlhf")


# ---------------------------------------------------------------- DPO formats


def test_hh_dialogues_split_at_the_last_assistant_turn() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: No."
    prompt, good, bad = split_hh_dialogue(chosen, rejected)
    assert prompt.endswith("Name a colour.\n\nAssistant:") and (good, bad) == ("Blue.", "No.")
    assert hh_messages(prompt) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "Name a colour."}]
    assert split_hh_dialogue(chosen, chosen) == "identical"
    assert split_hh_dialogue(chosen, rejected.replace("Hi", "Hey")) == "prompt_mismatch"


def test_real_hh_slice_drops_and_counts_identical_pairs(shared_data: Path) -> None:
    pairs, report = load_preference_pairs(str(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"))
    assert report.format == "hh" and report.items == 2354 and report.dropped["identical"] == 2
    assert len(pairs) == report.kept == 2354 - sum(report.dropped.values())
    assert pairs[0].prompt[-1]["role"] == "user" and pairs[0].chosen != pairs[0].rejected


def test_explicit_and_ultrafeedback_pairs(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"prompt": "Q", "chosen": "good", "rejected": "bad"}) + "\n")
        fh.write(json.dumps({"prompt": "Q", "chosen": "same", "rejected": "same"}) + "\n")
    pairs, report = load_preference_pairs(str(path))
    assert pairs == [PreferencePair([{"role": "user", "content": "Q"}], "good", "bad", 0)]
    assert report.dropped["identical"] == 1
    convo = [{"role": "user", "content": "Q"}]
    uf = [{"prompt": "Q", "chosen": convo + [{"role": "assistant", "content": "good"}],
           "rejected": convo + [{"role": "assistant", "content": "bad"}], "score_chosen": 8.0}]
    pairs, report = load_preference_pairs(str(_write(tmp_path / "uf.json", uf)))
    assert report.format == "ultrafeedback" and (pairs[0].chosen, pairs[0].rejected) == ("good", "bad")


def test_dpo_item_missing_rejected_is_named(tmp_path: Path) -> None:
    rows = [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "chosen": "a"}]
    with pytest.raises(DataError, match=r"item 1 is missing field\(s\) rejected.*the item has: chosen, prompt"):
        load_preference_pairs(str(_write(tmp_path / "p.json", rows)))


# ---------------------------------------------------------------- rendering, masks and lengths


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


def test_seeded_split_is_deterministic_and_disjoint() -> None:
    items = list(range(50))
    rest, held = seeded_split(items, 10, seed=3)
    assert (rest, held) == seeded_split(items, 10, seed=3)
    assert len(held) == 10 and sorted(rest + held) == items
    with pytest.raises(DataError, match="cannot hold out"):
        seeded_split(items[:3], 3, seed=0)
