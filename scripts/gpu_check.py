#!/usr/bin/env python
"""GPU acceptance check: every CUDA path of the pipeline in one run (<= 10 min on one H100/H200), a table and JSON.

    make gpu-check                                 # on a machine with a CUDA GPU
    make gpu-check ARGS='--dry_run'                # any machine: the same rows with tiny sizes (~1 min on a CPU)
    python scripts/gpu_check.py --json out.json --work_dir /tmp/gpu_check

Rows (utils/benchmarks/gpu_check.py says what each measures): environment, data, tiny-resume (300 steps, resumed from 100,
losses compared), base-eager / base-grad-ckpt / base-compile (16x1024 bf16: tokens/s, MFU, allocated and reserved
memory against a 4090's 22 GiB, checkpoint save), fused-loss (ours against HF's), sft-full, sft-lora-grad-ckpt,
dpo-lora, evaluate (--fast_mode), serve (bf16, 8 concurrent streams), flash-attn (when it imports).

On a machine without network and with its own torch (the device machine of ../.library/device: Python 3.12,
torch 2.11): never `make install` there. Carry the pins it lacks as wheels, from here:
    make gpu-check-wheels      # downloads requirements-device.txt for CPython 3.12 manylinux into .whl/
then on that machine, in the repository root, with .whl carried:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --json $OUT/gpu_check.json
(`make gpu-check GPU_PY=python3` does the same last step; the target never installs anything.) The environment row
lists every installed version that differs from requirements.txt (torch does, by design).

Exit code: 0 all rows ran and every target was met; 1 a row failed (its traceback is in the JSON); 3 a target was
missed; 2 bad flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import emit_report  # noqa: E402
from utils.benchmarks.gpu_check import GpuCheckConfig, format_report, run_gpu_check  # noqa: E402
from utils.core.cli import parse_config, run_main  # noqa: E402

HELP = {
    "dry_run": "tiny sizes on any device (a CPU too): exercises every row's plumbing, measures nothing about a GPU",
    "json": "where to write every figure, target and error",
    "work_dir": "data, checkpoints and exports of the check; deleted and rebuilt at the start",
}


def main() -> None:
    config = parse_config(GpuCheckConfig, __doc__, help_texts=HELP)
    report = run_gpu_check(config)
    emit_report(format_report(report, config.json), report, Path(config.json))
    report.raise_for_failures(config.json)


if __name__ == "__main__":
    sys.exit(run_main(main))
