"""The story grammar of the demo corpus ``demo_tiny``: vocabulary, sentence templates, and the seeded stories.

Why synthetic: the demo must run offline on a CPU in minutes, and a tiny LLaMA (2-4 layers) only shows
gains on text with a small vocabulary and strong regularities. A story grammar gives exactly that. Each
story is a handful of facts (who went where and when, what was found, its colour, who received it, how
someone felt, ...) rendered through several templates per event, so the text is varied yet learnable,
and the same facts yield questions whose answers can be checked (utils/data/demo_corpus.py builds the
SFT, DPO and multiple-choice sets from them).

Only ``random.Random`` seeded with fixed strings is used, so the same seed gives the same stories.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

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


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


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
        return with_article(" ".join(w for w in (self.size, self.colour, self.material, self.noun) if w))

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


def capitalize_first(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def stream_rng(seed: int, stream: str) -> random.Random:
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


def make_story(rng: random.Random) -> Story:
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
        slots["animal"] = facts["animal"] = with_article(animal)
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
    text = " ".join(capitalize_first(rng.choice(templates[event]).format(**slots)) for event in plan)
    return Story(text, facts, hero, slots["place"], item, companion, animal)


def iter_demo_stories(seed: int, num_stories: int) -> Iterator[str]:
    """The pretraining stories, lazily (used by the data-preparation stage for streaming)."""
    rng = stream_rng(seed, "stories")
    for _ in range(num_stories):
        yield _pretraining_text(make_story(rng), rng)


def _mc_entity(story: Story, kind: str) -> str:
    if kind == "place":
        return story.place
    if kind == "object":
        return story.item.short
    if kind == "animal":
        return f"the {story.animal}"
    return story.companion.name  # "gift" and "goodbye"


def callback_sentence(story: Story, rng: random.Random) -> tuple[str, str, str, str]:
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
    return kind, capitalize_first(start.format(**slots)), _mc_entity(story, kind), tail.format(**slots)


def _pretraining_text(story: Story, rng: random.Random) -> str:
    _, start, entity, tail = callback_sentence(story, rng)
    return f"{story.text} {start} {entity}{tail}"
