"""Stage 02: one training step, gradient accumulation, exact resume (after a crash and after SIGKILL, across an epoch
boundary), checkpoint integrity and pruning, HF export, DDP, loud failures."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from utils.core.errors import CheckpointError, ConfigError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.lm.metrics import read_metrics
from utils.sessions.runner import free_port
from utils.train.checkpoint import COMPLETE, LATEST, complete_checkpoints, resolve_resume_path
from utils.train.loop import TrainingError, TrainingLoop, lr_lambda
from utils.train.pretrain import PretrainData, load_pretrain_config, pretrain
from utils.train.windows import SampleOrder, TokenWindows, load_dataset_info

REPO = Path(__file__).resolve().parents[2]
# One thread, here and in every training subprocess: a tiny model gains nothing from two, and with other jobs on
# the two cores an OpenMP team waiting for a descheduled thread measured 28x slower per step.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KILL_POLL_S = 0.01
RUN_TIMEOUT_S = 300
TINY_TRAINING = {"learning_rate": 3e-3, "warmup_steps": 5, "max_steps": 12, "batch_size": 4, "max_length": 32,
                 "logging_steps": 1, "eval_steps": 4, "save_steps": 4, "save_total_limit": 10, "eval_batches": 2,
                 "num_samples": 1, "sample_max_new_tokens": 4, "mixed_precision": "no", "seed": 3}
# Resume settings: 2 micro-batches of 6 per step, 64-token windows. The small dataset has 224 training windows, so
# epoch 1 starts inside step 19 (samples 216-227).
RESUME_TRAINING = {"batch_size": 6, "gradient_accumulation_steps": 2, "max_length": 64}
SAMPLES_PER_STEP = 12
SMALL_TRAIN_WINDOWS = 224


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _preset(directory: Path, dropout: float = 0.1, hidden: int = 64, model: dict | None = None,
            **training: object) -> Path:
    path = directory / f"preset_{hidden}{''.join(f'_{v}' for v in (model or {}).values())}.json"
    path.write_text(json.dumps({
        "name": "test", "label": "test-0.1M", "params_millions": 0.1, "description": "2 layers x 64 for tests",
        "model": {"hidden_size": hidden, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 32768, "max_position_embeddings": 64,
                  "attention_dropout": dropout, **(model or {})},
        "training": {**TINY_TRAINING, **training}}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    config = DataConfig(name="demo", source="demo", demo_num_stories=600, vocab_size=400, max_length=64,
                        num_workers=0, output_dir=str(root))
    return prepare_dataset(config)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 stories: an epoch of 64-token windows is a few dozen steps, so short runs cross epoch boundaries."""
    root = tmp_path_factory.mktemp("small")
    config = DataConfig(name="small", source="demo", demo_num_stories=100, vocab_size=400, max_length=64,
                        num_workers=0, output_dir=str(root))
    path = prepare_dataset(config)
    assert TokenWindows(load_dataset_info(path), "train", 64).num_windows == SMALL_TRAIN_WINDOWS
    return path


def _run_in_process(preset: Path, dataset: Path, out: Path, **cli: object) -> Path:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # process-wide: every run starts from a clean one
    preset_obj, config = load_pretrain_config(str(preset), {"data_path": str(dataset), "output_dir": str(out), **cli})
    return pretrain(str(preset), config, preset_obj)


def _cli(preset: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "scripts/02_pretrain.py", "--config_path", str(preset), "--data_path", str(dataset),
            "--output_dir", str(out), *extra]


