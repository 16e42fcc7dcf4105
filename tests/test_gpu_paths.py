"""The CUDA code paths, pinned on a CPU: what a first GPU run would have hit (issue 12), each simulated here.

Generation and scoring during training under the training autocast; checkpoints that load on a machine without the
GPU they were saved on; CUDA RNG restored with fewer GPUs; the attention choice when flash-attn is installed but
broken; strict determinism; bf16 without emulation; the device peak table; reserved memory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.core.test_distributed import finetune_inputs  # noqa: F401  (fixture: a tiny model and SFT pairs)
from utils.core.environment import SDPA, choose_attention, resolve_precision
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.train.checkpoint import TrainerState, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from utils.train.loop import TrainingError, TrainingLoop, set_determinism
from utils.train.pretrain import load_pretrain_config, pretrain

TRAINING = {"learning_rate": 3e-3, "warmup_steps": 1, "max_steps": 2, "batch_size": 2, "max_length": 32,
            "logging_steps": 1, "eval_steps": 2, "save_steps": 2, "eval_batches": 1, "num_samples": 1,
            "sample_max_new_tokens": 3, "seed": 3}


def write_preset(directory: Path, **training: Any) -> Path:
    path = directory / "preset.json"
    path.write_text(json.dumps({
        "name": "test", "label": "test-0.1M", "params_millions": 0.1, "description": "2 layers x 64 for tests",
        "model": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 32768, "max_position_embeddings": 64},
        "training": {**TRAINING, **training}}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = DataConfig(name="demo", source="demo", demo_num_stories=600, vocab_size=400, max_length=64,
                        num_workers=0, output_dir=str(tmp_path_factory.mktemp("data")))
    return prepare_dataset(config)


@pytest.fixture(autouse=True)
def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def test_samples_and_benchmark_run_under_the_training_autocast(tmp_path: Path, dataset: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With flash_attention_2, a forward outside autocast sees fp32 weights and flash-attn refuses fp32: generation
    (samples) and scoring (the multiple-choice benchmark) must see the autocast the training step sees."""
    from transformers import LlamaForCausalLM

    seen: list[tuple[bool, torch.dtype]] = []
    forward = LlamaForCausalLM.forward

    @functools.wraps(forward)
    def recording_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)

    # Training and validation call the decoder directly (utils/train/loss.CausalLMLoss); only generation
    # and the scorer go through LlamaForCausalLM.forward.
    monkeypatch.setattr(LlamaForCausalLM, "forward", recording_forward)
    # The CPU peak probe at bf16 takes minutes where bf16 is emulated (AVX2-only CPUs); MFU is not under test here.
    monkeypatch.setattr("utils.train.loop.device_peak_flops", lambda device, dtype: (None, "not measured in tests"))
    preset = write_preset(tmp_path)
    preset_obj, config = load_pretrain_config(str(preset), {
        "data_path": str(dataset), "output_dir": str(tmp_path / "run"), "mixed_precision": "bf16",
        "eval_hellaswag_steps": 2, "eval_hellaswag_limit": 2})
    pretrain(str(preset), config, preset_obj)
    samples_calls = 2 * TRAINING["sample_max_new_tokens"]  # greedy + top-p, one forward per new token
    assert len(seen) > samples_calls  # samples and the benchmark both ran
    assert set(seen) == {(True, torch.bfloat16)}


class OneProcess:
    """The slice of an Accelerator that save_checkpoint needs, for a single process."""

    is_main_process = True
    process_index = 0

    def wait_for_everyone(self) -> None:
        pass


