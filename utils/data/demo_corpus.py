"""Embedded demo corpus ``demo_tiny``: seeded synthetic stories with SFT, DPO and multiple-choice sets.

Why synthetic: the demo must run offline on a CPU in minutes, and a tiny LLaMA (2-4 layers) only shows
gains on text with a small vocabulary and strong regularities. A story grammar gives exactly that. Each
story is a handful of facts (who went where and when, what was found, its colour, who received it, how
someone felt, ...) rendered through several templates per event, so the text is varied yet learnable,
and the same facts yield questions whose answers can be checked.

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
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

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

# ---------------------------------------------------------------- vocabulary
# No fact word (name, place, time, colour, object, material, animal, weather, feeling) occurs in another
# list or in a template, so a fact's words identify it: "absent from the story" is a simple word-set test.
FEMALE_NAMES = ("Anna", "Emma", "Lucy", "Mia", "Sophie", "Olivia", "Chloe", "Grace", "Ella", "Lily",
                "Zoe", "Ruby", "Hannah", "Alice", "Clara", "Julia", "Nora", "Maya", "Eva", "Isla",
                "Amy", "Kate", "Laura", "Sarah", "Rosa", "Ivy", "Leah", "Nina", "Tessa", "Fiona")
MALE_NAMES = ("Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Oliver", "Noah", "Liam", "Lucas",
              "Adam", "Daniel", "Felix", "Hugo", "Oscar", "Peter", "Harry", "Henry", "Theo", "Ethan",
              "Owen", "Paul", "Simon", "David", "Alex", "Finn", "Jacob", "Luke", "Ryan", "Victor")
NAMES = FEMALE_NAMES + MALE_NAMES
PLACES = ("the park", "the library", "the river", "the beach", "the farm", "the market", "the zoo",
          "the forest", "the lake", "the garden", "the museum", "the school", "the bakery", "the hill",
          "the harbour", "the castle", "the pond", "the playground", "the village", "the meadow",
          "the cafe", "the orchard", "the valley", "the cinema", "the island", "the toy shop",
          "the swimming pool", "the post office", "the train station", "the town hall")
TIMES = ("in the morning", "in the afternoon", "in the evening", "at noon", "after lunch",
         "after breakfast", "before dinner", "on Monday", "on Tuesday", "on Wednesday", "on Thursday",
         "on Friday", "on Saturday", "on Sunday")
SIZES = ("small", "big", "little", "tiny", "large", "old", "new")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "brown",
           "grey", "silver")
OBJECTS = (("ball", ("rubber", "plastic")), ("box", ("wooden", "metal", "cardboard")),
           ("cup", ("plastic", "metal", "glass")), ("kite", ("paper", "plastic")),
           ("hat", ("woollen", "straw")), ("scarf", ("woollen", "silk")), ("key", ("metal", "brass")),
           ("spoon", ("wooden", "metal")), ("bucket", ("plastic", "metal")), ("bell", ("metal", "brass")),
           ("boat", ("wooden", "paper")), ("car", ("plastic", "metal")), ("bag", ("leather", "cotton")),
           ("button", ("plastic", "wooden")), ("bottle", ("glass", "plastic")), ("flag", ("paper", "cotton")),
           ("pencil", ("wooden",)), ("doll", ("wooden", "rag")), ("whistle", ("metal", "plastic")),
           ("drum", ("wooden", "metal")), ("basket", ("straw", "wicker")), ("lamp", ("metal", "glass")))
ANIMALS = ("dog", "cat", "duck", "owl", "rabbit", "horse", "goat", "frog", "squirrel", "fox", "hen",
           "cow", "sheep", "pig", "mouse", "hedgehog", "swan", "deer")
WEATHERS = ("sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "cold", "warm")
POSITIVE_FEELINGS = ("happy", "glad", "excited", "proud", "cheerful", "calm")
NEGATIVE_FEELINGS = ("sad", "tired", "sleepy", "worried", "bored", "grumpy")
RELATIONS = ("friend", "cousin", "neighbour")
# Words that glue a fact phrase together; they carry no identity ("the park" vs "the zoo").
PREPOSITIONS = ("in", "on", "at", "after", "before")
FUNCTION_WORDS = frozenset(("a", "an", "the") + PREPOSITIONS)
WORD_RE = re.compile(r"[A-Za-z]+")

# ---------------------------------------------------------------- sentence templates
GO = ("{time}, {hero} went to {place}.", "{hero} went to {place} {time}.", "{time}, {hero} walked to {place}.",
      "{hero} wanted to see {place}, so {he} went there {time}.")
WEATHER = ("It was a {weather} day.", "The weather was {weather}.", "That day it was {weather} outside.")
MEET = ("At {place}, {hero} met {friend}.", "There, {he} met {his} friend {friend}.",
        "{hero} met {friend} near the gate.", "{friend} was there too, and {hero} said hello.")
ANIMAL = ("{hero} saw {animal} under a tree.", "Suddenly, {hero} saw {animal} running across the grass.",
          "{he} stopped to watch {animal} for a while.")
FIND = ("{hero} found {item} on the ground.", "Under a bench, {he} found {item}.",
        "Then {hero} looked down and found {item}.", "Behind a rock, {hero} found {item}.",
        "{hero} looked around and found {item} in the grass.")
FILLER_SOLO = ("{hero} walked around for a while.", "{he} sang a little song.", "{he} sat down and rested.")
FILLER_PAIR = ("They played together for a long time.", "The two friends laughed and talked.",
               "{hero} and {friend} sat down and rested.")
GIVE = ("Later, {hero} gave the {thing} to {to}.", "{hero} gave the {thing} to {to} as a present.",
        "At home, {hero} gave the {thing} to {to}.")
FEEL = ("{hero} felt {feeling}.", "{hero} was very {feeling}.", "{hero} felt {feeling} because {reason}.")
POSITIVE_REASONS = ("{he} had found the {thing}", "it was a lovely day", "{he} had a new treasure")
NEGATIVE_REASONS = ("it was getting late", "{he} wanted to go home", "the day was almost over")
END = ("Then {hero} went home.", "At the end of the day, {he} walked home.", "It was a good day.")
# Probability of each optional event; "go" and "find" are always told.
OPTIONAL_EVENTS = {"weather": 0.5, "companion": 0.7, "animal": 0.4, "filler": 0.4, "give": 0.6,
                   "feel": 0.7, "end": 0.3}

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


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# Same-type alternatives for DPO rejected answers ("found" is built from the story's object instead).
FACT_POOLS = {"where": PLACES, "when": TIMES, "colour": COLOURS, "met": NAMES, "gave": NAMES,
              "felt": POSITIVE_FEELINGS + NEGATIVE_FEELINGS, "weather": WEATHERS,
              "animal": tuple(_with_article(a) for a in ANIMALS)}

# MC kind -> (ctx_b, tail) pairs: an ending is "<entity><tail>", the tail being shared by all endings.
MC_TEMPLATES = {
    "place": (("The next day, {hero} went back to", " again."), ("A week later, {hero} visited", " once more."),
              ("Before going home, {hero} took one last look at", ".")),
    "object": (("Before leaving, {hero} picked up the", " again."), ("{hero} looked closely at the", " and smiled.")),
    "gift": (("Then {hero} gave the {thing} to", "."), ("In the end, {hero} gave the {thing} to", " as a present.")),
    "goodbye": (("At the end of the day, {hero} said goodbye to", "."),
                ("{hero} waved goodbye to", " and walked home.")),
    "animal": (("Before leaving, {hero} looked once more at", "."), ("{hero} smiled and waved at", ".")),
}
MC_POOLS = {"place": PLACES, "object": tuple(f"{c} {noun}" for c in COLOURS for noun, _ in OBJECTS),
            "gift": NAMES, "goodbye": NAMES, "animal": tuple(f"the {a}" for a in ANIMALS)}


class Person(NamedTuple):
    name: str
    female: bool

    @property
    def he(self) -> str:
        return "she" if self.female else "he"

    @property
    def his(self) -> str:
        return "her" if self.female else "his"


class Item(NamedTuple):
    size: str | None
    colour: str
    material: str | None
    noun: str

    @property
    def phrase(self) -> str:
        """Full first mention, e.g. "an old red wooden box"."""
        return _with_article(" ".join(w for w in (self.size, self.colour, self.material, self.noun) if w))

    @property
    def short(self) -> str:
        """Later mentions, e.g. "red box"."""
        return f"{self.colour} {self.noun}"


@dataclass(frozen=True)
class Story:
    text: str
    facts: dict[str, str]  # question kind -> fact as the answer sentence states it, for the facts told
    hero: Person
    place: str
    item: Item
    companion: Person | None
    animal: str | None


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in WORD_RE.findall(text)} - FUNCTION_WORDS


def _answer_span(fact: str) -> str:
    """The exact-match span of a fact: a time phrase may open a sentence ("On Monday, ..."), so its
    preposition is dropped to keep the span verbatim in the story whatever the capitalisation."""
    first, _, rest = fact.partition(" ")
    return rest if first in PREPOSITIONS else fact


def _stream_rng(seed: int, stream: str) -> random.Random:
    # String seeds are hashed with SHA-512 by random.seed, so streams are stable across runs and platforms.
    return random.Random(f"demo_tiny/{seed}/{stream}")


def _make_item(rng: random.Random) -> Item:
    noun, materials = rng.choice(OBJECTS)
    size = rng.choice(SIZES) if rng.random() < 0.6 else None
    material = rng.choice(materials) if rng.random() < 0.4 else None
    return Item(size, rng.choice(COLOURS), material, noun)


def _choose_events(rng: random.Random) -> dict[str, bool]:
    events = {name: rng.random() < p for name, p in OPTIONAL_EVENTS.items()}
    # Keep every story between 3 and 8 sentences (2 mandatory + 1..6 optional).
    if not any(events.values()):
        events["feel"] = True
    if all(events.values()):
        events["end"] = False
    return events


def _make_story(rng: random.Random) -> Story:
    hero, companion, other = (Person(n, n in FEMALE_NAMES) for n in rng.sample(NAMES, 3))
    events = _choose_events(rng)
    companion = companion if events["companion"] else None
    item = _make_item(rng)
    slots = {"hero": hero.name, "he": hero.he, "his": hero.his, "place": rng.choice(PLACES),
             "time": rng.choice(TIMES), "item": item.phrase, "thing": item.short}
    facts = {"where": slots["place"], "when": slots["time"], "found": item.phrase, "colour": item.colour}
    plan = ["go", "find"]  # event order; optional events are inserted below
    animal = rng.choice(ANIMALS) if events["animal"] else None

    if events["weather"]:
        slots["weather"] = facts["weather"] = rng.choice(WEATHERS)
        plan.insert(rng.randrange(2), "weather")  # before or right after "go"
    if companion:
        slots["friend"] = facts["met"] = companion.name
        plan.insert(plan.index("find"), "meet")
    if animal:
        slots["animal"] = facts["animal"] = _with_article(animal)
        plan.insert(plan.index("find"), "animal")
    if events["filler"]:
        plan.append("filler")
    if events["give"]:
        if companion and rng.random() < 0.5:
            slots["to"] = facts["gave"] = companion.name
        else:  # a new person, introduced by relation: "his cousin Mia"
            relation = rng.choice(RELATIONS + (("sister",) if other.female else ("brother",)))
            slots["to"] = f"{hero.his} {relation} {other.name}"
            facts["gave"] = other.name
        plan.append("give")
    if events["feel"]:
        positive = rng.random() < 0.6
        slots["feeling"] = facts["felt"] = rng.choice(POSITIVE_FEELINGS if positive else NEGATIVE_FEELINGS)
        slots["reason"] = rng.choice(POSITIVE_REASONS if positive else NEGATIVE_REASONS).format(**slots)
        plan.append("feel")
    if events["end"]:
        plan.append("end")

    templates = {"go": GO, "weather": WEATHER, "meet": MEET, "animal": ANIMAL, "find": FIND,
                 "filler": FILLER_PAIR if companion else FILLER_SOLO, "give": GIVE, "feel": FEEL, "end": END}
    text = " ".join(_cap(rng.choice(templates[event]).format(**slots)) for event in plan)
    return Story(text, facts, hero, slots["place"], item, companion, animal)


def iter_demo_stories(seed: int, num_stories: int) -> Iterator[str]:
    """The pretraining stories, lazily (used by the data-preparation stage for streaming)."""
    rng = _stream_rng(seed, "stories")
    for _ in range(num_stories):
        yield _pretraining_text(_make_story(rng), rng)


def _held_out_stories(rng: random.Random, seen: set[str]) -> Iterator[Story]:
    """Stories whose text was never emitted before (pretraining or another held-out set)."""
    while True:
        story = _make_story(rng)
        if story.text not in seen:
            seen.add(story.text)
            yield story


def _question_and_answer(story: Story, kind: str, fact: str) -> tuple[str, str]:
    question, answer = QUESTION_KINDS[kind]
    slots = {"hero": story.hero.name, "place": story.place, "noun": story.item.noun, "fact": fact}
    return story.text + QUESTION_SEPARATOR + question.format(**slots), _cap(answer.format(**slots))


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


def _mc_entity(story: Story, kind: str) -> str:
    if kind == "place":
        return story.place
    if kind == "object":
        return story.item.short
    if kind == "animal":
        return f"the {story.animal}"
    return story.companion.name  # "gift" and "goodbye"


def _callback(story: Story, rng: random.Random) -> tuple[str, str, str, str]:
    """A closing sentence that refers back to an entity of the story, as (kind, start, entity, tail).

    Pretraining stories end with one, so a model learns that such sentences copy an entity from the context;
    the multiple-choice rows cut the same kind of sentence before its entity.
    """
    gift_told = "gave" in story.facts  # the object is gone, so "pick it up" or "give it" would contradict
    available = {"place": True, "object": not gift_told, "gift": bool(story.companion) and not gift_told,
                 "goodbye": bool(story.companion), "animal": bool(story.animal)}
    kind = rng.choice([k for k, ok in available.items() if ok])
    start, tail = rng.choice(MC_TEMPLATES[kind])
    slots = {"hero": story.hero.name, "his": story.hero.his, "thing": story.item.short}
    return kind, _cap(start.format(**slots)), _mc_entity(story, kind), tail.format(**slots)


def _pretraining_text(story: Story, rng: random.Random) -> str:
    _, start, entity, tail = _callback(story, rng)
    return f"{story.text} {start} {entity}{tail}"


def _mc_row(story: Story, rng: random.Random) -> dict[str, object]:
    """A HellaSwag row without its position fields ("ind", "source_id")."""
    kind, start, correct, tail = _callback(story, rng)
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
        rng = _stream_rng(seed, stream)
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
