"""Evaluation tasks, built exactly as lm-evaluation-harness 0.4.13 builds them, from local files or the Hub.

Multiple-choice tasks become `MultipleChoiceItem(id, context, choices, gold)`; the scorer asks for
loglikelihood(context, " " + choice) per choice (lm-eval's default `target_delimiter` " "), so choices are stored
WITHOUT that space, as lm-eval's `doc_to_choice` returns them (acc_norm divides by their character length).

* hellaswag (validation; lm-eval `tasks/hellaswag/utils.py`): query = preprocess(activity_label + ": " + ctx_a +
  " " + ctx_b.capitalize()), choices = [preprocess(e) for e in endings], gold = int(label). Rows without
  ctx_a/ctx_b (the klosax re-export) are rebuilt by `split_ctx`; see there for what that recovers.
  That export also stripped the leading space lm-eval leaves on a WikiHow ending that starts with a marker
  ("[step] Foo" -> " Foo"), which cannot be restored; its first 1000 items are all ActivityNet, so unaffected.
* arc_easy / arc_challenge (test; `tasks/arc/arc_easy.yaml`): "Question: {question}\\nAnswer:", choices =
  choices.text, gold = choices.label.index(answerKey). Hub/HF rows and the original release rows
  (question: {stem, choices: [{text, label}]}) are both read; labels may be letters or "1".."4", 3-5 choices.
* boolq (validation; `tasks/super_glue/boolq/default.yaml`): "{passage}\\nQuestion: {question}?\\nAnswer:",
  choices ["no", "yes"], gold = label (super_glue, 0/1) or int(answer) (original release and google/boolq, bool).
* demo_mc: the demo corpus's mc_validation.jsonl, HellaSwag rows processed like hellaswag.
* wikitext: the dataset is named here with the others (one availability check); its pages are utils/eval/wikitext.py.

Local files: a file, or a directory searched with each task's usual names (`TaskSpec.local_patterns`). Without a
path the Hub is used; offline (HF_HUB_OFFLINE=1 or no connection) that fails at once naming the flag to use.
"""

from __future__ import annotations

import glob
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import ConfigError, DataError
from utils.core.hub import PublicDataset, load_hub_split
from utils.core.records import is_record_file, iter_records
from utils.lm.documents import MultipleChoiceItem

log = logging.getLogger(__name__)

HELLASWAG_LINES_PER_ITEM = 6  # klosax text export: "label: ctx", gold, 4 endings
HELLASWAG_NUM_ENDINGS = 4
BOOLQ_CHOICES = ("no", "yes")
ACTIVITY_SEPARATOR = ": "
# A sentence end inside a HellaSwag ctx, optionally closed by a quote: where ctx_a stops and ctx_b starts.
SENTENCE_END = re.compile(r"[.!?][\"']? ")
WIKITEXT_HUB_ID = "EleutherAI/wikitext_document_level"
WIKITEXT_HUB_CONFIG = "wikitext-2-raw-v1"
WIKITEXT_SPLIT = "test"
WIKITEXT_LOCAL_PATTERNS = ("wiki.test.raw", "wiki.test.tokens", "wiki.valid.raw", "wiki.valid.tokens")
WIKITEXT_SUBDIRS = ("wikitext-2", "", "wikitext-2-raw", "wikitext-2-raw-v1")
WIKITEXT_FLAGS = "--wikitext_path FILE (a wiki.*.raw or wiki.*.tokens file) or --data_dir DIR"
WIKITEXT_DATASET = PublicDataset(
    "WikiText-2", WIKITEXT_HUB_ID, WIKITEXT_HUB_CONFIG, WIKITEXT_SPLIT,
    tuple(f"{sub}/{name}" if sub else name for name in WIKITEXT_LOCAL_PATTERNS for sub in WIKITEXT_SUBDIRS))


RowBuilder = Callable[[dict[str, Any], int], MultipleChoiceItem]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    display_name: str
    split: str
    hub_id: str | None
    hub_config: str | None
    local_patterns: tuple[str, ...]  # globs relative to --data_dir, tried in order
    build: RowBuilder
    baseline: str  # "chance": mean of 1/num_choices; "majority": frequency of the most common gold label


# ---------------------------------------------------------------- HellaSwag


def hellaswag_preprocess(text: str) -> str:
    """lm-eval `tasks/hellaswag/utils.py::preprocess`, verbatim (one pass of the double-space collapse)."""
    text = text.strip()
    # Brackets are artifacts of the WikiHow part of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_query(activity_label: str, ctx_a: str, ctx_b: str) -> str:
    """lm-eval `tasks/hellaswag/utils.py::process_docs` query."""
    return hellaswag_preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())


