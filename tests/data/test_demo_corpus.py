"""Tests for utils.data.demo_corpus and utils.data.demo_stories: determinism, file formats and the fact guarantees
the demo relies on."""

import json
import pathlib
import re

import pytest

from utils.data.demo_corpus import DEMO_FILES, generate_demo_corpus
from utils.data.demo_stories import iter_demo_stories

SMALL = {"num_stories": 300, "num_sft_train": 60, "num_sft_eval": 20, "num_dpo_train": 40, "num_dpo_eval": 20,
         "num_mc": 60}
FUNCTION_WORDS = {"a", "an", "the", "in", "on", "at", "after", "before"}
QUESTION_SEPARATOR = "\nQuestion: "


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def _load(path: pathlib.Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]
    return json.loads(path.read_text(encoding="ascii"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo_corpus(out, seed=7, **SMALL)


@pytest.fixture(scope="module")
def rows(corpus: tuple[pathlib.Path, dict[str, int]]) -> dict[str, list[dict]]:
    out, _ = corpus
    return {name: _load(out / name) for name in DEMO_FILES}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: pathlib.Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_demo_corpus(tmp_path / name, seed=seed, **SMALL)
    for file in DEMO_FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()


def test_counts_match_files(corpus: tuple[pathlib.Path, dict[str, int]], rows: dict[str, list[dict]]) -> None:
    out, counts = corpus
    assert set(counts) == set(DEMO_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)  # no leftover .tmp files
    assert {name: len(items) for name, items in rows.items()} == counts
    assert counts == {"stories.jsonl": 300, "sft_train.json": 60, "sft_eval.json": 20, "dpo_train.json": 40,
                      "dpo_eval.json": 20, "mc_validation.jsonl": 60}


def test_required_fields(rows: dict[str, list[dict]]) -> None:
    expected = {"stories.jsonl": {"text"}, "sft_train.json": {"prompt", "response", "answer"},
                "sft_eval.json": {"prompt", "response", "answer"}, "dpo_train.json": {"prompt", "chosen", "rejected"},
                "dpo_eval.json": {"prompt", "chosen", "rejected"},
                "mc_validation.jsonl": {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label", "split",
                                        "source_id"}}
    for name, items in rows.items():
        for item in items:
            assert set(item) == expected[name], name


def test_iter_demo_stories_matches_file(rows: dict[str, list[dict]]) -> None:
    assert list(iter_demo_stories(7, 300)) == [row["text"] for row in rows["stories.jsonl"]]


def test_stories_are_well_formed(rows: dict[str, list[dict]]) -> None:
    for row in rows["stories.jsonl"]:
        text = row["text"]
        sentences = text.split(". ")
        assert 4 <= len(sentences) <= 9, text  # 3-8 story sentences + the closing callback
        assert text.endswith(".") and all(s[0].isupper() for s in sentences), text
        assert text.isascii()
        assert not re.search(r"\ba [aeiouAEIOU]|\ban [^aeiouAEIOU]", text), text


def test_sft_answer_is_in_story_and_response(rows: dict[str, list[dict]]) -> None:
    for record in rows["sft_train.json"] + rows["sft_eval.json"]:
        story, question = record["prompt"].split(QUESTION_SEPARATOR)
        assert question.endswith("?")
        assert record["answer"] in story and record["answer"] in record["response"], record


def test_dpo_rejected_fact_is_absent_from_story(rows: dict[str, list[dict]]) -> None:
    for record in rows["dpo_train.json"] + rows["dpo_eval.json"]:
        story, _ = record["prompt"].split(QUESTION_SEPARATOR)
        assert record["chosen"] != record["rejected"]
        assert len(record["chosen"].split()) == len(record["rejected"].split()), record
        wrong_words = _words(record["rejected"]) - _words(record["chosen"]) - FUNCTION_WORDS
        assert wrong_words and not wrong_words & _words(story), record


def test_mc_rows(rows: dict[str, list[dict]]) -> None:
    labels = set()
    for i, row in enumerate(rows["mc_validation.jsonl"]):
        assert row["ind"] == i and row["source_id"] == f"demo_tiny-{i}" and row["split"] == "validation"
        assert row["ctx"] == row["ctx_a"] and row["ctx_b"] == ""  # see _mc_row: names must not be lowercased
        endings, label = row["endings"], row["label"]
        assert len(endings) == 4 and len(set(endings)) == 4 and label in range(4)
        labels.add(label)
        # Entity = the words an ending does not share with all the others (the shared tail is not an entity).
        shared = set.intersection(*(_words(e) for e in endings))
        ctx_words = _words(row["ctx"])
        for j, ending in enumerate(endings):
            entity = _words(ending) - shared - FUNCTION_WORDS
            assert entity, row
            if j == label:
                assert entity <= ctx_words, row
            else:
                assert not entity & ctx_words, row
    assert labels == {0, 1, 2, 3}


def test_held_out_stories_do_not_overlap_pretraining(rows: dict[str, list[dict]]) -> None:
    pretraining = {row["text"] for row in rows["stories.jsonl"]}
    held_out = [r["prompt"].split(QUESTION_SEPARATOR)[0]
                for name in ("sft_train.json", "sft_eval.json", "dpo_train.json", "dpo_eval.json")
                for r in rows[name]]
    held_out += [row["ctx_a"][: row["ctx_a"].rindex(". ") + 1] for row in rows["mc_validation.jsonl"]]  # the story
    assert len(set(held_out)) == len(held_out)
    assert not pretraining & set(held_out)


def test_default_size(tmp_path: pathlib.Path) -> None:
    counts = generate_demo_corpus(tmp_path)
    size = (tmp_path / "stories.jsonl").stat().st_size
    assert 3_000_000 <= size <= 8_000_000
    assert counts["sft_train.json"] == 2000 and counts["mc_validation.jsonl"] == 500
