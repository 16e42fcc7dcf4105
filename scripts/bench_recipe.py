#!/usr/bin/env python
"""Benchmark the training recipe: the shipped optimizers (AdamW vs Muon, three learning rates each), ablations
(baseline, no norm, post-norm, NoPE) and recipe (the plain recipe vs WSD, zero-init projections and both)
experiments, tiny preset on the mirror's prose; equal training time per run (the recipe pieces: equal tokens, as
their file says).

    LUMI_DATA_DIR=/path/to/mirror make bench-recipe                 # 14 runs of ~10 min: ~2 h 40 min on 2 CPU cores
    make bench-recipe ARGS='--only optimizers --budget_seconds 300'
    python scripts/bench_recipe.py --reuse optimizers=sessions/<ts>-optimizers   # report an earlier run again

Each experiment also writes sessions/<timestamp>-<name>/ (report.md, curves.png). Targets: Muon reaches AdamW's
final validation loss with <= 0.75x the tokens and ends lower at equal time. Exit code: 0 targets met, 3 a target
missed, 1 missing mirror data or a failed experiment, 2 bad arguments.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.benchmarks.common import TargetMissed, name_and_dir  # noqa: E402
from utils.benchmarks.recipe import EXPERIMENTS, format_report, run_benchmark  # noqa: E402
from utils.core.cli import run_main  # noqa: E402

DEFAULT_BUDGET_S = 600
DEFAULT_DATA_DIR = Path("data/bench")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(EXPERIMENTS), action="append", default=None,
                        help="run this experiment only (repeatable; default: all three)")
    parser.add_argument("--budget_seconds", type=float, default=DEFAULT_BUDGET_S,
                        help=f"training seconds per run of optimizers and ablations (default: {DEFAULT_BUDGET_S})")
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"where the prose corpus is prepared once and reused (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--reuse", action="append", default=[], metavar="NAME=DIR", type=name_and_dir,
                        help="report an experiment directory from an earlier run instead of training it again")
    parser.add_argument("--json", type=Path, default=None, help="also save the results to this JSON file")
    args = parser.parse_args()
    args.reuse = dict(args.reuse)
    unknown = sorted(set(args.reuse) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"--reuse: unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}")
    return args


def main() -> None:
    args = parse_args()
    result = run_benchmark(args.data_dir, args.budget_seconds, args.only or list(EXPERIMENTS), args.reuse)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=str) + "\n")
    missed = [check.name for check in result.checks if not check.passed]
    if missed:
        raise TargetMissed(f"{len(missed)} target(s) missed: {'; '.join(missed)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
