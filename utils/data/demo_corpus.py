"""Embedded demo corpus ``demo_tiny``: the pretraining stories of utils/data/demo_stories.py with SFT, DPO and
multiple-choice sets built from held-out stories of the same grammar, written as DEMO_FILES.

* Pretraining, SFT, DPO and MC stories share one generator (same distribution) but come from separate
  seeded streams, and held-out stories are de-duplicated against the pretraining texts.
* SFT responses follow one fixed pattern per question kind and contain the answer span verbatim, so
  exact-match scoring is trivial and an in-context copying model can learn the task.
* DPO rejected answers reuse the chosen pattern with a same-type fact that is absent from the story and
  has the same word count, so neither fluency nor length explains a preference.
* MC rows (HellaSwag format) stop mid-sentence; the right ending names an entity from the context, the
  distractors name entities that never occur in it, so context copying beats chance (25 %).

Only ``random.Random`` seeded with fixed strings is used and JSON is written ASCII-only with sorted
keys, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pathlib
import random
import time
from collections.abc import Callable, Iterable, Iterator

from utils.data.demo_stories import (
    ANIMALS,
    COLOURS,
    FUNCTION_WORDS,
    NAMES,
    NEGATIVE_FEELINGS,
    OBJECTS,
    PLACES,
    POSITIVE_FEELINGS,
    PREPOSITIONS,
    TIMES,
    WEATHERS,
    WORD_RE,
    Item,
    Story,
    callback_sentence,
    capitalize_first,
    iter_demo_stories,
    make_story,
    stream_rng,
    with_article,
)

logger = logging.getLogger(__name__)

DEMO_FILES = ("stories.jsonl", "sft_train.json", "sft_eval.json", "dpo_train.json", "dpo_eval.json",
              "mc_validation.jsonl")

DEFAULT_SEED = 1234
DEFAULT_NUM_STORIES = 22_000  # about 5 MB of stories.jsonl (~235 bytes per line)
DEFAULT_NUM_SFT_TRAIN = 2000
DEFAULT_NUM_SFT_EVAL = 200
DEFAULT_NUM_DPO_TRAIN = 1000
DEFAULT_NUM_DPO_EVAL = 200
DEFAULT_NUM_MC = 500
MC_NUM_ENDINGS = 4
MC_ACTIVITY_LABEL = "Demo story"
QUESTION_SEPARATOR = "\nQuestion: "
JSON_INDENT = 1

# ---------------------------------------------------------------- question, answer and distractor templates
# Question kind -> (question, answer sentence); {fact} is the story's fact (or a wrong one for DPO).
QUESTION_KINDS = {
    "where": ("Where did {hero} go?", "{hero} went to {fact}."),
    "when": ("When did {hero} go to {place}?", "{hero} went to {place} {fact}."),
    "found": ("What did {hero} find?", "{hero} found {fact}."),
    "colour": ("What colour was the {noun}?", "The {noun} was {fact}."),
    "met": ("Who did {hero} meet?", "{hero} met {fact}."),
    "gave": ("Who did {hero} give the {noun} to?", "{hero} gave the {noun} to {fact}."),
    "felt": ("How did {hero} feel?", "{hero} felt {fact}."),
    "animal": ("What animal did {hero} see?", "{hero} saw {fact}."),
    "weather": ("What was the weather like?", "The weather was {fact}."),
}

# Same-type alternatives for DPO rejected answers ("found" is built from the story's object instead).
FACT_POOLS = {"where": PLACES, "when": TIMES, "colour": COLOURS, "met": NAMES, "gave": NAMES,
              "felt": POSITIVE_FEELINGS + NEGATIVE_FEELINGS, "weather": WEATHERS,
              "animal": tuple(with_article(a) for a in ANIMALS)}

# Distractor entities per MC kind (the kinds of demo_stories.MC_TEMPLATES).
MC_POOLS = {"place": PLACES, "object": tuple(f"{c} {noun}" for c in COLOURS for noun, _ in OBJECTS),
            "gift": NAMES, "goodbye": NAMES, "animal": tuple(f"the {a}" for a in ANIMALS)}


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in WORD_RE.findall(text)} - FUNCTION_WORDS


def _answer_span(fact: str) -> str:
    """The exact-match span of a fact: a time phrase may open a sentence ("On Monday, ..."), so its
    preposition is dropped to keep the span verbatim in the story whatever the capitalisation."""
    first, _, rest = fact.partition(" ")
    return rest if first in PREPOSITIONS else fact


def _held_out_stories(rng: random.Random, seen: set[str]) -> Iterator[Story]:
    """Stories whose text was never emitted before (pretraining or another held-out set)."""
    while True:
        story = make_story(rng)
        if story.text not in seen:
            seen.add(story.text)
            yield story


def _question_and_answer(story: Story, kind: str, fact: str) -> tuple[str, str]:
    question, answer = QUESTION_KINDS[kind]
    slots = {"hero": story.hero.name, "place": story.place, "noun": story.item.noun, "fact": fact}
    return story.text + QUESTION_SEPARATOR + question.format(**slots), capitalize_first(answer.format(**slots))


def _wrong_fact(story: Story, kind: str, rng: random.Random) -> str:
    """A fact of the same type and word count whose words do not occur in the story."""
    used = _content_words(story.text)
    if kind == "found":
        noun, materials = rng.choice([o for o in OBJECTS if o[0] not in used])
        colour = rng.choice([c for c in COLOURS if c not in used])
        material = rng.choice(materials) if story.item.material else None
        return Item(story.item.size, colour, material, noun).phrase
    length = len(story.facts[kind].split())
    # Every pool has at least two facts of each word count, so one is always free of the story's words.
    return rng.choice([f for f in FACT_POOLS[kind] if len(f.split()) == length and not _content_words(f) & used])


def _sft_record(story: Story, rng: random.Random) -> dict[str, str]:
    kind = rng.choice(tuple(story.facts))
    prompt, response = _question_and_answer(story, kind, story.facts[kind])
    return {"prompt": prompt, "response": response, "answer": _answer_span(story.facts[kind])}


def _dpo_record(story: Story, rng: random.Random) -> dict[str, str]:
    kind = rng.choice(tuple(story.facts))
    prompt, chosen = _question_and_answer(story, kind, story.facts[kind])
    _, rejected = _question_and_answer(story, kind, _wrong_fact(story, kind, rng))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _mc_row(story: Story, rng: random.Random) -> dict[str, object]:
    """A HellaSwag row without its position fields ("ind", "source_id")."""
    kind, start, correct, tail = callback_sentence(story, rng)
    ctx = f"{story.text} {start}"
    used = _content_words(ctx)
    pool = [e for e in MC_POOLS[kind] if len(e.split()) == len(correct.split()) and not _content_words(e) & used]
    endings = [e + tail for e in rng.sample(pool, MC_NUM_ENDINGS - 1)]
    label = rng.randrange(MC_NUM_ENDINGS)
    endings.insert(label, correct + tail)
    # The whole context goes in ctx_a: lm-eval builds ctx_a + " " + ctx_b.capitalize(), and capitalize() would
    # lowercase the names in ctx_b that the right ending copies ("Tom" -> "tom").
    return {"activity_label": MC_ACTIVITY_LABEL, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
            "endings": endings, "label": label, "split": "validation"}


def _dumps(obj: object, indent: int | None = None) -> str:
    return json.dumps(obj, ensure_ascii=True, sort_keys=True, indent=indent)


def _write_atomic(path: pathlib.Path, chunks: Iterable[str]) -> None:
    # Readers never see a half-written file: write next to the target, then rename over it.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.writelines(chunks)
    os.replace(tmp, path)


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> int:
    _write_atomic(path, (_dumps(row) + "\n" for row in rows))
    return len(rows)


def _write_json(path: pathlib.Path, rows: list[dict]) -> int:
    _write_atomic(path, (_dumps(rows, indent=JSON_INDENT), "\n"))
    return len(rows)


def generate_demo_corpus(out_dir: pathlib.Path, seed: int = DEFAULT_SEED, num_stories: int = DEFAULT_NUM_STORIES,
                         num_sft_train: int = DEFAULT_NUM_SFT_TRAIN, num_sft_eval: int = DEFAULT_NUM_SFT_EVAL,
                         num_dpo_train: int = DEFAULT_NUM_DPO_TRAIN, num_dpo_eval: int = DEFAULT_NUM_DPO_EVAL,
                         num_mc: int = DEFAULT_NUM_MC) -> dict[str, int]:
    """Write DEMO_FILES into out_dir (created if needed); return counts per file. Same seed => byte-identical files."""
    start = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(iter_demo_stories(seed, num_stories))
    seen = set(texts)  # shared by all held-out streams: no story text appears in two files

    def held_out(stream: str, make_row: Callable[[Story, random.Random], dict], count: int) -> list[dict]:
        rng = stream_rng(seed, stream)
        return [make_row(story, rng) for story in itertools.islice(_held_out_stories(rng, seen), count)]

    sft = held_out("sft", _sft_record, num_sft_train + num_sft_eval)
    dpo = held_out("dpo", _dpo_record, num_dpo_train + num_dpo_eval)
    mc = [{"ind": i, "source_id": f"demo_tiny-{i}", **row} for i, row in enumerate(held_out("mc", _mc_row, num_mc))]

    counts = {
        "stories.jsonl": _write_jsonl(out_dir / "stories.jsonl", [{"text": t} for t in texts]),
        "sft_train.json": _write_json(out_dir / "sft_train.json", sft[:num_sft_train]),
        "sft_eval.json": _write_json(out_dir / "sft_eval.json", sft[num_sft_train:]),
        "dpo_train.json": _write_json(out_dir / "dpo_train.json", dpo[:num_dpo_train]),
        "dpo_eval.json": _write_json(out_dir / "dpo_eval.json", dpo[num_dpo_train:]),
        "mc_validation.jsonl": _write_jsonl(out_dir / "mc_validation.jsonl", mc),
    }
    logger.info("demo_tiny (seed %d) written to %s in %.2fs: %s", seed, out_dir, time.perf_counter() - start, counts)
    return counts