def _train_records(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl", "train")


def test_one_training_step_logs_saves_and_moves_every_weight_by_one_adam_step(tmp_path: Path, dataset: Path) -> None:
    from accelerate.utils import set_seed

    from utils.lm.model import ModelConfig, build_model
    from utils.lm.tokenizer import PAD_ID

    run = tmp_path / "run"
    # Llama's normal init everywhere: with the default zero-initialised projections nothing before them has a
    # gradient on the first step.
    final = _run_in_process(_preset(tmp_path), dataset, run, max_steps=1, eval_steps=1, save_steps=1,
                            zero_init_projections=False)
    records = _train_records(run)
    assert len(records) == 1 and np.isfinite(records[0]["loss"]) and records[0]["tokens_per_s"] > 0
    assert records[0]["mfu"] > 0 and records[0]["grad_norm"] > 0
    assert (final / "model.safetensors").is_file() and (run / "loss.png").is_file()
    meta = json.loads((final / "meta.json").read_text())
    assert meta["step"] == 1 and meta["tokens_seen"] == 4 * 32 and meta["git_sha"]
    set_seed(TINY_TRAINING["seed"])  # what pretrain() does before building the model: the initial weights again
    shape = ModelConfig(**json.loads((run / "step-000001" / "model_config.json").read_text()))
    initial = build_model(shape, pad_token_id=PAD_ID)  # the padding row starts at zero
    trained = load_file(run / "step-000001" / "model.safetensors")
    first_lr = TINY_TRAINING["learning_rate"] * lr_lambda(TINY_TRAINING["warmup_steps"], 1)(0)
    for name, before in initial.state_dict().items():
        if name in trained:  # the tied output head is saved once, as the embedding
            moved = (trained[name] - before).abs()
            # Adam's first update is lr * g / (|g| + eps), plus a weight decay of lr * 0.1 * |w|: every weight with a
            # gradient moves by about lr, none by much more.
            assert moved.max() <= 1.02 * first_lr and moved.median() > 0.5 * first_lr, name


def test_zero_init_projections_is_the_default_and_starts_every_block_as_the_identity(tmp_path: Path, dataset: Path) -> None:
    from utils.lm.model import ModelConfig, build_model, zero_output_projections

    model = build_model(ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                    num_attention_heads=4, vocab_size=400, max_position_embeddings=64))
    zero_output_projections(model)
    # The embeddings, after block 1 and after block 2 (the last entry is after the final norm).
    hidden = model(input_ids=torch.randint(0, 400, (2, 9)), output_hidden_states=True).hidden_states
    assert len(hidden) == 4 and torch.equal(hidden[0], hidden[1]) and torch.equal(hidden[1], hidden[2])
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path), dataset, run, max_steps=1, eval_steps=1, save_steps=1)  # the default
    trained = load_file(run / "step-000001" / "model.safetensors")
    first_lr = TINY_TRAINING["learning_rate"] * lr_lambda(TINY_TRAINING["warmup_steps"], 1)(0)
    for name, weight in trained.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):  # zero plus one Adam step of about lr
            assert weight.abs().max() <= 1.02 * first_lr, name
        elif name.endswith("q_proj.weight"):
            assert weight.std() > 0.015, name  # still Llama's normal(0, 0.02)


def test_wsd_under_max_time_decays_early_enough_to_end_annealed(tmp_path: Path, dataset: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.train.loop as loop

    # The fitted schedule ends at half of max_time here, so a slower step now and then still ends it in time.
    monkeypatch.setattr(loop, "SCHEDULE_TIME_SHARE", 0.5)
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path), dataset, run, max_steps=100_000, max_time=6.0, eval_steps=100_000,
                    save_steps=100_000, warmup_steps=2)
    records = _train_records(run)
    state = json.loads((run / "final" / "meta.json").read_text())
    end = read_metrics(run / "metrics.jsonl", "end")[-1]
    steps = records[-1]["step"]
    assert end["stop_reason"] == "max_time" and 10 < steps < 100_000 and state["step"] == steps
    saved = json.loads((run / f"step-{steps:06d}" / "trainer_state.json").read_text())
    assert saved["schedule_steps"] == steps  # a resume keeps the fitted schedule
    lrs = [r["lr"] for r in records]
    peak = TINY_TRAINING["learning_rate"]
    decay_from = next(i for i, lr in enumerate(lrs) if i > 2 and lr < peak)
    assert lrs[2:decay_from] == [pytest.approx(peak)] * (decay_from - 2)  # stable at the peak
    assert lrs[-1] == 0.0 and all(a >= b for a, b in zip(lrs[decay_from:], lrs[decay_from + 1:]))
    assert steps - decay_from == pytest.approx(0.2 * steps, abs=2)  # the last 20 % of the fitted steps decay


