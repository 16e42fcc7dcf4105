"""Fine-tuning data for stages 03 (SFT) and 04 (DPO): every supported format read into one shape, validated and
split (the records come from utils.finetune.sources; tokenization is in utils.finetune.tokenization).

SFT formats (detected from the first item; every item must then have that format's fields):
  prompt_response  {"prompt", "response"} (+ optional "system"; "answer" = the gold span of a demo question)
  alpaca           {"instruction", "input", "output"}  (tatsu-lab/alpaca; "input" may be empty or absent)
  dolly            {"instruction", "context", "response"}  (databricks/databricks-dolly-15k; "context" optional)
  messages         {"messages": [{"role", "content"}, ...]} multi-turn, ending with an assistant turn
  oasst            flat message rows {"message_id", "parent_id", "role", "text"} (OpenAssistant/oasst1), turned
                   into conversations along the top-ranked replies
DPO formats:
  explicit         {"prompt", "chosen", "rejected"}; the prompt is a user message (string) or a list of messages
  hh               {"chosen", "rejected"} full hh-rlhf dialogues, split at the last "\\n\\nAssistant:"
  ultrafeedback    {"prompt", "chosen": [messages], "rejected": [messages]} (HuggingFaceH4/ultrafeedback_binarized)

Items that cannot be trained on (empty answers, hh pairs with identical answers or different prompts) are dropped
and counted; an item missing a field is an error naming its index and the fields it has.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from utils.core.errors import DataError
from utils.finetune.sources import DPO_HUB_DATASETS, SFT_HUB_DATASETS, load_records
from utils.lm.templates import ROLES, Message

log = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"
HH_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class SFTExample:
    """One training conversation (ending with the assistant turn to learn) and, for demo questions, the gold span."""

    messages: list[Message]
    index: int  # position in the source, for messages about the item
    answer: str | None = None


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[Message]  # the conversation before the answer; ends with a user turn
    chosen: str
    rejected: str
    index: int


@dataclass
class DataReport:
    """What a load kept and why it dropped the rest (written to meta.json)."""

    source: str
    format: str
    items: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "items": self.items, "kept": self.kept,
                "dropped": dict(self.dropped)}


# ---------------------------------------------------------------- validation helpers


def _fields(record: dict[str, Any]) -> str:
    return ", ".join(sorted(record)) or "(none)"


def _require(record: dict[str, Any], index: int, fmt: str, required: Sequence[str], source: str) -> None:
    missing = [name for name in required if name not in record]
    if missing:
        raise DataError(f"{source}: item {index} is missing field(s) {', '.join(missing)} (the dataset is in the "
                        f"{fmt} format, which needs {', '.join(required)}); the item has: {_fields(record)}")


def _text(record: dict[str, Any], name: str, index: int, source: str, optional: bool = False) -> str:
    value = record.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{source}: item {index} field '{name}' must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any, index: int, source: str, name: str = "messages") -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: item {index} field '{name}' must be a non-empty list of {{role, content}}")
    messages = []
    for turn, message in enumerate(value):
        if not (isinstance(message, dict) and message.get("role") in ROLES
                and isinstance(message.get("content"), str)):
            raise DataError(f"{source}: item {index} {name}[{turn}] must be {{'role': one of {', '.join(ROLES)}, "
                            f"'content': string}}, got {message!r}"[:400])
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _detect(record: dict[str, Any], formats: dict[str, tuple[Callable[[dict[str, Any]], bool], tuple[str, ...]]],
            source: str) -> str:
    for name, (matches, _) in formats.items():
        if matches(record):
            return name
    known = "; ".join(f"{name}: {', '.join(required)}" for name, (_, required) in formats.items())
    raise DataError(f"{source}: item 0 matches no known format; it has fields: {_fields(record)}. Known formats "
                    f"(required fields): {known}")


# ---------------------------------------------------------------- SFT


def _with_input(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def _sft_prompt_response(r: dict[str, Any], i: int, src: str) -> SFTExample:
    messages = [{"role": "system", "content": _text(r, "system", i, src)}] if r.get("system") else []
    messages += [{"role": "user", "content": _text(r, "prompt", i, src)},
                 {"role": "assistant", "content": _text(r, "response", i, src)}]
    answer = _text(r, "answer", i, src) if "answer" in r else None
    return SFTExample(messages, i, answer)


def _sft_alpaca(r: dict[str, Any], i: int, src: str) -> SFTExample:
    user = _with_input(_text(r, "instruction", i, src), _text(r, "input", i, src, optional=True))
    return SFTExample([{"role": "user", "content": user}, {"role": "assistant", "content": _text(r, "output", i, src)}],
                      i)


def _sft_dolly(r: dict[str, Any], i: int, src: str) -> SFTExample:
    user = _with_input(_text(r, "instruction", i, src), _text(r, "context", i, src, optional=True))
    return SFTExample([{"role": "user", "content": user},
                       {"role": "assistant", "content": _text(r, "response", i, src)}], i)


def _sft_messages(r: dict[str, Any], i: int, src: str) -> SFTExample:
    return SFTExample(_messages(r["messages"], i, src), i)


SFTParser = Callable[[dict[str, Any], int, str], SFTExample]
SFT_FORMATS: dict[str, tuple[Callable[[dict[str, Any]], bool], tuple[str, ...]]] = {
    "messages": (lambda r: "messages" in r, ("messages",)),
    "oasst": (lambda r: "message_id" in r and "parent_id" in r, ("message_id", "parent_id", "role", "text")),
    "alpaca": (lambda r: "instruction" in r and "output" in r, ("instruction", "output")),
    "dolly": (lambda r: "instruction" in r and "response" in r, ("instruction", "response")),
    "prompt_response": (lambda r: "prompt" in r and "response" in r, ("prompt", "response")),
}
SFT_PARSERS: dict[str, SFTParser] = {"messages": _sft_messages, "alpaca": _sft_alpaca, "dolly": _sft_dolly,
                                     "prompt_response": _sft_prompt_response}


def oasst_conversations(records: list[dict[str, Any]], source: str) -> list[SFTExample]:
    """OASST message trees -> conversations: from each root, follow the best-ranked reply at every step (rank 0,
    or the only reply), and keep each maximal path that ends with an assistant turn."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for index, record in enumerate(records):
        _require(record, index, "oasst", SFT_FORMATS["oasst"][1], source)
        if record["role"] not in OASST_ROLES:
            raise DataError(f"{source}: item {index} has role {record['role']!r}; expected prompter or assistant")
        children.setdefault(record["parent_id"], []).append({**record, "_index": index})
    examples = []
    for root in children.get(None, []):
        path, node = [root], root
        while replies := children.get(node["message_id"]):
            node = min(replies, key=lambda r: r.get("rank") if r.get("rank") is not None else float("inf"))
            path.append(node)
        while path and path[-1]["role"] != "assistant":
            path.pop()
        if path:
            messages = [{"role": OASST_ROLES[m["role"]], "content": m["text"]} for m in path]
            examples.append(SFTExample(messages, root["_index"]))
    return examples


