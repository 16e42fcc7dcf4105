"""Shared fixtures: small real-looking corpora, the test data mirror (LUMI_DATA_DIR; skipped when unset) and a
Hugging Face Hub on loopback filled from it.

CI sets LUMI_DATA_DIR to ../shared/data (.ci/run); a developer runs `LUMI_DATA_DIR=../shared/data make test`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from utils.data.demo_stories import iter_demo_stories

MIRROR_ENV = "LUMI_DATA_DIR"


def mirror_dir() -> Path | None:
    """The test data mirror named by LUMI_DATA_DIR, or None when unset or missing."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value) if value and Path(value).is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    mirror = mirror_dir()
    if mirror is None:
        pytest.skip(f"{MIRROR_ENV} is not set to the test data mirror (CI sets it to ../shared/data)")
    return mirror


@pytest.fixture(scope="session")
def fake_hub() -> Iterator[Any]:
    """A loopback Hugging Face Hub serving the real repository layouts, filled from the mirror."""
    from tests.fake_hub import running_hub
    from tests.hub_repos import fill

    mirror = mirror_dir()
    if mirror is None:
        pytest.skip(f"{MIRROR_ENV} is not set: the loopback hub is filled from the test data mirror")
    with running_hub() as hub:
        yield fill(hub, mirror)


def story_texts(count: int, seed: int = 7) -> list[str]:
    return list(iter_demo_stories(seed, count))


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Path:
    """300 English stories as JSON lines: enough for a 400-piece tokenizer and a train/val split."""
    path = tmp_path / "raw" / "corpus.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in story_texts(300)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer model (2,048 tokens of context) with a real 400-piece Lumi tokenizer, for the serving tests.

    The embedding rows of EOS and <|im_end|> are zeroed: their logits are then exactly 0 while the largest of the
    others is positive, so greedy decoding never stops early and long generations (to cancel) are deterministic.
    """
    import torch

    from utils.lm.model import ModelConfig, build_model
    from utils.lm.templates import IM_END
    from utils.lm.tokenizer import EOS_ID, load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("serve")
    sample = root / "sample.txt"
    sample.write_text("\n".join(story_texts(300)), encoding="utf-8")
    out = train_tokenizer(sample, root / "model", vocab_size=400)
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    vocab_size=400, max_position_embeddings=2048), bos_token_id=1,
                        eos_token_id=EOS_ID, pad_token_id=3)
    im_end = load_tokenizer(out).convert_tokens_to_ids(IM_END)
    with torch.no_grad():  # the output head is tied to these embeddings
        model.get_input_embeddings().weight[[EOS_ID, im_end]] = 0.0
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_cpu_thread() -> Iterator[None]:
    """Tiny models (batch-1 decoding, test training runs) gain nothing from two threads, and lose much when other
    jobs share the CPUs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gen(serve_model_dir: Path) -> Any:
    """The generation engine over the serving test model."""
    from utils.lm.generation import TextGenerator
    from utils.lm.loading import load_model

    loaded = load_model(serve_model_dir)
    return TextGenerator(loaded.model, loaded.tokenizer)