def test_loss_falls(tmp_path: Path, dataset: Path) -> None:
    _run_in_process(_preset(tmp_path, dropout=0.0), dataset, tmp_path / "run", max_steps=40, eval_steps=20,
                    save_steps=40)
    losses = [r["loss"] for r in _train_records(tmp_path / "run")]
    evals = read_metrics(tmp_path / "run" / "metrics.jsonl", "eval")
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def _row_hashes(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return [hash(row.numpy().tobytes()) for batch in batches for row in batch["input_ids"]]


def test_micro_batches_of_a_step_are_distinct_samples_and_together_the_whole_batch(dataset: Path) -> None:
    windows = TokenWindows(load_dataset_info(dataset), "train", 32)
    order = SampleOrder(windows.num_windows, seed=3)
    whole = _row_hashes(PretrainData(windows, order, 4, 0, 1).micro_batches(40, 1))
    accumulated = _row_hashes(PretrainData(windows, order, 2, 0, 1).micro_batches(40, 2))
    assert len(set(whole)) == 4 and accumulated == whole
    ranks = [_row_hashes(PretrainData(windows, order, 1, rank, 2).micro_batches(40, 2)) for rank in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(whole)  # two processes split the step, sharing no sample


def test_gradient_accumulation_equals_the_whole_batch_step_for_step(tmp_path: Path, dataset: Path) -> None:
    """Batch 2 x 2 micro-batches takes the optimizer steps of batch 4 x 1 (fp32, no dropout): same samples, same
    loss, same gradient norm, same weights."""
    preset = _preset(tmp_path, dropout=0.0, max_steps=6, eval_steps=6, save_steps=6)
    _run_in_process(preset, dataset, tmp_path / "whole", batch_size=4)
    _run_in_process(preset, dataset, tmp_path / "accumulated", batch_size=2, gradient_accumulation_steps=2)
    whole, accumulated = _train_records(tmp_path / "whole"), _train_records(tmp_path / "accumulated")
    for key in ("step", "batch_hash", "samples_seen", "tokens_seen", "lr"):
        assert [r[key] for r in accumulated] == [r[key] for r in whole], key
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in accumulated] == pytest.approx([r[key] for r in whole], rel=1e-5), key
    weights = [load_file(tmp_path / run / "final" / "model.safetensors") for run in ("whole", "accumulated")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])


def test_save_total_limit_keeps_exactly_that_many_newest_checkpoints(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path), dataset, run, max_steps=5, save_steps=1, eval_steps=5, save_total_limit=2)
    assert [p.name for p in complete_checkpoints(run)] == ["step-000004", "step-000005"]
    assert not list(run.glob("step-*.tmp")) and (run / LATEST).read_text().strip() == "step-000005"


def _assert_same_run(reference: Path, resumed: Path, steps: int) -> None:
    ref, res = _train_records(reference), _train_records(resumed)
    assert [r["step"] for r in res] == list(range(1, steps + 1))
    assert [r["batch_hash"] for r in res] == [r["batch_hash"] for r in ref]
    assert [r["loss"] for r in res] == [r["loss"] for r in ref]  # bitwise equal on CPU in deterministic mode
    assert [r["grad_norm"] for r in res] == [r["grad_norm"] for r in ref]
    ref_weights, res_weights = (load_file(run / "final" / "model.safetensors") for run in (reference, resumed))
    assert ref_weights.keys() == res_weights.keys()
    assert all(torch.equal(ref_weights[k], res_weights[k]) for k in ref_weights)