def _nonempty_answer(example: SFTExample) -> bool:
    return bool(example.messages[-1]["content"].strip())


def load_sft_examples(source: str, max_samples: int | None = None) -> tuple[list[SFTExample], DataReport]:
    """Read any SFT format into conversations ending with an assistant turn; drop (and count) empty answers."""
    records = load_records(source, SFT_HUB_DATASETS)
    fmt = _detect(records[0], SFT_FORMATS, source)
    report = DataReport(source, fmt, items=len(records))
    if fmt == "oasst":
        examples = oasst_conversations(records, source)
    else:
        required = SFT_FORMATS[fmt][1]
        examples = []
        for index, record in enumerate(records):
            _require(record, index, fmt, required, source)
            examples.append(SFT_PARSERS[fmt](record, index, source))
    for example in examples:
        if example.messages[-1]["role"] != "assistant":
            raise DataError(f"{source}: item {example.index} does not end with an assistant message; a training "
                            f"conversation must end with the answer to learn")
    kept = [e for e in examples if _nonempty_answer(e)]
    report.dropped["empty_response"] = len(examples) - len(kept)
    kept = kept[:max_samples] if max_samples is not None else kept
    report.kept = len(kept)
    if not kept:
        raise DataError(f"dataset {source} has no usable items ({report.items} read, {dict(report.dropped)})")
    _log_report(report)
    return kept, report


# ---------------------------------------------------------------- DPO


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | str:
    """(prompt, chosen answer, rejected answer), the prompt ending with the last "\\n\\nAssistant:"; or the reason
    the pair is unusable ("no_assistant_turn", "prompt_mismatch", "identical", "empty_answer")."""
    cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        return "no_assistant_turn"
    prompt = chosen[:cut_c + len(HH_ASSISTANT)]
    if prompt != rejected[:cut_r + len(HH_ASSISTANT)]:
        return "prompt_mismatch"
    answer_c, answer_r = chosen[len(prompt):].strip(), rejected[len(prompt):].strip()
    if not answer_c or not answer_r:
        return "empty_answer"
    if answer_c == answer_r:
        return "identical"
    return prompt, answer_c, answer_r


