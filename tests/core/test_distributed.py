"""Several processes on a CPU: the shipped DDP config launches SFT on two processes that write the run directory
once; a launcher's FSDP or DeepSpeed choice is refused before anything is loaded."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.core.errors import ConfigError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset
from utils.lm.model import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[2]
DDP_CONFIG = "config/accelerate/ddp.yaml"
RUN_TIMEOUT_S = 400
TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=400,
                  max_position_embeddings=256)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def finetune_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo dataset's tokenizer and SFT pairs, and a random 2-layer model saved like a pretraining final/."""
    root = tmp_path_factory.mktemp("ddp")
    dataset = prepare_dataset(DataConfig(name="demo", source="demo", demo_num_stories=300, vocab_size=400,
                                         num_workers=0, output_dir=str(root)))
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_SHAPE), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model.save_pretrained(root / "final")
    for path in (dataset / "tokenizer").iterdir():
        shutil.copy2(path, root / "final" / path.name)
    (root / "final" / "meta.json").write_text(json.dumps({"stage": "pretrain", "dataset": str(dataset)}))
    rows = json.loads((dataset / "demo" / "sft_train.json").read_text())[:40]
    (root / "sft_train.json").write_text(json.dumps(rows))
    return root


def test_sft_on_two_processes_through_the_ddp_config_writes_the_run_once(finetune_inputs: Path,
                                                                         tmp_path: Path) -> None:
    # Without --cpu, which would make accelerate launch one process: torchrun starts two, and without CUDA each
    # takes the CPU with gloo (utils/core/distributed.process_state).
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", DDP_CONFIG,
              "--num_processes", "2", "--main_process_port", str(free_port())]
    stage = ["scripts/03_sft.py", "--model_path", str(finetune_inputs / "final"), "--dataset_path",
             str(finetune_inputs / "sft_train.json"), "--output_dir", str(tmp_path), "--run_name", "run",
             "--max_steps", "2", "--batch_size", "2", "--logging_steps", "1", "--eval_steps", "2", "--save_steps", "2",
             "--gain_eval_size", "2", "--gain_max_new_tokens", "2", "--validation_split", "0.1", "--lora_r", "4"]
    result = subprocess.run([*launch, *stage], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sft on 2 processes" in result.stderr
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("end") == 1  # the second process writes nothing
    assert json.loads((run / "meta.json").read_text())["status"] == "done"
    assert (run / "merged" / "model.safetensors").is_file() and (run / "adapter").is_dir()
    assert not [p.name for p in tmp_path.rglob("*.tmp-*")]


class SecondProcess:
    """Accelerate's process state as process 1 of 2 sees it."""

    is_main_process = False
    num_processes = 2
    process_index = 1


def test_a_process_other_than_the_main_one_writes_none_of_the_run_files(finetune_inputs: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Process 1 trains (the trainer writes its own checkpoints on process 0 only) and leaves the run directory,
    the gain measurement, metrics and exports to process 0; here the trainer itself runs as one process."""
    from utils.core.config import load_config
    from utils.finetune.sft import SFTStageConfig, run_sft

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr("utils.finetune.runner.process_state", SecondProcess)
    monkeypatch.setattr("utils.finetune.runner.on_main_process", lambda state, compute: (run_dir, None))  # main's broadcast
    run_sft(load_config(SFTStageConfig, None, {
        "model_path": str(finetune_inputs / "final"), "dataset_path": str(finetune_inputs / "sft_train.json"),
        "output_dir": str(tmp_path), "run_name": "run", "max_steps": 1, "batch_size": 2, "gain_eval_size": 2,
        "gain_max_new_tokens": 2, "validation_split": 0.0, "lora_r": 4, "save_steps": 100}))
    ours = {"adapter", "merged", "metrics.jsonl", "meta.json", "config.resolved.json", "gain.jsonl", "loss.png"}
    assert not ours & {p.name for p in run_dir.iterdir()}


def test_fsdp_or_deepspeed_chosen_by_an_accelerate_config_is_refused(finetune_inputs: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.core.config import load_config
    from utils.finetune.sft import SFTStageConfig, run_sft
    from utils.train.pretrain import load_pretrain_config, pretrain

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    preset, config = load_pretrain_config("tiny", {"output_dir": str(tmp_path / "pretrain")})
    with pytest.raises(ConfigError, match=f"FSDP was selected.*--config_file {DDP_CONFIG}"):
        pretrain("tiny", config, preset)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    sft = load_config(SFTStageConfig, None, {"model_path": str(finetune_inputs / "final"), "output_dir": str(tmp_path),
                                             "dataset_path": str(finetune_inputs / "sft_train.json")})
    with pytest.raises(ConfigError, match="DeepSpeed was selected"):
        run_sft(sft)
    assert not (tmp_path / "pretrain").exists() and not list(tmp_path.glob("chatml-*"))


def test_the_multi_gpu_make_targets_launch_with_the_shipped_ddp_config() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(REPO / DDP_CONFIG)).distributed_type == "MULTI_GPU"
    dry_run = subprocess.run(["make", "-n", "pretrain-multi-gpu", "sft-multi-gpu", "dpo-multi-gpu"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    launches = [line for line in dry_run.splitlines() if "accelerate launch" in line]
    assert len(launches) == 3 and all(f"--config_file {DDP_CONFIG}" in line for line in launches)