class Crash(BaseException):
    """Stands in for a killed process: nothing in the loop catches it."""


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_a_crash_reproduces_the_run_across_an_epoch_boundary(tmp_path: Path, small_dataset: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          optimizer: str) -> None:
    """The fast resume case: the default precision (bf16 where it is native, else fp32), accumulation 2, a crash
    before step 13 (newest checkpoint: 10), resumed through the epoch boundary inside step 19 to step 22."""
    preset = _preset(tmp_path, **RESUME_TRAINING, mixed_precision="auto", max_steps=22, save_steps=5, eval_steps=20,
                     optimizer=optimizer)
    _run_in_process(preset, small_dataset, tmp_path / "reference")
    train_step = TrainingLoop.train_step

    def crash_before_13(loop: TrainingLoop) -> tuple[float, float]:
        if loop.state.step == 12:
            raise Crash
        return train_step(loop)

    monkeypatch.setattr(TrainingLoop, "train_step", crash_before_13)
    with pytest.raises(Crash):
        _run_in_process(preset, small_dataset, tmp_path / "crashed")
    monkeypatch.undo()
    assert complete_checkpoints(tmp_path / "crashed")[-1].name == "step-000010"
    assert _train_records(tmp_path / "crashed")[-1]["step"] == 12  # logged past the checkpoint: forgotten on resume
    _run_in_process(preset, small_dataset, tmp_path / "crashed", resume_from_checkpoint="auto")
    _assert_same_run(tmp_path / "reference", tmp_path / "crashed", 22)
    samples = [r["samples_seen"] for r in _train_records(tmp_path / "reference")]
    assert samples[9] < SMALL_TRAIN_WINDOWS < samples[-1]  # the resumed part crossed into epoch 1


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path: Path, small_dataset: Path,
                                                              optimizer: str) -> None:
    """A real SIGKILL in bf16 autocast (the default where bf16 is native; emulated and slow on AVX2-only CPUs, hence
    slow) with accumulation 2, killed at its first checkpoint; the resumed run crosses the epoch boundary (448
    windows of 32 tokens, 12 samples a step: inside step 38). With Muon, its momentum buffers must come back too."""
    preset = _preset(tmp_path, **{**RESUME_TRAINING, "max_length": 32}, mixed_precision="bf16", max_steps=42,
                     eval_steps=20, save_steps=5, optimizer=optimizer)
    windows = TokenWindows(load_dataset_info(small_dataset), "train", 32).num_windows
    epoch_step = windows // SAMPLES_PER_STEP + 1
    reference = tmp_path / "reference"
    subprocess.run(_cli(preset, small_dataset, reference), cwd=REPO, env=ONE_THREAD_ENV, check=True,
                   capture_output=True, timeout=RUN_TIMEOUT_S)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(preset, small_dataset, killed), cwd=REPO, env=ONE_THREAD_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (killed / "step-000005" / COMPLETE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(KILL_POLL_S)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed_from = complete_checkpoints(killed)[-1]
    assert int(resumed_from.name.split("-")[1]) < epoch_step  # the kill landed before the epoch boundary

    result = subprocess.run(_cli(preset, small_dataset, killed, "--resume_from_checkpoint", "auto"), cwd=REPO,
                            env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert f"resumed from {resumed_from}" in result.stderr and "precision bf16" in result.stderr
    _assert_same_run(reference, killed, 42)
    records = _train_records(killed)
    assert records[epoch_step - 2]["samples_seen"] < windows < records[epoch_step - 1]["samples_seen"]
    assert len({r["batch_hash"] for r in records}) == 42  # no batch repeated


def test_final_round_trips_through_auto_classes(tmp_path: Path, dataset: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.lm.model import ModelConfig, build_model
    from utils.train.checkpoint import load_weights

    run = tmp_path / "run"
    final = _run_in_process(_preset(tmp_path), dataset, run)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    shape = json.loads((run / "step-000012" / "model_config.json").read_text())
    reference = build_model(ModelConfig(**shape)).eval()
    load_weights(reference, run / "step-000012")
    ids = torch.tensor([tokenizer("Tom went to the park.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tokenizer.chat_template and (final / "tokenizer.model").is_file()
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id


def test_incomplete_and_corrupt_checkpoints(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path), dataset, run)
    assert [p.name for p in complete_checkpoints(run)] == ["step-000004", "step-000008", "step-000012"]
    (run / "step-000012" / COMPLETE).unlink()  # as if the run died while writing it
    assert resolve_resume_path(run, "auto") == run / "step-000008"
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_resume_path(run, str(run / "step-000012"))
    optimizer = run / "step-000008" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-10] + b"corrupted!")
    with pytest.raises(CheckpointError, match="optimizer.pt does not match its checksum"):
        resolve_resume_path(run, str(run / "step-000008"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_resume_path(run, str(run / "step-999999"))
    with pytest.raises(CheckpointError, match="no complete checkpoint in .*empty"):
        resolve_resume_path(tmp_path / "empty", "auto")


def test_resume_with_a_different_model_shape_fails(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path), dataset, run, max_steps=4)
    with pytest.raises(CheckpointError, match="hidden_size: checkpoint 64 vs now 32"):
        _run_in_process(_preset(tmp_path, hidden=32), dataset, run, max_steps=8, resume_from_checkpoint="auto")


def test_resume_with_another_optimizer_fails_naming_both(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path, dropout=0.0), dataset, run, max_steps=4, optimizer="muon")
    assert json.loads((run / "step-000004" / "meta.json").read_text())["optimizer"] == "muon"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="trained with --optimizer muon, but this run asks for --optimizer adamw"):
        _run_in_process(_preset(tmp_path, dropout=0.0), dataset, run, max_steps=8, resume_from_checkpoint="auto")
    assert complete_checkpoints(run)[-1].name == "step-000004"  # nothing trained or overwritten
    assert all(p.stat().st_mtime_ns == before[p] for p in (run / "step-000004").iterdir())


def test_resume_under_another_lr_schedule_warns_naming_both(tmp_path: Path, dataset: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    _run_in_process(_preset(tmp_path), dataset, run, max_steps=4, lr_schedule="cosine")
    with caplog.at_level(logging.WARNING, logger="utils.train.checkpoint"):
        _run_in_process(_preset(tmp_path), dataset, run, max_steps=6, resume_from_checkpoint="auto")
    assert "trained with --lr_schedule cosine; this run continues with --lr_schedule wsd (pass --lr_schedule " \
           "cosine to keep" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="utils.train.checkpoint"):
        _run_in_process(_preset(tmp_path), dataset, run, max_steps=8, resume_from_checkpoint="auto")
    assert "--lr_schedule" not in caplog.text  # step 6 was written under wsd: nothing changes


ABLATIONS = [{"norm": "none"}, {"norm_position": "post"}, {"position_embedding": "none"}]


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: "-".join(a.values()))
def test_an_ablated_model_trains_resumes_exports_and_reloads(tmp_path: Path, dataset: Path,
                                                             ablation: dict[str, str]) -> None:
    """Stage 02 with one ablation switch: a crash-resumed run ends with the uninterrupted run's weights, the export
    says it is no plain Llama, and our loader rebuilds it with the trainer's logits."""
    from utils.lm.loading import load_model
    from utils.lm.model import ModelConfig, build_model
    from utils.train.checkpoint import load_weights

    preset = _preset(tmp_path, dropout=0.0, model=ablation, max_steps=6, save_steps=3, eval_steps=3)
    reference = _run_in_process(preset, dataset, tmp_path / "reference")
    meta = json.loads((reference / "meta.json").read_text())
    assert meta["plain_llama"] is False and meta["ablations"] == {"norm": "rmsnorm", "norm_position": "pre",
                                                                   "position_embedding": "rope", **ablation}
    shape = json.loads((tmp_path / "reference" / "step-000006" / "model_config.json").read_text())
    assert {k: shape[k] for k in ablation} == ablation

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "reference", resumed)
    for lost in ("step-000006", "final"):  # as if the run had died after step 3's checkpoint
        shutil.rmtree(resumed / lost)
    _run_in_process(preset, dataset, resumed, resume_from_checkpoint="auto")
    _assert_same_run(tmp_path / "reference", resumed, 6)

    loaded = load_model(reference)
    assert type(loaded.model).__name__ == "LumiLlamaForCausalLM"
    ids = torch.tensor([loaded.tokenizer("Tom went to the park.")["input_ids"]])
    rebuilt = build_model(ModelConfig(**shape)).eval()  # the trainer's weights at its last step
    load_weights(rebuilt, tmp_path / "reference" / "step-000006")
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, rebuilt(ids).logits)
    with pytest.raises(CheckpointError, match=list(ablation)[0]):  # the standard preset does not fit the checkpoint
        _run_in_process(_preset(tmp_path, dropout=0.0), dataset, resumed, max_steps=9, resume_from_checkpoint="auto")