def split_ctx(ctx: str) -> tuple[str, str]:
    """Recover (ctx_a, ctx_b) from a ctx-only row, where ctx = ctx_a + " " + ctx_b as in the original file.

    The klosax export (the test mirror's hellaswag/) keeps the original `ctx`, whose ctx_b is NOT capitalised
    ("A man is sitting on a roof. he"), while lm-eval builds "... roof. He" and `str.capitalize` also lowercases the
    rest of ctx_b. ActivityNet contexts end in such a lowercase fragment after the last sentence; WikiHow contexts
    have an empty ctx_b. So the fragment after the last sentence end is ctx_b when it starts in lowercase and is not
    a finished sentence, else ctx_b is empty. Checked against the original rows we could see (tests); a ctx_a that
    does not end a sentence would be split too early.
    """
    ends = list(SENTENCE_END.finditer(ctx))
    start = ends[-1].end() if ends else 0
    tail = ctx[start:]
    if not tail[:1].islower() or tail.rstrip().endswith((".", "!", "?")):
        return ctx, ""
    return ctx[:start].rstrip(" "), tail


def _hellaswag_item(row: dict[str, Any], position: int) -> MultipleChoiceItem:
    if "ctx_a" in row and "ctx_b" in row:
        ctx_a, ctx_b = row["ctx_a"], row["ctx_b"]
    else:
        ctx_a, ctx_b = split_ctx(row["ctx"])
    item_id = row.get("ind", row.get("idx", position))
    return MultipleChoiceItem(
        id=str(item_id),
        context=hellaswag_query(row["activity_label"], ctx_a, ctx_b),
        choices=[hellaswag_preprocess(ending) for ending in row["endings"]],
        gold=int(row["label"]),
    )


def _hellaswag_text_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The klosax 6-lines-per-item export: "activity_label: ctx", gold label, then the 4 endings."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % HELLASWAG_LINES_PER_ITEM:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of {HELLASWAG_LINES_PER_ITEM} "
                        f"(expected per item: 'activity_label: ctx', the gold label, {HELLASWAG_NUM_ENDINGS} endings)")
    for start in range(0, len(lines), HELLASWAG_LINES_PER_ITEM):
        header, label, *endings = lines[start:start + HELLASWAG_LINES_PER_ITEM]
        where = f"{path}:{start + 1}"
        if ACTIVITY_SEPARATOR not in header or not label.strip().isdigit():
            raise DataError(f"{where}: expected 'activity_label: ctx' then a numeric gold label, got "
                            f"{header[:60]!r} / {label[:20]!r}")
        activity_label, ctx = header.split(ACTIVITY_SEPARATOR, 1)
        yield where, {"idx": start // HELLASWAG_LINES_PER_ITEM, "activity_label": activity_label, "ctx": ctx,
                      "endings": endings, "label": int(label)}


# ---------------------------------------------------------------- ARC and BoolQ


def _arc_item(row: dict[str, Any], position: int) -> MultipleChoiceItem:
    question = row["question"]
    if isinstance(question, dict):  # original ARC release: question {stem, choices: [{text, label}]}
        stem = question["stem"]
        texts = [choice["text"] for choice in question["choices"]]
        labels = [choice["label"] for choice in question["choices"]]
    else:
        stem, texts, labels = question, list(row["choices"]["text"]), list(row["choices"]["label"])
    answer = row["answerKey"]
    if answer not in labels:
        raise DataError(f"answerKey {answer!r} is not one of the choice labels {labels}")
    return MultipleChoiceItem(id=str(row.get("id", position)), context=f"Question: {stem}\nAnswer:",
                              choices=texts, gold=labels.index(answer))


def _boolq_item(row: dict[str, Any], position: int) -> MultipleChoiceItem:
    answer = row["label"] if "label" in row else row["answer"]  # super_glue: label 0/1; original: answer bool
    gold = int(answer)
    if gold not in (0, 1):
        raise DataError(f"BoolQ label must be 0/1 or a boolean, got {answer!r}")
    return MultipleChoiceItem(id=str(row.get("idx", position)),
                              context=f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
                              choices=list(BOOLQ_CHOICES), gold=gold)


TASKS: dict[str, TaskSpec] = {
    "hellaswag": TaskSpec("hellaswag", "HellaSwag", "validation", "Rowan/hellaswag", None,
                          ("hellaswag/hellaswag_val*.jsonl", "hellaswag_val*.jsonl", "hellaswag/hellaswag_val*.txt",
                           "hellaswag_val*.txt"), _hellaswag_item, "chance"),
    "arc_easy": TaskSpec("arc_easy", "ARC-Easy", "test", "allenai/ai2_arc", "ARC-Easy",
                         ("arc/ARC-Easy/test*.jsonl", "ARC-Easy/test*.jsonl", "ARC-Easy/ARC-Easy-Test.jsonl"),
                         _arc_item, "chance"),
    "arc_challenge": TaskSpec("arc_challenge", "ARC-Challenge", "test", "allenai/ai2_arc", "ARC-Challenge",
                              ("arc/ARC-Challenge/test*.jsonl", "ARC-Challenge/test*.jsonl",
                               "ARC-Challenge/ARC-Challenge-Test.jsonl"), _arc_item, "chance"),
    # lm-eval 0.4.13 reads BoolQ from aps/super_glue (field `label`); google/boolq has the same rows with `answer`.
    "boolq": TaskSpec("boolq", "BoolQ", "validation", "aps/super_glue", "boolq",
                      ("boolq/dev*.jsonl", "boolq/val*.jsonl", "dev*.jsonl", "val*.jsonl"), _boolq_item, "majority"),
    "demo_mc": TaskSpec("demo_mc", "demo_tiny MC (HellaSwag format)", "validation", None, None,
                        ("demo/mc_validation.jsonl", "mc_validation.jsonl"), _hellaswag_item, "chance"),
}


