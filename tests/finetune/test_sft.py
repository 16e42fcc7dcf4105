"""Stage 03 on a tiny random model: outputs and metrics, the gain as measured, the trained adapter and its merge,
the label mask TRL trains on, resume, full fine-tuning, and every bad input (no tokenizer, unknown template, too
long with --strict, existing run, incomplete checkpoint, an adapter on the wrong base)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from utils.core.config import load_config
from utils.core.errors import CheckpointError, ConfigError, DataError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.finetune.datasets import load_sft_examples
from utils.finetune.models import load_training_model
from utils.finetune.sft import SFTStageConfig, build_sft_trainer, held_out_gain, prepare_sft_data, run_sft
from utils.lm.loading import load_model
from utils.lm.model import ModelConfig, build_model
from utils.lm.templates import get_template

TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=400,
                  max_position_embeddings=256)
FAST = dict(max_steps=3, batch_size=4, logging_steps=1, eval_steps=2, save_steps=2, gain_eval_size=3,
            gain_max_new_tokens=4, validation_split=0.1, lora_r=4, learning_rate=1e-3)
ADAPTER_MOVED = 1e-3  # max logit change of the 3-step adapter on the base (an untrained one changes nothing)


def save_tiny_model(out: Path, tokenizer_dir: Path, dataset: Path, seed: int = 0) -> Path:
    """A random 2-layer model saved like a pretraining final/ (weights, tokenizer with chat template, meta)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**TINY_SHAPE), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model.save_pretrained(out)
    for path in tokenizer_dir.iterdir():
        shutil.copy2(path, out / path.name)
    (out / "meta.json").write_text(json.dumps({"stage": "pretrain", "dataset": str(dataset), "step": 1}))
    return out


