#!/usr/bin/env python
"""Benchmark stage 07 (GGUF export): ~10 min on 2 CPU cores.

    make bench-export
    python scripts/bench_export.py --model_path tiny=checkpoints/pretrain/tiny/final --json bench_export.json

Export time and file size for f32, f16, bf16 and q8_0, for tiny and base (random weights of the presets' shapes with
a 1,024-piece tokenizer, or the directories given); then greedy decode tokens/s of llama.cpp (llama-cpp-python,
make install-llama-cpp) on the f32, f16 and q8_0 files beside our engine's, same prompt, same threads, one run.
Exit code: 0 done, 1 a failed run, 2 bad arguments.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import emit_report, name_and_dir  # noqa: E402
from utils.benchmarks.export import format_report, run_benchmark  # noqa: E402
from utils.core.cli import run_main  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", action="append", default=[], metavar="NAME=DIR", type=name_and_dir,
                        help="benchmark this model directory under NAME (repeatable; default: random tiny and base)")
    parser.add_argument("--json", type=Path, default=None, help="also save the results to this JSON file")
    args = parser.parse_args()
    args.model_path = dict(args.model_path)
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="lumi-bench-export-") as work_dir:
        result = run_benchmark(args.model_path or None, Path(work_dir))
    emit_report(format_report(result), result, args.json)


if __name__ == "__main__":
    sys.exit(run_main(main))
