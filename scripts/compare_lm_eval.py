#!/usr/bin/env python
"""Compare our scorer with lm-evaluation-harness item by item, on the same local files and the same model.

    make install-extra          # lm-eval==0.4.13, once
    python scripts/compare_lm_eval.py --model_path checkpoints/pretrain/tiny/final --data_dir <mirror>
    LUMI_DATA_DIR=<mirror> make compare-lm-eval MODEL=<dir>
    python scripts/compare_lm_eval.py --model_path <dir> --tasks arc_easy boolq --limit 200

Pass criteria (the issue's): predictions agree on >= 99 % of items and accuracies differ by <= 0.5 points.
Exit code 3 when a task misses them.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import run_main  # noqa: E402
from utils.core.errors import LumiError  # noqa: E402
from utils.core.hub import mirror_root  # noqa: E402
from utils.eval.lm_eval_compare import compare  # noqa: E402
from utils.lm.loading import load_model  # noqa: E402

MIN_AGREEMENT = 0.99
MAX_ACC_GAP_POINTS = 0.5
DEFAULT_TASKS = ["hellaswag", "arc_easy", "arc_challenge", "boolq"]


class AgreementMissed(LumiError):
    exit_code = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="local copies of the task files (default: the LUMI_DATA_DIR mirror)")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    data_dir = args.data_dir or mirror_root()
    if data_dir is None:
        parser.error("lm-eval reads local task files here: pass --data_dir DIR or set LUMI_DATA_DIR")
    loaded = load_model(args.model_path)
    report = compare(loaded.model, loaded.tokenizer, data_dir, args.tasks, args.limit, args.batch_size)
    print(f"{'task':<14} {'items':>6} {'agree':>7} {'agree_norm':>10} {'acc ours':>9} {'acc lm-eval':>11} "
          f"{'norm ours':>9} {'norm lm-eval':>12} {'max |dll|':>10}")
    failed = []
    for r in report:
        print(f"{r.task:<14} {r.items:>6} {r.agreement:>7.2%} {r.norm_agreement:>10.2%} {r.acc_ours:>9.4f} "
              f"{r.acc_lm_eval:>11.4f} {r.acc_norm_ours:>9.4f} {r.acc_norm_lm_eval:>12.4f} {r.max_ll_difference:>10.2e}")
        gap = 100 * max(abs(r.acc_ours - r.acc_lm_eval), abs(r.acc_norm_ours - r.acc_norm_lm_eval))
        if min(r.agreement, r.norm_agreement) < MIN_AGREEMENT or gap > MAX_ACC_GAP_POINTS:
            failed.append(r.task)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in report], indent=2))
    if failed:
        raise AgreementMissed(f"agreement below {MIN_AGREEMENT:.0%} or accuracy gap above {MAX_ACC_GAP_POINTS} "
                              f"points on: {', '.join(failed)}")
    print(f"PASS: every task agrees on >= {MIN_AGREEMENT:.0%} of items, accuracies within {MAX_ACC_GAP_POINTS} points")


if __name__ == "__main__":
    sys.exit(run_main(main))