def baseline_accuracy(task: str, items: list[MultipleChoiceItem]) -> float:
    """The accuracy to beat: chance (mean 1/num_choices) or, for BoolQ, always answering the majority class."""
    if not items:
        raise DataError(f"{task}: no items to compute a baseline on")
    if _spec(task).baseline == "majority":
        return Counter(item.gold for item in items).most_common(1)[0][1] / len(items)
    return sum(1 / len(item.choices) for item in items) / len(items)


# ---------------------------------------------------------------- loading


def _spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ConfigError(f"unknown evaluation task '{name}'; choose from {', '.join(TASKS)}")
    return TASKS[name]


def _path_flags(name: str) -> str:
    return f"--data_dir DIR or --{name}_path FILE"


def task_dataset(name: str) -> PublicDataset | None:
    """The public dataset behind a task (None for demo_mc, which travels with the demo data)."""
    if name == "wikitext":
        return WIKITEXT_DATASET
    spec = _spec(name)
    if spec.hub_id is None:
        return None
    return PublicDataset(spec.display_name, spec.hub_id, spec.hub_config, spec.split, spec.local_patterns)


def load_hub_rows(dataset: PublicDataset, flags: str) -> list[dict[str, Any]]:
    try:
        return list(load_hub_split(dataset))
    except DataError as exc:
        raise DataError(f"{dataset.name}: {exc}\nOr pass local files with {flags}.") from exc


def resolve_local_file(path: Path, patterns: tuple[str, ...], what: str, flags: str) -> Path:
    """A file as given; in a directory, the first pattern that matches exactly one file."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{what}: {path} does not exist. Pass an existing file or directory with {flags}.")
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(str(path / pattern)) if Path(p).is_file())
        if len(matches) > 1:
            raise DataError(f"{what}: several files match {path / pattern}: {', '.join(map(str, matches))}. "
                            f"Name one with {flags}.")
        if matches:
            return matches[0]
    raise DataError(f"{what}: no file under {path} matches {', '.join(patterns)}. Pass the file with {flags}.")


def _local_rows(spec: TaskSpec, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".txt" and spec.build is _hellaswag_item:
        return _hellaswag_text_rows(path)
    if not is_record_file(path):
        raise DataError(f"{spec.display_name}: cannot read {path}; expected .jsonl or .json (optionally .gz)"
                        + (" (or the 6-line .txt export)" if spec.build is _hellaswag_item else ""))
    return iter_records(path)


def _build(spec: TaskSpec, where: str, row: Any, position: int) -> MultipleChoiceItem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    try:
        item = spec.build(row, position)
    except KeyError as exc:
        raise DataError(f"{where}: {spec.display_name} row lacks field {exc}; fields present: "
                        f"{', '.join(sorted(row))}") from exc
    except (DataError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: {exc}") from exc
    if not 0 <= item.gold < len(item.choices):
        raise DataError(f"{where}: gold label {item.gold} is outside the {len(item.choices)} choices")
    return item


def load_task(name: str, path: Path | None, limit: int | None) -> list[MultipleChoiceItem]:
    """The first `limit` items (all when None, like lm-eval's --limit) of a task, from `path` or the Hub."""
    spec = _spec(name)
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be positive, got {limit}")
    flags = _path_flags(name)
    if path is None:
        if spec.hub_id is None:
            raise DataError(f"{spec.display_name} has no Hub copy: pass {flags} (e.g. the prepared data directory "
                            f"holding {spec.local_patterns[0]})")
        dataset = task_dataset(name)
        assert dataset is not None
        rows = ((f"{spec.hub_id}[{i}]", row) for i, row in enumerate(load_hub_rows(dataset, flags)))
        source = f"hf://{spec.hub_id}" + (f"/{spec.hub_config}" if spec.hub_config else "")
    else:
        file = resolve_local_file(Path(path), spec.local_patterns, spec.display_name, flags)
        rows, source = _local_rows(spec, file), str(file)
    items = []
    for position, (where, row) in enumerate(rows):
        if limit is not None and position >= limit:
            break
        items.append(_build(spec, where, row, position))
    if not items:
        raise DataError(f"{spec.display_name}: no items in {source}")
    log.info("%s: %d items from %s (%s split)", spec.display_name, len(items), source, spec.split)
    return items
