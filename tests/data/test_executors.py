"""The datatrove engine on its cluster executors, for real: a one-node Slurm cluster (.ci/start_slurm.sh, which CI
runs) and a local Ray instance. Both must give the local engine's output; a failing Slurm job is an error that
names its logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.data.test_engine import FILES, _config, _outputs, _write_corpus
from utils.core.errors import ConfigError, DataError
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[2]
PARTITION = "debug"  # .ci/start_slurm.sh's
BANDS = 8  # 9 bucket tasks instead of 17: each Slurm task costs a Python start


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "--noheader", "--partition", PARTITION], capture_output=True, text=True)
    return result.returncode == 0 and PARTITION in result.stdout


needs_slurm = pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster here: run `bash .ci/start_slurm.sh` "
                                                          "(as root; CI does)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("cluster") / "raw", 300)


@pytest.fixture(scope="module")
def local_output(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_dataset(_config(corpus, tmp_path_factory.mktemp("local"), minhash_bands=BANDS))


@needs_slurm
def test_slurm_executor_gives_the_local_output(corpus: Path, local_output: Path, tmp_path: Path) -> None:
    args = ["--name", "corpus", "--source", "local", "--input_path", str(corpus), "--vocab_size", "400",
            "--output_dir", str(tmp_path), "--batch_documents", "16", "--minhash_bands", str(BANDS),
            "--engine", "datatrove", "--executor", "slurm", "--slurm_partition", PARTITION, "--tasks", str(FILES)]
    result = subprocess.run([sys.executable, "scripts/01_prepare_data.py", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Slurm: submitted job(s)" in result.stderr
    out = tmp_path / "corpus"
    assert _outputs(out) == _outputs(local_output)
    engine = json.loads((out / "stats.json").read_text())["engine"]
    assert engine["executor"] == "slurm" and engine["tasks"] == FILES
    assert "slurm executor" in (out / "DATA_CARD.md").read_text()


@needs_slurm
def test_a_failing_slurm_job_is_an_error_naming_its_logs(corpus: Path, tmp_path: Path) -> None:
    config = _config(corpus, tmp_path, minhash_bands=BANDS, engine="datatrove", executor="slurm",
                     slurm_partition=PARTITION, slurm_env_command="exit 3", tasks=2)
    with pytest.raises(DataError, match=r"Slurm jobs of datatrove step filter ended with 2 of 2 task\(s\) "
                                        r"incomplete.*slurm_logs.*run the same command again"):
        prepare_dataset(config)
    assert not (tmp_path / "corpus").exists()
    queued = subprocess.run(["squeue", "--me", "--noheader", "--format=%j"], capture_output=True, text=True).stdout
    assert "lumi-corpus-" not in queued  # the steps that waited on it (and datatrove's stats jobs) are cancelled


def test_ray_executor_gives_the_local_output(corpus: Path, local_output: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an extra: make install-extra (CI installs it)")
    out = prepare_dataset(_config(corpus, tmp_path, minhash_bands=BANDS, engine="datatrove", executor="ray",
                                  tasks=FILES, num_workers=2))
    assert _outputs(out) == _outputs(local_output)
    assert json.loads((out / "stats.json").read_text())["engine"]["executor"] == "ray"


def test_executor_settings_are_checked(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="add --engine datatrove"):
        _load(executor="ray")
    with pytest.raises(ConfigError, match="needs slurm_partition"):
        _load(engine="datatrove", executor="slurm")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    config = _config(corpus, tmp_path, engine="datatrove", executor="slurm", slurm_partition=PARTITION)
    with pytest.raises(ConfigError, match="sbatch and squeue, which are not on PATH"):
        prepare_dataset(replace(config, tasks=1))


def _load(**values: object) -> DataConfig:
    from utils.core.config import load_config

    return load_config(DataConfig, None, {"source": "demo", **values})
