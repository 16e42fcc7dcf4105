#!/usr/bin/env python
"""Benchmark stage 03 fine-tuning: LoRA vs full SFT of the tiny model on CPU (and of base on a GPU when one is
present): steps/s, tokens/s and peak memory, each configuration in a fresh process (~2 min on 2 CPU cores).

    make bench-finetune
    python scripts/bench_finetune.py --model_path checkpoints/pretrain/tiny/final --json bench_finetune.json

Needs the tiny pretrained model (make pretrain-tiny) and the demo SFT set (make prepare-demo). Figures only: no
targets, exit code 0 unless a run fails (1) or the arguments are wrong (2).
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import emit_report  # noqa: E402
from utils.benchmarks.finetune import DATASET, MODEL, format_report, run_benchmark  # noqa: E402
from utils.core.cli import run_main  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, default=MODEL, help="HF model directory to fine-tune")
    parser.add_argument("--dataset_path", type=Path, default=DATASET, help="SFT data (any stage 03 format)")
    parser.add_argument("--json", type=Path, default=None, help="also save the results to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="lumi-bench-finetune-") as work_dir:
        result = run_benchmark(Path(work_dir), args.model_path, args.dataset_path)
    emit_report(format_report(result), result, args.json)


if __name__ == "__main__":
    sys.exit(run_main(main))
