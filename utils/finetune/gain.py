"""The before/after gain of stages 03 and 04: the held-out items it is measured on (and the validation split, the
other seeded draw from the training items), a Measurement of them, and how its scores are shown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from utils.finetune.config import FinetuneConfig
from utils.finetune.datasets import seeded_split, split_count

MAX_HELD_OUT_DIVISOR = 5  # a held-out draw from the training data takes at most a fifth of it
T = TypeVar("T")


@dataclass
class Measurement:
    scores: dict[str, float]  # the stage's gain metric first
    records: list[dict[str, Any]]  # one per held-out item, each with its "index"
    seconds: float = 0.0  # set by the runner


def held_out_set(config: FinetuneConfig, items: list[T], load: Callable[[str], list[T]],
                 usable: Callable[[T], bool]) -> tuple[list[T], list[T], str | None]:
    """(training items, held-out items for the before/after gain, their source). The held-out set is
    --eval_dataset_path, else the `<name>_eval` sibling of the dataset, else a seeded draw from the training items
    (at most a fifth of them, removed from training). Items the measurement cannot use are skipped."""
    if config.gain_eval_size == 0:
        return items, [], None
    source = config.eval_dataset_path or eval_sibling(config.dataset_path)
    if source is not None:
        return items, [x for x in load(str(source)) if usable(x)][:config.gain_eval_size], str(source)
    if not any(usable(x) for x in items):
        return items, [], None
    rest, held = seeded_split(items, min(config.gain_eval_size, len(items) // MAX_HELD_OUT_DIVISOR), config.seed)
    return rest, [x for x in held if usable(x)], f"seeded draw from {config.dataset_path}"


def validation_set(config: FinetuneConfig, items: list[T]) -> tuple[list[T], list[T]]:
    """(train, validation): a seeded `validation_split` fraction of the training items, for eval loss."""
    return seeded_split(items, split_count(len(items), config.validation_split), config.seed + 1)


def eval_sibling(dataset_path: str) -> Path | None:
    """`<name>_train.<ext>` -> an existing `<name>_eval.<ext>` beside it (the demo's held-out sets)."""
    path = Path(dataset_path)
    if not path.is_file() or "_train" not in path.name:
        return None
    sibling = path.with_name(path.name.replace("_train", "_eval"))
    return sibling if sibling.is_file() else None


def format_score(name: str, value: float) -> str:
    """Losses in nats, rates (accuracies, matches) in percent."""
    return f"{value:.3f} nats" if name.endswith("loss") else f"{100 * value:.1f}%"
