"""`make test-pipeline`: every stage end to end on a micro model, through the real scripts and the session runner."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


@pytest.mark.slow
def test_test_pipeline_runs_every_stage(tmp_path: Path) -> None:
    env = {**os.environ, "LUMI_SESSIONS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["make", "--no-print-directory", "test-pipeline"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (session,) = tmp_path.iterdir()
    report = (session / "report.md").read_text()
    for stage in ("data", "pretrain", "sft", "dpo", "evaluate", "serve (one API request)"):
        assert f"| {stage} |" in report and "| ok |" in report
    assert "completed" in report and "API answer" in report
    work = session / "work"
    for artifact in ("data/smoke/manifest.json", "pretrain/final/model.safetensors", "sft/smoke/merged/config.json",
                     "dpo/smoke/merged/config.json", "eval/smoke/results.json"):
        assert (work / artifact).is_file(), artifact
    assert "$ " in (session / "session.log").read_text()  # every command is logged