def hh_messages(prompt: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> user/assistant/user messages."""
    parts = HH_TURN_RE.split(prompt)  # ['', 'Human', ' a', 'Assistant', ' b', ..., 'Assistant', '']
    turns = [{"role": HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]
    if parts[0].strip():  # text before the first marker: treat it as the opening user turn
        turns.insert(0, {"role": "user", "content": parts[0].strip()})
    return turns[:-1] if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"] else turns


def _pair_or_reason(prompt: list[Message], chosen: str, rejected: str, index: int) -> PreferencePair | str:
    if not chosen.strip() or not rejected.strip():
        return "empty_answer"
    if chosen.strip() == rejected.strip():
        return "identical"
    return PreferencePair(prompt, chosen, rejected, index)


def _dpo_explicit(r: dict[str, Any], i: int, src: str) -> PreferencePair | str:
    prompt = r["prompt"]
    messages = ([{"role": "user", "content": _text(r, "prompt", i, src)}] if not isinstance(prompt, list)
                else _messages(prompt, i, src, "prompt"))
    return _pair_or_reason(messages, _text(r, "chosen", i, src), _text(r, "rejected", i, src), i)


def _dpo_hh(r: dict[str, Any], i: int, src: str) -> PreferencePair | str:
    split = split_hh_dialogue(_text(r, "chosen", i, src), _text(r, "rejected", i, src))
    if isinstance(split, str):
        return split
    prompt, chosen, rejected = split
    return PreferencePair(hh_messages(prompt), chosen, rejected, i)


def _dpo_ultrafeedback(r: dict[str, Any], i: int, src: str) -> PreferencePair | str:
    chosen, rejected = _messages(r["chosen"], i, src, "chosen"), _messages(r["rejected"], i, src, "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return "no_assistant_turn"
    if chosen[:-1] != rejected[:-1]:
        return "prompt_mismatch"
    return _pair_or_reason(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], i)


DPO_FORMATS: dict[str, tuple[Callable[[dict[str, Any]], bool], tuple[str, ...]]] = {
    "ultrafeedback": (lambda r: "prompt" in r and isinstance(r.get("chosen"), list), ("prompt", "chosen", "rejected")),
    "explicit": (lambda r: "prompt" in r and "chosen" in r, ("prompt", "chosen", "rejected")),
    "hh": (lambda r: "chosen" in r and "prompt" not in r, ("chosen", "rejected")),
}
DPO_PARSERS = {"explicit": _dpo_explicit, "hh": _dpo_hh, "ultrafeedback": _dpo_ultrafeedback}


def load_preference_pairs(source: str, max_samples: int | None = None) -> tuple[list[PreferencePair], DataReport]:
    """Read any DPO format into (prompt messages, chosen, rejected); unusable pairs are dropped and counted."""
    records = load_records(source, DPO_HUB_DATASETS)
    fmt = _detect(records[0], DPO_FORMATS, source)
    report = DataReport(source, fmt, items=len(records))
    required, parse = DPO_FORMATS[fmt][1], DPO_PARSERS[fmt]
    pairs = []
    for index, record in enumerate(records):
        _require(record, index, fmt, required, source)
        result = parse(record, index, source)
        if isinstance(result, str):
            report.dropped[result] += 1
        else:
            pairs.append(result)
    pairs = pairs[:max_samples] if max_samples is not None else pairs
    report.kept = len(pairs)
    if not pairs:
        raise DataError(f"dataset {source} has no usable preference pairs ({report.items} read, dropped "
                        f"{dict(report.dropped)})")
    _log_report(report)
    return pairs, report


def _log_report(report: DataReport) -> None:
    dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items() if n) or "none"
    log.info("%s (%s format): %d items, %d kept; dropped: %s", report.source, report.format, report.items,
             report.kept, dropped)


# ---------------------------------------------------------------- splits


def seeded_split(items: Sequence[Any], count: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(rest, held_out): `count` items drawn with a seeded shuffle; order is kept within each part."""
    if count <= 0:
        return list(items), []
    if count >= len(items):
        raise DataError(f"cannot hold out {count} of {len(items)} items and still train; lower the split or add data")
    chosen = set(random.Random(seed).sample(range(len(items)), count))
    return ([x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen])


def split_count(total: int, fraction: float) -> int:
    """How many of `total` items a validation fraction takes: at least one when the fraction is positive."""
    return max(1, round(total * fraction)) if fraction > 0 else 0
