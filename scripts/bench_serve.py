#!/usr/bin/env python
"""Benchmark stage 06 (serving): ~2 min on 2 CPU cores.

    make bench-serve
    make bench-serve MODEL=checkpoints/pretrain/base/final ARGS='--json bench_serve.json'
    python scripts/bench_serve.py --model_path <dir>

Batch 1: time to first token and decode tokens/s of the generation engine (1 thread and torch's default; CUDA too
when there is a GPU), through the HTTP server, streamed, and through the chat page in headless Chromium (make
install-browser). Load: 64 concurrent streaming chat requests against a real uvicorn subprocess (--max_concurrent 1)
with the default --max_queue 16 and with 64; reports how many got 200 and 429, p50/p95 latency, total tokens/s and
the server's RSS before, at peak and after. Default model: checkpoints/pretrain/tiny/final, or a random model of the
tiny preset when it is missing (the report says so). Checks (correctness, not speed): no status but 200/429; RSS
after the burst <= 1.10x before. Exit code: 0 checks met, 3 a check missed, 1 a failed run, 2 bad arguments.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import TargetMissed, emit_report  # noqa: E402
from utils.benchmarks.serve import format_report, run_benchmark  # noqa: E402
from utils.core.cli import run_main  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, default=None,
                        help="model directory (default: checkpoints/pretrain/tiny/final, else a random tiny model)")
    parser.add_argument("--json", type=Path, default=None, help="also save the results to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="lumi-bench-serve-") as work_dir:
        result = run_benchmark(args.model_path, Path(work_dir))
    emit_report(format_report(result), result, args.json)
    missed = [check.name for check in result.checks if not check.passed]
    if missed:
        raise TargetMissed(f"{len(missed)} check(s) missed: {'; '.join(missed)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
