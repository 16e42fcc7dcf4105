"""A heuristic quality score in [0, 1] for one generated response, from six documented, testable signals.

Each signal is in [0, 1] (1 = good) and the score is their weighted mean:

- repetition      1 - share of word 3-grams that repeat an earlier 3-gram ("the cat the cat the cat" -> low)
- distinct        distinct word bigrams / all word bigrams (lexical variety)
- length          1 inside [min_words, max_words], falling linearly to 0 at 0 words or 3x max_words
- relevance       share of the prompt's content words (minus stop and instruction words, crudely stemmed) that
                  the response uses; 1 when the prompt has none (a bare "Continue:" prompt)
- ending          1 if the response ends in sentence punctuation (or a closing quote/bracket after it), else 0.5
- clean           1 - share of characters that are replacement characters, control characters or stray symbols

What it cannot judge: whether anything is true, whether reasoning is valid, whether an instruction was actually
followed, helpfulness, safety, style, and the quality of non-English text beyond the character check. It is a
smoke alarm for degenerate output (loops, gibberish, empty or runaway answers), not a grade.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

WORD_RE = re.compile(r"[\w']+", re.UNICODE)
ENDING_RE = re.compile(r"[.!?…][\"'”’)\]]*\s*$")
GARBAGE_RE = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f�]|[#@^~`|\\{}<>]{2,}")
STOP_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been it its this that these those "
    "i you he she we they me him her us them my your his our their what which who whom how why when where do does "
    "did can could would should will shall may might must not no yes so than then there here about into over please "
    "write tell give explain describe list answer question short long story poem sentence sentences line lines word "
    "words one two three four five".split()  # instruction words say what to write, not what it is about
)
WEIGHTS = {"repetition": 0.2, "distinct": 0.1, "length": 0.15, "relevance": 0.3, "ending": 0.1, "clean": 0.15}
DEFAULT_MIN_WORDS = 5
DEFAULT_MAX_WORDS = 200
UNFINISHED_ENDING = 0.5


@dataclass(frozen=True)
class QualitySignals:
    repetition: float
    distinct: float
    length: float
    relevance: float
    ending: float
    clean: float

    @property
    def score(self) -> float:
        return sum(WEIGHTS[name] * value for name, value in asdict(self).items())


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repetition_signal(words: list[str]) -> float:
    grams = _ngrams(words, 3)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def distinct_signal(words: list[str]) -> float:
    grams = _ngrams(words, 2)
    if not grams:
        return 1.0 if words else 0.0
    return len(set(grams)) / len(grams)


def length_signal(count: int, min_words: int, max_words: int) -> float:
    if count < min_words:
        return count / min_words
    if count <= max_words:
        return 1.0
    return max(0.0, 1.0 - (count - max_words) / (2 * max_words))


def _stem(word: str) -> str:
    """Crude suffix stripping so "keys"/"key" and "walked"/"walk" match; enough for an overlap signal."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)]
    return word


def relevance_signal(prompt: str, words: list[str]) -> float:
    wanted = {_stem(w) for w in _words(prompt) if w not in STOP_WORDS and len(w) > 2}
    if not wanted:
        return 1.0
    return len(wanted & {_stem(w) for w in words}) / len(wanted)


def clean_signal(text: str) -> float:
    if not text:
        return 0.0
    bad = sum(len(m.group(0)) for m in GARBAGE_RE.finditer(text))
    return max(0.0, 1.0 - bad / len(text))


def assess_response(prompt: str, response: str, min_words: int = DEFAULT_MIN_WORDS,
                    max_words: int = DEFAULT_MAX_WORDS) -> QualitySignals:
    words = _words(response)
    return QualitySignals(
        repetition=repetition_signal(words),
        distinct=distinct_signal(words),
        length=length_signal(len(words), min_words, max_words),
        relevance=relevance_signal(prompt, words),
        ending=1.0 if ENDING_RE.search(response) else UNFINISHED_ENDING,
        clean=clean_signal(response),
    )
