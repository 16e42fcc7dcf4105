#!/usr/bin/env python
"""Benchmark stage 01 (data preparation) at scale on the prose of the LUMI_DATA_DIR mirror (prose/british-fiction
and tinystories/): ~7 min on 2 CPU cores.

    LUMI_DATA_DIR=/path/to/mirror make bench-data
    make bench-data ARGS='--copies 8 --json bench_data.json'
    python scripts/bench_data.py --output_dir /tmp/bench --vocab_size 8192

Cuts the prose into ~315-character documents, reorders each one's words per copy (so the copies are distinct to
the deduplication, as a larger corpus is), plants 1 % of them again with 1 % of their words changed, and runs the
stage on 1x and --copies x that corpus with each engine, local and datatrove (each run in a fresh process whose
whole tree is sampled for memory; datatrove with a 0.02 GB budget, so its tasks write their dedup keys in chunks);
reports documents/s and MB/s per stage and end to end, the recall on the planted copies, and times MinHash
signatures on short documents. Targets: MinHash >= 30,000 short docs/s; end to end >= 2 MB/s; peak memory of the
Nx run <= 1.3x that of the 1x run; recall >= 95 % with no distinct document lost. Exit code: 0 all targets met,
3 a target missed, 1 missing mirror data or a failed run, 2 bad arguments.
"""

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import TargetMissed, emit_report  # noqa: E402
from utils.benchmarks.data import format_report, run_benchmark  # noqa: E402
from utils.core.cli import run_main  # noqa: E402

DEFAULT_VOCAB_SIZE = 16384
DEFAULT_COPIES = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="keep the prepared datasets and the generated inputs here (default: a temporary directory, "
                             "removed afterwards)")
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help=f"tokenizer vocabulary (default: {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--copies", type=int, default=DEFAULT_COPIES,
                        help=f"reordered copies of the corpus in the large run (default: {DEFAULT_COPIES})")
    parser.add_argument("--json", type=Path, default=None, help="also save the results to this JSON file")
    args = parser.parse_args()
    if args.copies < 2:
        parser.error(f"--copies must be at least 2, got {args.copies}")
    return args


def main() -> None:
    args = parse_args()
    work = contextlib.nullcontext(str(args.output_dir)) if args.output_dir else \
        tempfile.TemporaryDirectory(prefix="lumi-bench-data-")
    with work as work_dir:
        result = run_benchmark(Path(work_dir), args.vocab_size, args.copies)
    emit_report(format_report(result), result, args.json)
    missed = [check.name for check in result.checks if not check.passed]
    if missed:
        raise TargetMissed(f"{len(missed)} target(s) missed: {'; '.join(missed)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