@contextlib.contextmanager
def saved_as_if_on_gpu() -> Iterator[None]:
    """torch.save tags every CPU storage 'cuda:0', as a checkpoint written on a GPU is tagged."""
    entry = (0, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda storage, location: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def test_a_gpu_checkpoint_loads_on_a_machine_without_that_gpu(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with saved_as_if_on_gpu():
        path = save_checkpoint(tmp_path, OneProcess(), model, optimizer, scheduler, None, TrainerState(step=1),
                               {"hidden_size": 4}, {}, {})
    with pytest.raises(RuntimeError, match="CUDA"):  # the simulation holds: a plain torch.load wants the GPU
        torch.load(path / "optimizer.pt", weights_only=True)
    loaded = load_checkpoint(path, process_index=0)
    assert {t.device.type for s in loaded.optimizer_state["state"].values() for t in s.values()} == {"cpu"}
    assert loaded.rng_state is not None and loaded.rng_state["torch"].device.type == "cpu"


def test_cuda_rng_restore_with_fewer_gpus_than_were_saved(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    state = capture_rng_state()
    saved = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda value, device: restored.append((int(value[0]), device)))
    with caplog.at_level(logging.WARNING):
        restore_rng_state({**state, "cuda": saved})
    assert restored == [(1, 0)]
    assert "CUDA RNG states of 2 GPU(s), 1 are visible" in caplog.text


def test_a_broken_flash_attn_falls_back_to_sdpa(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Installed (metadata says 2.8.3) but built for another torch: the import fails, training uses SDPA."""
    import transformers.utils

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setattr("utils.core.environment.package_version", lambda name: "2.8.3")
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))  # has no flash_attn_func
    with caplog.at_level(logging.WARNING):
        assert choose_attention() == SDPA
    assert "flash-attn is installed but unusable (ImportError" in caplog.text
    assert "--no_flash_attn" in caplog.text


@pytest.fixture
def restore_determinism() -> Iterator[None]:
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    environment = {k: os.environ.get(k) for k in ("FLASH_ATTENTION_DETERMINISTIC", "CUBLAS_WORKSPACE_CONFIG")}
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_deterministic_mode_is_strict_and_reaches_flash_attn(restore_determinism: None) -> None:
    set_determinism(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # warn_only keeps SDPA backwards racy
    assert os.environ["FLASH_ATTENTION_DETERMINISTIC"] == "1" and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and "FLASH_ATTENTION_DETERMINISTIC" not in os.environ


def test_an_op_without_a_deterministic_kernel_gives_advice(tmp_path: Path, dataset: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def strict_failure(self: TrainingLoop) -> None:
        raise RuntimeError("index_add_cuda_ does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'.")

    monkeypatch.setattr(TrainingLoop, "train_step", strict_failure)
    preset = write_preset(tmp_path)
    preset_obj, config = load_pretrain_config(str(preset), {"data_path": str(dataset), "mixed_precision": "no",
                                                            "output_dir": str(tmp_path / "run")})
    with pytest.raises(TrainingError, match="step 1: index_add_cuda_ .*--no_deterministic"):
        pretrain(str(preset), config, preset_obj)


def test_bf16_only_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """T4/V100: torch.cuda.is_bf16_supported() is True through emulation; they must get fp16 and a grad scaler."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr("utils.core.environment.cpu_bf16_native", lambda: False)
    assert resolve_precision("auto", "cpu") == "no"
    monkeypatch.setattr("utils.core.environment.cpu_bf16_native", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"


def test_the_gain_is_measured_on_the_device_the_trainer_trains_on(finetune_inputs: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: after the trainer has moved the model (to the GPU), not on the CPU copy that from_pretrained gives."""
    from utils.core.config import load_config
    from utils.finetune.sft import SFT_STAGE, SFTStageConfig, run_sft

    events: list[tuple[str, Any, torch.device]] = []
    build, measure = SFT_STAGE.build_trainer, SFT_STAGE.measure

    def recording_build(*args: Any) -> Any:
        trainer = build(*args)
        events.append(("build", trainer, trainer.args.device))
        return trainer

    def recording_measure(model: Any, *args: Any) -> Any:
        events.append(("measure", model, next(model.parameters()).device))
        return measure(model, *args)

    monkeypatch.setattr(SFT_STAGE, "build_trainer", recording_build)
    monkeypatch.setattr(SFT_STAGE, "measure", recording_measure)
    run_sft(load_config(SFTStageConfig, None, {
        "model_path": str(finetune_inputs / "final"), "dataset_path": str(finetune_inputs / "sft_train.json"),
        "output_dir": str(tmp_path), "run_name": "run", "max_steps": 1, "batch_size": 2, "gain_eval_size": 2,
        "gain_max_new_tokens": 2, "validation_split": 0.0, "lora_r": 4}))
    assert [kind for kind, _, _ in events] == ["build", "measure", "measure"]
    trainer, device = events[0][1], events[0][2]
    assert events[1][1] is trainer.model and events[1][2] == device == events[2][2]


def test_device_peaks_match_exact_names_and_the_run_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.lm.metrics import device_peak_flops, gpu_peak_flops

    assert gpu_peak_flops("NVIDIA GeForce RTX 4090", torch.bfloat16, tf32=False) == pytest.approx(165.2e12)
    for other in ("NVIDIA GeForce RTX 4090 Laptop GPU", "NVIDIA GeForce RTX 4090 D"):  # fewer SMs: not the 4090's
        assert gpu_peak_flops(other, torch.bfloat16, tf32=False) is None
    assert gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16, tf32=False) == pytest.approx(756.5e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    cuda, matmul = torch.device("cuda"), torch.backends.cuda.matmul
    tf32 = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False  # --deterministic: fp32 runs are compared with the fp32 peak, not bf16's
        assert device_peak_flops(cuda, torch.float32) == (pytest.approx(19.5e12),
                                                          "NVIDIA A100-SXM4-80GB datasheet, fp32")
        matmul.allow_tf32 = True
        assert device_peak_flops(cuda, torch.float32)[0] == pytest.approx(156e12)
        assert device_peak_flops(cuda, torch.bfloat16)[0] == pytest.approx(312e12)
    finally:
        matmul.allow_tf32 = tf32


def test_the_step_logs_reserved_memory_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.lm.metrics import MIB, memory_stats

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * MIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 5 * MIB)
    assert memory_stats(torch.device("cuda")) == {"memory_mb": 3.0, "memory_reserved_mb": 5.0}
    assert set(memory_stats(torch.device("cpu"))) == {"memory_mb"}


def test_the_gpu_quick_session_evaluates_a_few_times_and_can_anneal_within_its_budget() -> None:
    from utils.sessions.plans import CPU_QUICK, GPU_QUICK

    for budget in (CPU_QUICK, GPU_QUICK):
        assert budget.pretrain_steps // budget.eval_steps <= 8 and budget.save_steps >= budget.eval_steps
    assert GPU_QUICK.pretrain_steps / GPU_QUICK.pretrain_s <= 10  # steps/s the schedule needs to finish in time


def test_a_run_stopped_by_max_time_says_how_to_anneal(tmp_path: Path, dataset: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    preset = write_preset(tmp_path)
    preset_obj, config = load_pretrain_config(str(preset), {"data_path": str(dataset), "mixed_precision": "no",
                                                            "output_dir": str(tmp_path / "run"), "max_steps": 50,
                                                            "max_time": 1e-6, "num_samples": 0})
    with caplog.at_level(logging.WARNING):
        pretrain(str(preset), config, preset_obj)
    assert "reached at step 1 of max_steps 50" in caplog.text and "set --max_steps to about 1" in caplog.text


@pytest.mark.parametrize(("release", "problem"), [("12.4", "is CUDA 12.4 but torch was built with CUDA 13.0"),
                                                  ("13.0", None)])
def test_the_flash_attn_build_check_finds_an_nvcc_of_another_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  release: str, problem: str | None) -> None:
    from utils.core.environment import flash_attn_build_problems

    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    problems = flash_attn_build_problems()
    assert (problem in problems[0]) if problem else problems == []
