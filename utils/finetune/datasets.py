"""Fine-tuning data for stages 03 (SFT) and 04 (DPO): every supported format read into one shape, validated,
split, and tokenized with the shared prompt templates.

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

Inputs: a .json list, .jsonl, either gzipped, a directory of such files, or a Hugging Face dataset id (network).
Items that cannot be trained on (empty answers, hh pairs with identical answers or different prompts) are dropped
and counted; an item missing a field is an error naming its index and the fields it has.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.core.errors import DataError
from utils.core.hub import PublicDataset, load_hub_split, mirror_matches, mirror_root
from utils.lm.templates import ROLES, Message, PromptTemplate

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
HH_ASSISTANT = "\n\nAssistant:"
HH_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
IGNORE_INDEX = -100


@dataclass(frozen=True)
class HubDataset:
    split: str
    subset: str | None = None
    mirror: tuple[str, ...] = ()  # where a LUMI_DATA_DIR mirror keeps it, in the release's own format


# Hub ids the stages know; any other id is loaded with split "train" and its format detected like a file's.
SFT_HUB_DATASETS = {"tatsu-lab/alpaca": HubDataset("train", mirror=("alpaca/*.json",)),
                    "OpenAssistant/oasst1": HubDataset("train", mirror=("oasst1/*.jsonl.gz", "oasst1/*.jsonl")),
                    "databricks/databricks-dolly-15k": HubDataset("train", mirror=("dolly/*.jsonl",))}
DPO_HUB_DATASETS = {"Anthropic/hh-rlhf": HubDataset("train", mirror=("hh-rlhf/*/*.jsonl.gz",)),
                    "HuggingFaceH4/ultrafeedback_binarized": HubDataset(
                        "train_prefs", mirror=("ultrafeedback_binarized/*.jsonl", "ultrafeedback_binarized/*.parquet"))}


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


# ---------------------------------------------------------------- reading records


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _read_file(path: Path) -> list[dict[str, Any]]:
    with _open_text(path) as fh:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            records = []
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from exc
            return records
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json dataset must hold a list of items, got {type(data).__name__}; "
                        f"use a JSON list or JSON lines (.jsonl)")
    return data


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    if not files:
        raise DataError(f"{path} holds no dataset files ({', '.join(DATA_SUFFIXES)})")
    return files


def public_dataset(dataset_id: str, hub: HubDataset) -> PublicDataset:
    return PublicDataset(dataset_id, dataset_id, hub.subset, hub.split, hub.mirror)


def _load_hub(dataset_id: str, hub: HubDataset) -> list[dict[str, Any]]:
    """Rows of a hub dataset, or of its copy in the LUMI_DATA_DIR mirror when that is set."""
    dataset = public_dataset(dataset_id, hub)
    root = mirror_root()
    if root is None:
        try:
            return list(load_hub_split(dataset))
        except DataError as exc:
            raise DataError(f"{exc}\nOr pass a local file with --dataset_path (.json list, .jsonl or .jsonl.gz).") \
                from exc
    files = mirror_matches(dataset, root)
    if not files:
        where = " or ".join(hub.mirror) or "(no mirror layout is known for this id: pass a local --dataset_path)"
        raise DataError(f"{dataset_id} is not in the mirror LUMI_DATA_DIR={root}: expected {where}. Add it there, "
                        f"or unset LUMI_DATA_DIR to download it from the Hugging Face Hub.")
    log.info("%s: reading the mirror copy (%s)", dataset_id, ", ".join(str(f) for f in files))
    return [r for file in files for r in _read_file(file)]


def _looks_like_hub_id(source: str) -> bool:
    """"owner/name" without a data-file suffix: a missing local file is reported as missing, not looked up."""
    return source.count("/") == 1 and not source.startswith((".", "/")) and not source.endswith(DATA_SUFFIXES)


def read_records(source: str, known_hub: dict[str, HubDataset]) -> list[dict[str, Any]]:
    """Every record of a local file/directory, or of a Hugging Face dataset when `source` is not a local path."""
    path = Path(source)
    if path.exists():
        records = [r for file in _data_files(path) for r in _read_file(file)]
    elif source in known_hub or _looks_like_hub_id(source):
        records = _load_hub(source, known_hub.get(source, HubDataset("train")))
    else:
        raise DataError(f"dataset not found: {source}. Pass a .json/.jsonl(.gz) file, a directory of them, or a "
                        f"Hugging Face dataset id ({', '.join(known_hub)})")
    if not records:
        raise DataError(f"dataset {source} is empty: it holds no items")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: item {index} is a {type(record).__name__}, not a JSON object")
    return records


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
    records = read_records(source, SFT_HUB_DATASETS)
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
    records = read_records(source, DPO_HUB_DATASETS)
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


# ---------------------------------------------------------------- tokenization


@dataclass
class LengthReport:
    """Sequences longer than the model's context: truncated (and counted) or, with --strict, an error."""

    max_length: int
    sequences: int = 0
    truncated: int = 0
    dropped: int = 0  # the prompt alone fills max_length: no answer token would remain to learn from
    longest: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"max_length": self.max_length, "sequences": self.sequences, "truncated": self.truncated,
                "dropped_prompt_too_long": self.dropped, "longest": self.longest}


