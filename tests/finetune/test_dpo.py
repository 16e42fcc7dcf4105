"""Stage 04 on a tiny random model on CPU: a LoRA DPO run without a reference copy moves reward and preference
accuracy on its training pairs, writes the shared layout and reward metrics; bad pairs are named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.finetune.test_sft import make_finetune_root, read_jsonl
from utils.core.config import load_config
from utils.core.errors import DataError
from utils.finetune.dpo import DPOStageConfig, build_dpo_trainer, prepare_dpo_data, run_dpo
from utils.finetune.models import load_training_model
from utils.lm.loading import load_model
from utils.lm.templates import get_template

# High learning rate and many passes over 8 pairs: a random 2-layer model must learn them within seconds.
FAST = dict(batch_size=4, gradient_accumulation_steps=1, max_steps=24, learning_rate=2e-2, beta=0.1, lora_r=8,
            lora_alpha=16, lora_dropout=0.0, logging_steps=4, eval_steps=12, save_steps=100, validation_split=0.0,
            warmup_ratio=0.0, max_samples=8, score_batch_size=8)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finetune_root(tmp_path_factory.mktemp("dpo"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def dpo_config(root: Path, out: Path, **overrides: Any) -> DPOStageConfig:
    train = root / "dpo_train.json"
    values = {"model_path": str(root / "final"), "dataset_path": str(train), "eval_dataset_path": str(train),
              "output_dir": str(out), "run_name": "run", **FAST, **overrides}
    return load_config(DPOStageConfig, None, values)


def test_lora_dpo_moves_preference_accuracy_without_a_reference_copy(root: Path, tmp_path: Path) -> None:
    config = dpo_config(root, tmp_path)
    loaded = load_training_model(config.model_path, full=False)
    data = prepare_dpo_data(config, loaded.tokenizer, get_template("chatml"), 256)
    assert build_dpo_trainer(config, loaded, data, 256, tmp_path / "probe", []).ref_model is None

    run = run_dpo(dpo_config(root, tmp_path, gain_eval_size=8))
    meta = json.loads((run / "meta.json").read_text())
    gain = meta["gain"]
    assert meta["stage"] == "dpo" and gain["metric"] == "preference_accuracy" and gain["n"] == 8
    # A random model starts with log-prob gaps of up to ~10 nats between the answers; DPO moves every pair's gap
    # towards the chosen answer, which flips some of them: accuracy rises, each margin grows.
    assert gain["after"] > gain["before"], gain
    margins = [(r["before"]["ll_chosen"] - r["before"]["ll_rejected"],
                r["after"]["ll_chosen"] - r["after"]["ll_rejected"]) for r in read_jsonl(run / "gain.jsonl")]
    assert all(after > before for before, after in margins), margins
    train = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert key in train[-1], key
    # The first log averages from step 1, where the policy equals the reference and no reward is positive.
    assert train[0]["rewards/accuracies"] < 1.0 and train[-1]["rewards/accuracies"] == 1.0
    assert meta["rewards"]["train"]["rewards/margins"] > 0 and meta["reference"].startswith("the policy")
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "loss.png").is_file()
    assert load_model(run / "merged").meta["stage"] == "dpo"


def test_dpo_pair_missing_a_field_is_named(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "rejected": "b"}]))
    with pytest.raises(DataError, match=r"item 1 is missing field\(s\) chosen"):
        run_dpo(dpo_config(root, tmp_path, dataset_path=str(bad), eval_dataset_path=None))


def test_loss_weights_need_one_value_per_loss_type() -> None:
    assert DPOStageConfig(dataset_path="d.json", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]).loss_weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="loss_weights has 1 values for 2 loss_type entries"):
        DPOStageConfig(dataset_path="d.json", loss_type=["sigmoid", "sft"], loss_weights=[1.0])
