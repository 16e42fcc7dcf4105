"""A user's first contact: a copy of the checkout with nothing beside it and no network. Every session target and
`make evaluate` fails in seconds naming the datasets and both ways to provide them; with the mirror switch set, the
short rehearsals of session-prototype and session-experiment run every stage to the end on this CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import mirror_dir

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else None  # the virtual environment make test runs in
FAIL_FAST_S = 10
DATA_TARGETS = ("session-prototype", "session-experiment", "session-evaluation", "evaluate")


def _checkout_copy(target: Path) -> Path:
    """The files of the checkout (tracked and untracked, not ignored), mtimes kept, outputs and venv left behind."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh")  # nothing beside the clone: no ../shared
    return _checkout_copy(root / "lumi")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LUMI_DATA_DIR", "HF_HOME", "MAKEFLAGS", "MAKELEVEL")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf"), HF_ENDPOINT="http://127.0.0.1:9", **extra)
    return env


def _make(clone: Path, target: str, env: dict[str, str], *args: str, timeout: int = 120) -> tuple[int, str, float]:
    assert VENV is not None and (VENV / ".installed").is_file(), "run the suite through make test (the .venv stamp)"
    start = time.monotonic()
    result = subprocess.run(["make", "-s", target, f"VENV={VENV}", *args], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - start


@pytest.mark.parametrize("target", DATA_TARGETS)
def test_without_hub_or_mirror_each_target_fails_fast_naming_the_data(clone: Path, tmp_path: Path,
                                                                      target: str) -> None:
    code, output, seconds = _make(clone, target, _env(tmp_path))
    assert code != 0
    assert seconds < FAIL_FAST_S, f"{target} took {seconds:.1f} s to fail"
    assert "LUMI_DATA_DIR=/path/to/mirror" in output and "connect to the internet once" in output
    assert "allenai/ai2_arc, ARC-Easy" in output and "Traceback" not in output
    if target == "session-prototype":
        assert "roneneldan/TinyStories" in output
    if target == "session-experiment":
        assert all(name in output for name in ("HuggingFaceFW/fineweb-edu", "tatsu-lab/alpaca", "Anthropic/hh-rlhf"))
    assert not list((clone / "data" / "processed").glob("*")) if (clone / "data" / "processed").exists() else True


@pytest.fixture(scope="module")
def session_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.hub_repos import mirror_with_fineweb

    mirror = mirror_dir()
    if mirror is None:
        pytest.skip("LUMI_DATA_DIR is not set to the test data mirror")
    return mirror_with_fineweb(mirror, tmp_path_factory.mktemp("mirror") / "data")


@pytest.mark.slow
@pytest.mark.parametrize(("target", "stages"), [
    ("session-prototype", ("check data", "data", "pretrain", "evaluate")),
    ("session-experiment", ("check data", "data", "pretrain", "sft", "dpo", "evaluate")),
])
def test_short_sessions_run_every_stage_from_the_mirror(clone: Path, session_mirror: Path, tmp_path: Path,
                                                        target: str, stages: tuple[str, ...]) -> None:
    code, output, _ = _make(clone, target, _env(tmp_path, LUMI_DATA_DIR=str(session_mirror)), "ARGS=--short",
                            timeout=900)
    assert code == 0, output[-4000:]
    report = sorted((clone / "sessions").glob(f"*-{target.removeprefix('session-')}-short/report.md"))[-1]
    text = report.read_text()
    assert "completed after" in text
    for stage in stages:
        assert f"| {stage} |" in text and "FAILED" not in text
    model = "merged" if "sft" in stages else "final"
    assert list((clone / "checkpoints").glob(f"*/*/{model}/model.safetensors"))
    assert list((clone / "evaluation_results").glob("*/results.json"))
