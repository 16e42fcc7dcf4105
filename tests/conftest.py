"""Shared fixtures: small real-looking corpora, the ../shared data directory (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.demo_corpus import iter_demo_stories

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED_DIR / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (CI always has it)")
    return SHARED_DATA


def story_texts(count: int, seed: int = 7) -> list[str]:
    return list(iter_demo_stories(seed, count))


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Path:
    """300 English stories as JSON lines: enough for a 400-piece tokenizer and a train/val split."""
    path = tmp_path / "raw" / "corpus.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in story_texts(300)), encoding="utf-8")
    return path
