"""`make gpu-check`: the dry run goes through every row on a CPU with tiny sizes and completes; the device wheel list
agrees with requirements.txt. (The GPU figures themselves come only from a run on a GPU.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.benchmarks.gpu_check import GpuCheckConfig, format_report, plan, run_gpu_check
from utils.benchmarks.gpu_rows import pinned_versions
from utils.core.errors import LumiError

REPO = Path(__file__).resolve().parents[2]
SKIPPED_ON_CPU = {"base-compile", "flash-attn"}  # compile: too slow for a dry run; flash-attn: needs CUDA


def test_the_dry_run_goes_through_every_row(tmp_path: Path) -> None:
    import torch

    config = GpuCheckConfig(dry_run=True, json=str(tmp_path / "gpu_check.json"), work_dir=str(tmp_path / "work"))
    deterministic = torch.are_deterministic_algorithms_enabled()
    report = run_gpu_check(config)
    statuses = {row.name: row.status for row in report.rows}
    assert list(statuses) == [name for name, _ in plan()]
    assert statuses == {name: "skipped" if name in SKIPPED_ON_CPU else "ok" for name in statuses}, \
        {row.name: row.summary for row in report.rows if row.status != "ok"}
    names = {check.name for check in report.checks}
    assert any("resumed losses" in n for n in names) and any("fused loss" in n for n in names)
    assert all(check.passed for check in report.checks)
    rows = {row.name: row for row in report.rows}
    assert rows["tiny-resume"].figures["resume_exact"] and rows["serve"].figures["statuses"] == [200]
    table = format_report(report, config.json)
    assert all(name in table for name in statuses) and "dry run" in table
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # the process is left as it was


def test_without_a_gpu_the_full_check_refuses_and_points_at_the_dry_run(tmp_path: Path) -> None:
    with pytest.raises(LumiError, match="needs a CUDA GPU.*--dry_run"):
        run_gpu_check(GpuCheckConfig(json=str(tmp_path / "out.json"), work_dir=str(tmp_path / "work")))
    assert not (tmp_path / "work").exists()


def test_the_device_wheels_pin_what_requirements_txt_pins() -> None:
    device = pinned_versions(REPO / "requirements-device.txt")
    ours = pinned_versions(REPO / "requirements.txt")
    assert {name: version for name, version in device.items() if name in ours} == \
        {name: ours[name] for name in device if name in ours}
    assert "torch" not in device  # the device machine's own CUDA build is used
    assert json.loads(json.dumps(device))  # plain names and versions