def _check_length(report: LengthReport, length: int, prompt_length: int, index: int, strict: bool,
                  source: str) -> None:
    report.sequences += 1
    report.longest = max(report.longest, length)
    if length <= report.max_length:
        return
    if strict:
        raise DataError(f"{source}: item {index} is {length} tokens, longer than max_length {report.max_length} "
                        f"(the model's context at most). Shorten or drop it, or run without --strict to truncate.")
    if prompt_length >= report.max_length:
        report.dropped += 1
    else:
        report.truncated += 1


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sft_segments(messages: list[Message], template: PromptTemplate) -> list[tuple[str, bool]]:
    """(text, trained) spans: each assistant answer and its closing marker is trained; everything before it
    (system, user turns and the template's generation prompt) is context."""
    segments, start = [], 0
    for position, message in enumerate(messages):
        if message["role"] == "assistant":
            segments.append((template.render(messages[start:position], add_generation_prompt=True), False))
            segments.append((message["content"] + template.assistant_close, True))
            start = position + 1
    return segments


def tokenize_sft(examples: Iterable[SFTExample], tokenizer: Any, template: PromptTemplate, max_length: int,
                 strict: bool, source: str) -> tuple[list[dict[str, list[int]]], LengthReport]:
    """Rows {input_ids, completion_mask} with EOS appended (trained). Each context span is tokenized on its own,
    exactly as the prompt is at inference, so training and generation see the same prompt tokens. Rows longer
    than max_length are left for the trainer to truncate (keep the start) and counted here."""
    report = LengthReport(max_length)
    rows = []
    for example in examples:
        ids, mask = [], []
        prompt_length = None
        for text, trained in sft_segments(example.messages, template):
            tokens = _encode(tokenizer, text)
            ids += tokens
            mask += [int(trained)] * len(tokens)
            if prompt_length is None:
                prompt_length = len(ids)
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
        _check_length(report, len(ids), prompt_length or 0, example.index, strict, source)
        rows.append({"input_ids": ids, "completion_mask": mask})
    _log_lengths(report, source)
    return rows, report


def dpo_rows(pairs: Iterable[PreferencePair], template: PromptTemplate) -> list[dict[str, str]]:
    """TRL's text preference format, rendered with our template: the prompt ends with the generation prompt, each
    answer with the template's closing marker (TRL appends EOS)."""
    return [{"prompt": template.render(p.prompt, add_generation_prompt=True),
             "chosen": p.chosen + template.assistant_close, "rejected": p.rejected + template.assistant_close}
            for p in pairs]


def check_dpo_lengths(pairs: Sequence[PreferencePair], rows: Sequence[dict[str, str]], tokenizer: Any,
                      max_length: int, strict: bool, source: str) -> LengthReport:
    """Count the pairs the trainer will truncate (keep the start) or drop (prompt alone fills max_length)."""
    report = LengthReport(max_length)
    for pair, row in zip(pairs, rows, strict=True):
        prompt = len(_encode(tokenizer, row["prompt"]))
        answer = max(len(_encode(tokenizer, row["chosen"])), len(_encode(tokenizer, row["rejected"])))
        _check_length(report, prompt + answer + 1, prompt, pair.index, strict, source)  # + EOS
    _log_lengths(report, source)
    return report


def _log_lengths(report: LengthReport, source: str) -> None:
    if report.truncated or report.dropped:
        log.warning("%s: %d of %d sequences exceed max_length %d (longest %d tokens): %d truncated, %d dropped "
                    "because the prompt alone fills the context (--strict makes this an error)", source,
                    report.truncated + report.dropped, report.sequences, report.max_length, report.longest,
                    report.truncated, report.dropped)
