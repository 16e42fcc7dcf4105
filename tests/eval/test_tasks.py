"""Tests for utils/eval/tasks.py: contexts and choices exactly as lm-eval 0.4.13 builds them, on real files.

The shared/data slices are used when present (skipped otherwise); the other formats are small files written here,
some with rows copied from the original HellaSwag release to pin lm-eval's query format.

    .venv/bin/python -m pytest -q tests/eval/test_tasks.py
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from utils.core.errors import ConfigError, DataError
from utils.data.demo_corpus import generate_demo_corpus
from utils.eval.tasks import TASKS, baseline_accuracy, hellaswag_preprocess, hellaswag_query, load_task
from utils.eval.wikitext import load_wikitext_documents
from utils.lm.documents import MultipleChoiceItem

# Rows of the original rowanz/hellaswag hellaswag_val.jsonl (ctx_b is lowercase there; lm-eval capitalises it).
ORIGINAL_HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                 "starts pulling up roofing on a roof."]},
    {"ind": 92, "activity_label": "Clean and jerk",
     "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.", "ctx_b": "the lady",
     "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady", "label": 3,
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
                 "stands and lifts the weight over her head."]},
    {"ind": 180, "activity_label": "Sharpening knives",
     "ctx_a": "A man is holding a pocket knife while sitting on some rocks in the wilderness.", "ctx_b": "then he",
     "ctx": "A man is holding a pocket knife while sitting on some rocks in the wilderness. then he", "label": 1,
     "endings": ["opens a can of oil.", "takes a small stone from the flowing river and smashes it on another stone.",
                 "uses the knife to shave his leg.", "sand the rocks and tops them by using strong pressure."]},
    # WikiHow shape (ctx_b empty, bracket markers), modelled on train row 39.
    {"ind": 39, "activity_label": "Education and Communications",
     "ctx_a": "[header] How to make a liquid into a solid [title] Place a small open container of water in the "
              "freezer. [title] Remove from the freezer and note what has occurred.", "ctx_b": "",
     "ctx": "[header] How to make a liquid into a solid [title] Place a small open container of water in the "
            "freezer. [title] Remove from the freezer and note what has occurred.", "label": 0,
     "endings": ["[step] Water freezes at 0 degrees.", "The water [substeps] boils.", "It  melts.", "Nothing."]},
]
EXPECTED_QUERIES = [
    "Roof shingle removal: A man is sitting on a roof. He",
    "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
    "Sharpening knives: A man is holding a pocket knife while sitting on some rocks in the wilderness. Then he",
    # " [title]" -> ". " after a full stop gives "..", as in lm-eval.
    "Education and Communications: How to make a liquid into a solid. Place a small open container of water in the "
    "freezer.. Remove from the freezer and note what has occurred.",
]
# lm-eval strips before removing markers, so "[step] ..." keeps a leading space.
EXPECTED_WIKIHOW_CHOICES = [" Water freezes at 0 degrees.", "The water boils.", "It melts.", "Nothing."]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- HellaSwag


def test_preprocess_is_lm_eval_verbatim() -> None:
    assert hellaswag_preprocess("  [header] How to X [title] Do Y [step] Z  ") == " How to X. Do Y Z"
    assert hellaswag_query("Label", "A man sits.", "the MAN") == "Label: A man sits. The man"  # capitalize()
    assert hellaswag_query("Label", "Done.", "") == "Label: Done."


def test_hellaswag_original_rows_give_lm_eval_queries(tmp_path: Path) -> None:
    items = load_task("hellaswag", _write_jsonl(tmp_path / "val.jsonl", ORIGINAL_HELLASWAG), None)
    assert [item.context for item in items] == EXPECTED_QUERIES
    assert [item.id for item in items] == ["24", "92", "180", "39"]
    assert [item.gold for item in items] == [3, 3, 1, 0]
    assert items[0].choices == ORIGINAL_HELLASWAG[0]["endings"]
    assert items[3].choices == EXPECTED_WIKIHOW_CHOICES


def test_gzipped_and_array_files_give_the_same_items(tmp_path: Path) -> None:
    """The one row reader: a .jsonl.gz copy and a .json array read like the .jsonl release."""
    plain = _write_jsonl(tmp_path / "val.jsonl", ORIGINAL_HELLASWAG)
    (tmp_path / "val.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "val.json").write_text(json.dumps(ORIGINAL_HELLASWAG))
    expected = load_task("hellaswag", plain, None)
    assert load_task("hellaswag", tmp_path / "val.jsonl.gz", None) == expected
    assert load_task("hellaswag", tmp_path / "val.json", None) == expected


def test_ctx_only_rows_recover_the_ctx_b_split(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k not in ("ctx_a", "ctx_b")} for row in ORIGINAL_HELLASWAG]
    with_split = load_task("hellaswag", _write_jsonl(tmp_path / "a.jsonl", ORIGINAL_HELLASWAG), None)
    ctx_only = load_task("hellaswag", _write_jsonl(tmp_path / "b.jsonl", rows), None)
    assert ctx_only == with_split


def test_shared_hellaswag_jsonl_and_text_export_agree(shared_data: Path) -> None:
    items = load_task("hellaswag", shared_data, None)  # finds hellaswag/hellaswag_val*.jsonl
    assert len(items) == 1000
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    assert items[0].gold == 3 and items[0].choices[3] == "starts pulling up roofing on a roof."
    assert all(len(item.choices) == 4 for item in items)
    text_items = load_task("hellaswag", shared_data / "hellaswag/hellaswag_val_full.first1000.txt", None)
    assert text_items == items
    assert load_task("hellaswag", shared_data, 5) == items[:5]


def test_demo_mc_is_processed_like_hellaswag(tmp_path: Path) -> None:
    generate_demo_corpus(tmp_path / "demo", seed=3, num_stories=50, num_sft_train=4, num_sft_eval=4,
                         num_dpo_train=4, num_dpo_eval=4, num_mc=12)
    rows = [json.loads(line) for line in (tmp_path / "demo/mc_validation.jsonl").read_text().splitlines()]
    items = load_task("demo_mc", tmp_path, None)
    assert len(items) == 12
    for item, row in zip(items, rows, strict=True):
        assert item.context == hellaswag_query(row["activity_label"], row["ctx_a"], row["ctx_b"])
        assert item.choices == [hellaswag_preprocess(e) for e in row["endings"]] and item.gold == row["label"]
    with pytest.raises(DataError, match="--demo_mc_path"):
        load_task("demo_mc", None, None)


# ---------------------------------------------------------------- ARC


def test_shared_arc_test_slices(shared_data: Path) -> None:
    for task, numeric in (("arc_easy", 10), ("arc_challenge", 3)):
        items = load_task(task, shared_data, None)
        assert len(items) == 300
        assert items[0].context.startswith("Question: ") and items[0].context.endswith("\nAnswer:")
        rows = [json.loads(line) for line in
                (shared_data / f"arc/{TASKS[task].hub_config}/test.first300.jsonl").read_text().splitlines()]
        numeric_rows = [(row, item) for row, item in zip(rows, items, strict=True) if row["answerKey"].isdigit()]
        assert len(numeric_rows) == numeric
        for row, item in numeric_rows:
            assert row["choices"]["label"][item.gold] == row["answerKey"]
            assert item.choices == row["choices"]["text"]


def test_shared_arc_train_has_three_and_five_choice_items(shared_data: Path) -> None:
    for task in ("arc_easy", "arc_challenge"):
        items = load_task(task, shared_data / f"arc/{TASKS[task].hub_config}/train.jsonl", None)
        sizes = {len(item.choices) for item in items}
        assert {3, 4, 5} <= sizes
        assert all(0 <= item.gold < len(item.choices) for item in items)


def test_arc_original_release_format(tmp_path: Path) -> None:
    row = {"id": "NYSEDREGENTS_2015_4_8", "answerKey": "2",
           "question": {"stem": "Which tool measures mass?",
                        "choices": [{"text": "ruler", "label": "1"}, {"text": "balance", "label": "2"},
                                    {"text": "thermometer", "label": "3"}]}}
    (item,) = load_task("arc_easy", _write_jsonl(tmp_path / "ARC-Easy/ARC-Easy-Test.jsonl", [row]), None)
    assert item.context == "Question: Which tool measures mass?\nAnswer:"
    assert item.choices == ["ruler", "balance", "thermometer"] and item.gold == 1
    assert load_task("arc_easy", tmp_path, None) == [item]  # the release's file name is found in a directory


def test_arc_bad_answer_key_names_the_line(tmp_path: Path) -> None:
    row = {"id": "x", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}
    with pytest.raises(DataError, match=r"bad\.jsonl:2: answerKey 'C'"):
        load_task("arc_challenge", _write_jsonl(tmp_path / "bad.jsonl", [{**row, "answerKey": "A"}, row]), None)


# ---------------------------------------------------------------- BoolQ


def test_shared_boolq(shared_data: Path) -> None:
    items = load_task("boolq", shared_data, None)
    assert len(items) == 1000
    assert sum(item.gold for item in items) == 625
    assert baseline_accuracy("boolq", items) == 0.625
    assert items[0].choices == ["no", "yes"] and items[0].gold == 0
    assert items[0].context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")


def test_boolq_super_glue_label_field(tmp_path: Path) -> None:
    rows = [{"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": 1},
            {"question": "is grass red", "passage": "Grass is green.", "idx": 1, "label": 0}]
    items = load_task("boolq", _write_jsonl(tmp_path / "boolq/validation.jsonl", rows), None)
    assert items[0].context == "The sky is blue.\nQuestion: is the sky blue?\nAnswer:"
    assert [item.gold for item in items] == [1, 0]


def test_chance_baseline_averages_one_over_choices() -> None:
    mixed = [MultipleChoiceItem("a", "c", ["x", "y", "z"], 0), MultipleChoiceItem("b", "c", list("xyzwv"), 0)]
    assert baseline_accuracy("arc_easy", mixed) == pytest.approx((1 / 3 + 1 / 5) / 2)


# ---------------------------------------------------------------- loading errors


def test_offline_hub_names_the_dataset_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for task in ("hellaswag", "arc_easy", "arc_challenge", "boolq"):
        with pytest.raises(DataError) as error:
            load_task(task, None, None)
        assert TASKS[task].hub_id in str(error.value)
        assert f"--{task}_path" in str(error.value) and "--data_dir" in str(error.value)
    with pytest.raises(DataError, match="(?s)EleutherAI/wikitext_document_level.*--wikitext_path"):
        load_wikitext_documents(None)


def test_unknown_task_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown evaluation task"):
        load_task("mmlu", tmp_path, None)
    with pytest.raises(DataError, match="no file under"):
        load_task("boolq", tmp_path, None)
    with pytest.raises(DataError, match="lacks field 'passage'"):
        load_task("boolq", _write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": True}]), None)