def make_finetune_root(root: Path) -> Path:
    """A demo dataset (real Lumi tokenizer, demo SFT/DPO files), a tiny model in final/, small slices of the sets."""
    dataset = prepare_dataset(DataConfig(name="demo", source="demo", demo_num_stories=300, vocab_size=400,
                                         num_workers=0, output_dir=str(root)))
    save_tiny_model(root / "final", dataset / "tokenizer", dataset)
    for name, count in (("sft_train", 40), ("sft_eval", 3), ("dpo_train", 16), ("dpo_eval", 8)):
        rows = json.loads((dataset / "demo" / f"{name}.json").read_text())[:count]
        (root / f"{name}.json").write_text(json.dumps(rows))
    return root


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finetune_root(tmp_path_factory.mktemp("sft"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """Accelerate keeps process-wide state; every in-process trainer run starts from a clean one."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def sft_config(root: Path, out: Path, **overrides: Any) -> SFTStageConfig:
    values = {"model_path": str(root / "final"), "dataset_path": str(root / "sft_train.json"),
              "output_dir": str(out), "run_name": "run", **FAST, **overrides}
    return load_config(SFTStageConfig, None, values)


def test_lora_sft_writes_adapter_merged_metrics_and_gain(root: Path, tmp_path: Path) -> None:
    run = run_sft(sft_config(root, tmp_path))
    meta = json.loads((run / "meta.json").read_text())
    assert meta["stage"] == "sft" and meta["status"] == "done" and meta["steps"] == 3
    assert meta["gain"]["metric"] == "answer_exact_match" and meta["gain"]["n"] == 3
    assert meta["data"]["held_out_source"] == str(root / "sft_eval.json") and meta["data"]["validation"] == 4
    records = read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm"} <= set(train[0]) and len(train) == 3
    assert any(r["kind"] == "eval" and "val_loss" in r for r in records) and records[-1]["kind"] == "end"
    assert (run / "loss.png").is_file() and (run / "config.resolved.json").is_file()

    merged = load_model(run / "merged")
    assert merged.meta["stage"] == "sft" and merged.meta["gain"] == meta["gain"]
    assert merged.tokenizer.chat_template and (run / "merged" / "tokenizer.model").is_file()
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]) == (root / "final").resolve()
    base = load_model(root / "final")
    adapter = load_model(run / "adapter", merge_adapter=False)  # base + LoRA applied at run time
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        base_logits, adapter_logits, merged_logits = (m.model(ids).logits for m in (base, adapter, merged))
    assert (adapter_logits - base_logits).abs().max() > ADAPTER_MOVED  # trained: LoRA's B is no longer zero
    assert (merged_logits - adapter_logits).abs().max() < 1e-5

    # The gain: "before" is the base's greedy answers, "after" the merged model's, a hit the gold span in the answer.
    items = [item for item in load_sft_examples(str(root / "sft_eval.json"))[0] if item.answer][:3]
    recorded = read_jsonl(run / "gain.jsonl")
    for when, model in (("before", base.model), ("after", merged.model)):
        again = held_out_gain(model, base.tokenizer, get_template("chatml"), items, sft_config(root, tmp_path))
        answers = [r[when] for r in recorded]
        assert [r["response"] for r in answers] == [r["response"] for r in again.records]
        assert meta["gain"][when] == sum(r["answer"] in r["response"] for r in answers) / 3


def test_trl_labels_mask_everything_but_the_answer_and_eos(root: Path, tmp_path: Path) -> None:
    config = sft_config(root, tmp_path, validation_split=0.0, gain_eval_size=0)
    loaded = load_training_model(config.model_path, full=False)
    template = get_template("chatml")
    data = prepare_sft_data(config, loaded.tokenizer, template, 256)
    trainer = build_sft_trainer(config, loaded, data, 256, tmp_path, [])
    first = json.loads((root / "sft_train.json").read_text())[0]
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    prompt = template.render([{"role": "user", "content": first["prompt"]}], add_generation_prompt=True)
    prompt_len = len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in labels[:prompt_len])
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.decode(ids[prompt_len:]) == first["response"] + "<|im_end|>\n</s>"


def test_resume_from_incomplete_checkpoint_errors_and_auto_skips_it(root: Path, tmp_path: Path) -> None:
    first = run_sft(sft_config(root, tmp_path, full=True, max_steps=2, save_steps=1, gain_eval_size=0))
    assert not (first / "adapter").exists() and (first / "merged" / "model.safetensors").is_file()
    (first / "checkpoint-2" / "trainer_state.json").unlink()  # as if killed while saving
    with pytest.raises(CheckpointError, match=r"checkpoint-2 is incomplete.*trainer_state.json is missing"):
        run_sft(sft_config(root, tmp_path, full=True, resume_from_checkpoint=str(first / "checkpoint-2")))
    with pytest.raises(ConfigError, match="already holds outputs"):
        run_sft(sft_config(root, tmp_path, full=True))
    resumed = run_sft(sft_config(root, tmp_path, full=True, max_steps=3, save_steps=1, gain_eval_size=0,
                                 resume_from_checkpoint="auto"))
    assert json.loads((resumed / "meta.json").read_text())["steps"] == 3
    steps = [r["step"] for r in read_jsonl(resumed / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3]  # events after checkpoint-1 were forgotten and logged again
    with pytest.raises(CheckpointError, match="was started with full=True"):
        run_sft(sft_config(root, tmp_path, full=False, resume_from_checkpoint="auto"))


def test_model_directory_without_tokenizer_fails_before_loading(root: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(root / "final" / name, bare / name)
    with pytest.raises(DataError, match="has no tokenizer"):
        run_sft(sft_config(root, tmp_path / "out", model_path=str(bare)))


def test_unknown_template_lists_the_known_ones(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown prompt template 'alpaca'; known templates: chatml, instruct, chat"):
        sft_config(root, tmp_path, prompt_template="alpaca")


def test_too_long_sequences_error_with_strict_and_are_counted_without(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"item \d+ is \d+ tokens, longer than max_length 48"):
        run_sft(sft_config(root, tmp_path, max_length=48, strict=True))
    with pytest.raises(ConfigError, match="exceeds the context"):
        run_sft(sft_config(root, tmp_path, run_name="ctx", max_length=1024))
    config = sft_config(root, tmp_path, max_length=48)
    loaded = load_training_model(config.model_path, full=False)
    data = prepare_sft_data(config, loaded.tokenizer, get_template("chatml"), 48)
    lengths = data.report["lengths"]
    assert lengths["truncated"] + lengths["dropped_prompt_too_long"] == lengths["sequences"] > 0


def test_adapter_whose_base_changed_is_rejected(root: Path, tmp_path: Path) -> None:
    run = run_sft(sft_config(root, tmp_path, max_steps=1, gain_eval_size=0, validation_split=0.0))
    other = save_tiny_model(tmp_path / "other", root / "demo" / "tokenizer", root / "demo", seed=1)  # other weights
    config_path = run / "adapter" / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(other)}))
    with pytest.raises(DataError, match=r"was trained on base .*but its base_model_name_or_path points at"):
        run_sft(sft_config(root, tmp_path, run_name="again", model_path=str(run / "adapter")))


def test_missing_field_fails_with_item_index(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "Q", "response": "A"}, {"prompt": "Q"}]))
    with pytest.raises(DataError, match=r"item 1 is missing field\(s\) response"):
        run_sft(sft_config(root, tmp_path, dataset_path=str(bad)))


def test_max_time_stops_cleanly_and_still_exports(root: Path, tmp_path: Path) -> None:
    run = run_sft(sft_config(root, tmp_path, max_steps=50, max_time=0.0, gain_eval_size=0, validation_split=0.0))
    meta = json.loads((run / "meta.json").read_text())
    assert meta["stop_reason"] == "max_time" and meta["steps"] == 1 and (run / "merged" / "config.json").is_file()


def test_data_without_short_answers_measures_the_held_out_response_loss(root: Path, tmp_path: Path) -> None:
    """Alpaca-style items carry no gold answer span: the gain is the held-out response-token loss, which training
    on the same distribution lowers, and the held-out items are drawn out of the training data."""
    rows = [{"instruction": f"Repeat the word number {i % 7}.", "input": "", "output": f"word {i % 7} word {i % 7}"}
            for i in range(60)]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    run = run_sft(sft_config(root, tmp_path, run_name="alpaca", dataset_path=str(tmp_path / "alpaca.json"),
                             full=True, max_steps=12, learning_rate=3e-3, gain_eval_size=8))
    meta = json.loads((run / "meta.json").read_text())
    gain = meta["gain"]
    assert gain["metric"] == "response_loss" and gain["n"] == 8
    assert gain["after"] < gain["before"] - 0.5  # nats per response token
    assert meta["data"]["held_out_source"].startswith("seeded draw") and meta["data"]["train"] <= 60 - 8
    items = read_jsonl(run / "gain.jsonl")
    assert all(item["before"]["response_tokens"] > 0 for item in items)