def test_non_finite_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run"
    preset = _preset(tmp_path, learning_rate=1e6, warmup_steps=0, max_grad_norm=0.0, save_steps=1, eval_steps=100,
                     max_steps=50)
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step (\d+)") as info:
        _run_in_process(preset, dataset, run)
    bad_step = int(str(info.value).split("at step ")[1].split(";")[0])
    assert [p.name for p in complete_checkpoints(run)][-1] == f"step-{bad_step - 1:06d}"
    assert not (run / "final").exists()


def test_out_of_memory_gives_advice(tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.train.loop import TrainingLoop

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(TrainingLoop, "train_step", oom)
    with pytest.raises(TrainingError, match="--batch_size.*--gradient_checkpointing.*--max_length"):
        _run_in_process(_preset(tmp_path), dataset, tmp_path / "run")


def test_config_errors(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="--max_length 128 exceeds the model's context of 64"):
        _run_in_process(_preset(tmp_path), dataset, tmp_path / "a", max_length=128)
    with pytest.raises(ConfigError, match="--vocab_size 999 conflicts"):
        _run_in_process(_preset(tmp_path), dataset, tmp_path / "b", vocab_size=999)
    _run_in_process(_preset(tmp_path), dataset, tmp_path / "c", max_steps=4)
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume_from_checkpoint auto"):
        _run_in_process(_preset(tmp_path), dataset, tmp_path / "c", max_steps=4)


def test_cli_exit_codes(tmp_path: Path, dataset: Path) -> None:
    preset = _preset(tmp_path)
    result = subprocess.run(_cli(preset, dataset, tmp_path / "run", "--resume_from_checkpoint", str(tmp_path / "x")),
                            cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 1 and "no such checkpoint" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(_cli(preset, dataset, tmp_path / "run", "--learning_rat", "1"), cwd=REPO,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2


def test_the_old_config_flag_still_names_the_preset_with_a_deprecation_line(tmp_path: Path, dataset: Path) -> None:
    """`--config` (stage 02's old spelling) is `--config_path` for a while: the preset it names is the one used."""
    cli = _cli(_preset(tmp_path), dataset, tmp_path / "run", "--max_length", "128")
    cli[cli.index("--config_path")] = "--config"
    result = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert "--config is deprecated and will be removed: use --config_path" in result.stderr
    assert result.returncode == 2 and "exceeds the model's context of 64" in result.stderr  # the tiny test preset


def test_multiple_choice_accuracy_is_logged_during_training(tmp_path: Path, dataset: Path) -> None:
    _run_in_process(_preset(tmp_path), dataset, tmp_path / "run", max_steps=4, eval_hellaswag_steps=2,
                    eval_hellaswag_limit=10)
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl", "benchmark")
    assert [r["step"] for r in logged] == [2, 4]
    assert all(0.0 <= r["hellaswag_acc"] <= 1.0 and "hellaswag_acc_norm" in r for r in logged)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path, dataset: Path,
                                                                        optimizer: str) -> None:
    """torchrun with 2 x batch 2 on CPU (gloo) follows the 1 x batch 4 run: same LR schedule, same validation.
    Muon orthogonalises in bf16, where a last-bit difference between the all-reduced and the one-process gradient
    can flip a rounding: its runs agree to 1e-3, not 1e-5 (gradient accumulation differs from one batch as much)."""
    preset = _preset(tmp_path, dropout=0.0, optimizer=optimizer, muon_learning_rate=3e-3)
    rel, val_abs = (1e-5, 1e-4) if optimizer == "adamw" else (1e-3, 1e-2)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port())]
    ddp = subprocess.run([*torchrun, *_cli(preset, dataset, tmp_path / "ddp", "--batch_size", "2")[1:]], cwd=REPO,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    _run_in_process(preset, dataset, tmp_path / "one", batch_size=4)
    two, one = _train_records(tmp_path / "ddp"), _train_records(tmp_path / "one")
    # Accelerate's prepared scheduler would step once per process: the LR must advance once per optimizer step.
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    assert [r["tokens_seen"] for r in two] == [r["tokens_seen"] for r in one]
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=rel)  # synced grads
    val_two, val_one = (read_metrics(run / "metrics.jsonl", "eval") for run in (tmp_path / "ddp", tmp_path / "one"))
    assert [r["val_loss"] for r in val_two] == pytest.approx([r["val_loss"] for r in val_one], abs=val_abs)
    assert [r.get("muon_lr") for r in two] == [r.get("muon_lr") for r in one]
