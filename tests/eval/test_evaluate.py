"""Stage 05 end to end on a tiny random model: every task from local files, outputs, determinism, adapters, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import story_texts
from utils.core.errors import DataError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.eval.evaluate import EvalConfig, evaluate_model
from utils.lm.model import ModelConfig, build_model

ARC_ROW = {"id": "q1", "question": "Which is a colour?", "answerKey": "B",
           "choices": {"text": ["dog", "red", "run"], "label": ["A", "B", "C"]}}
BOOLQ_ROW = {"question": "is the sky blue", "title": "Sky", "answer": True, "passage": "The sky is blue on a clear day."}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer model saved like a pretraining final/ (weights, tokenizer, meta pointing at its dataset)."""
    root = tmp_path_factory.mktemp("eval")
    dataset = prepare_dataset(DataConfig(name="demo", source="demo", demo_num_stories=300, vocab_size=400,
                                         num_workers=0, output_dir=str(root)))
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    vocab_size=400, max_position_embeddings=256), bos_token_id=1, eos_token_id=2,
                        pad_token_id=3)
    out = root / "final"
    model.save_pretrained(out)
    for path in (dataset / "tokenizer").iterdir():
        shutil.copy2(path, out / path.name)
    (out / "meta.json").write_text(json.dumps({"stage": "pretrain", "dataset": str(dataset), "step": 7}))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny local copies laid out like ../shared/data."""
    root = tmp_path_factory.mktemp("evaldata")
    for sub, rows in (("arc/ARC-Easy", [ARC_ROW] * 3), ("arc/ARC-Challenge", [ARC_ROW] * 2)):
        (root / sub).mkdir(parents=True)
        (root / sub / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "boolq").mkdir()
    (root / "boolq" / "dev.jsonl").write_text("".join(json.dumps({**BOOLQ_ROW, "answer": i % 3 != 0}) + "\n"
                                                      for i in range(6)))
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(
        json.dumps({"activity_label": "Walking", "ctx_a": "A man walks a dog.", "ctx_b": "the dog",
                    "endings": ["barks.", "sings opera.", "flies away.", "reads."], "label": 0}) + "\n"
        for _ in range(4)))
    (root / "wikitext-2").mkdir()
    text = "\n".join(f" = Article {i} = \n \n {' '.join(story_texts(3, seed=i))} \n" for i in range(3))
    (root / "wikitext-2" / "wiki.valid.tokens").write_text(text)
    return root


def _evaluate(model_dir: Path, data_dir: Path, out: Path, **overrides) -> Path:
    config = EvalConfig(model_path=str(model_dir), output_dir=str(out), data_dir=str(data_dir), batch_size=3,
                        custom_prompts=str(Path(__file__).resolve().parents[2] / "evaluation" / "quick_prompts.json"),
                        max_new_tokens=8, **overrides)
    return evaluate_model(config)


def test_every_task_writes_results_predictions_and_report(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    run = _evaluate(model_dir, data_dir, tmp_path, limit=20)
    results = json.loads((run / "results.json").read_text())
    tasks = results["tasks"]
    assert set(tasks) == {"wikitext", "hellaswag", "arc_easy", "arc_challenge", "boolq", "demo_mc"}
    assert tasks["arc_easy"]["n"] == 3 and tasks["boolq"]["n"] == 6 and tasks["demo_mc"]["n"] == 20
    assert tasks["boolq"]["majority_baseline"] == pytest.approx(4 / 6)
    assert tasks["wikitext"]["documents"] == 3 and tasks["wikitext"]["bits_per_byte"] > 0
    for name in ("hellaswag", "arc_easy", "arc_challenge", "boolq", "demo_mc"):
        assert 0.0 <= tasks[name]["acc"] <= 1.0 and tasks[name]["acc_stderr"] is not None
        lines = (run / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == tasks[name]["n"] and {"id", "gold", "pred", "lls"} <= set(json.loads(lines[0]))
    assert results["model"]["params_total"] > 0 and len(results["model"]["tokenizer_sha256"]) == 64
    assert results["model"]["checkpoint_meta"]["step"] == 7
    assert results["smoke"]["mean_score"] >= 0 and len((run / "smoke.jsonl").read_text().splitlines()) == 5
    report = (run / "report.md").read_text()
    assert "| ARC-Easy | 3 |" in report and "## Assessment" in report and "WikiText" in report


def test_second_run_is_identical(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    first = json.loads((_evaluate(model_dir, data_dir, tmp_path / "a", limit=5) / "results.json").read_text())
    second_dir = _evaluate(model_dir, data_dir, tmp_path / "b", limit=5)
    second = json.loads((second_dir / "results.json").read_text())
    strip = ("seconds", "items_per_s")
    for name, metrics in first["tasks"].items():
        assert {k: v for k, v in metrics.items() if k not in strip} == \
            {k: v for k, v in second["tasks"][name].items() if k not in strip}
    assert (tmp_path / "a" / second_dir.name / "smoke.jsonl").read_text() == (second_dir / "smoke.jsonl").read_text()


def _choice_lls(run: Path, task: str) -> list[float]:
    return [ll for line in (run / f"{task}.jsonl").read_text().splitlines() for ll in json.loads(line)["lls"]]


def test_peft_adapter_directory_is_evaluated_with_its_base(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """An adapter that changes the model (random B) scores exactly like its merged model, not like its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    adapter = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    adapter.merge_and_unload().save_pretrained(tmp_path / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(model_dir / name, tmp_path / "merged" / name)
    runs = {name: _evaluate(path, data_dir, tmp_path / f"out-{name}", tasks=["arc_easy"])
            for name, path in (("base", model_dir), ("adapter", tmp_path / "adapter"), ("merged", tmp_path / "merged"))}
    results = json.loads((runs["adapter"] / "results.json").read_text())
    assert results["model"]["base_path"] == str(model_dir.resolve()) and results["tasks"]["arc_easy"]["n"] == 3
    lls = {name: torch.tensor(_choice_lls(run, "arc_easy")) for name, run in runs.items()}
    assert (lls["adapter"] - lls["base"]).abs().max() > 1e-3
    assert (lls["adapter"] - lls["merged"]).abs().max() < 1e-5


def test_offline_without_local_data_names_dataset_and_flag(model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LUMI_DATA_DIR", raising=False)
    config = EvalConfig(model_path=str(model_dir), output_dir=str(tmp_path), tasks=["arc_challenge"])
    with pytest.raises(DataError, match="(?s)allenai/ai2_arc.*--data_dir"):
        evaluate_model(config)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_model_dir_errors(tmp_path: Path) -> None:
    # Smoke prompts only: the benchmark sets are checked before the model, and may be absent on this machine.
    with pytest.raises(DataError, match="model directory not found"):
        evaluate_model(EvalConfig(model_path=str(tmp_path / "nothing"), output_dir=str(tmp_path), tasks=["smoke"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a model directory"):
        evaluate_model(EvalConfig(model_path=str(tmp_path / "empty"), output_dir=str(tmp_path), tasks=["smoke"]))
