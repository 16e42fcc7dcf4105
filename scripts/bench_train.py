#!/usr/bin/env python
"""Benchmark stage 02 (pretraining) throughput: ~10 min on 2 CPU cores, --quick ~3 min.

    make bench-train
    make bench-train ARGS='--quick'
    python scripts/bench_train.py --json bench_train.json

Prints tokens/s and MFU of our training step (TrainingLoop.train_step of the real pipeline) for tiny, small and
base, eager and with --compile, beside a plain-PyTorch reference step of the same shape timed in the same process;
peak memory per configuration (each runs in a fresh process); checkpoint save time. On CUDA it adds base at
max_length 1024, bf16, with and without --compile and --gradient_checkpointing; without CUDA it says so.
Targets: ours >= 0.9x the reference's tokens/s at equal precision on CPU; on an H100, base compiled >= 40 % MFU;
checkpoint save of base <= 5 s on a GPU machine. Exit code: 0 all targets met, 3 a target missed, 1 a failed run,
2 bad arguments.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import TargetMissed, emit_report  # noqa: E402
from utils.benchmarks.train import ROUNDS, format_report, run_benchmark  # noqa: E402
from utils.core.cli import run_main  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="measure tiny only (a fast check of the benchmark)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"alternating timing blocks per configuration (default: {ROUNDS})")
    parser.add_argument("--json", type=Path, default=None, help="also save the results to this JSON file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="lumi-bench-train-data-") as work_dir:
        result = run_benchmark(Path(work_dir), args.quick, args.rounds)
    emit_report(format_report(result), result, args.json)
    missed = [check.name for check in result.checks if not check.passed]
    if missed:
        raise TargetMissed(f"{len(missed)} target(s) missed: {'; '.join(missed)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
