"""Fine-tuning data: every SFT and DPO format, bad items, hub ids offline, seeded splits."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from utils.core.errors import DataError
from utils.finetune.datasets import (
    PreferencePair,
    SFTExample,
    hh_messages,
    load_preference_pairs,
    load_sft_examples,
    seeded_split,
    split_hh_dialogue,
)


def _write(path: Path, rows: list[dict] | list, jsonl: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows) if jsonl else json.dumps(rows)
    path.write_text(text)
    return path


def test_files_follow_the_one_row_rule_of_every_stage(tmp_path: Path) -> None:
    """JSON lines named .json or .jsonl.gz read like .jsonl; a bad line stops the stage naming file:line."""
    rows = [{"prompt": "Q1", "response": "A1"}, {"prompt": "Q2", "response": "A2"}]
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "lines.json").write_text(lines)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    for name in ("lines.json", "d.jsonl.gz"):
        assert load_sft_examples(str(tmp_path / name))[1].kept == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines + "{oops\n")
    with pytest.raises(DataError, match=f"{bad}:3: invalid JSON"):
        load_sft_examples(str(bad))


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


# ---------------------------------------------------------------- splits


def test_seeded_split_is_deterministic_and_disjoint() -> None:
    items = list(range(50))
    rest, held = seeded_split(items, 10, seed=3)
    assert (rest, held) == seeded_split(items, 10, seed=3)
    assert len(held) == 10 and sorted(rest + held) == items
    with pytest.raises(DataError, match="cannot hold out"):
        seeded_split(items[:3], 3, seed=0)
