#!/usr/bin/env python
"""Equal-budget experiments: every variant of an experiment file trained on the same data, seed and budget.

    make session-ablation DATA=data/processed/tinystories      # baseline, no norm, post-norm, NoPE
    make session-optimizers DATA=data/processed/tinystories    # AdamW vs Muon, each at its best of three LRs
    python scripts/experiment.py --config_path config/experiments/optimizers.json --data_path DATA \\
        --budget_tokens 2000000

Writes sessions/<timestamp>-<name>/: report.md (final validation loss and bits per byte, tokens to the baseline's
final loss, tokens/s, wall time, peak memory), curves.png, results.json, and each run's directory.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import make_parser, run_main  # noqa: E402
from utils.core.config import merge_config  # noqa: E402
from utils.sessions.experiment import ExperimentArgs, experiment_from_args, run_experiment  # noqa: E402

HELP = {"config_path": "experiment JSON (config/experiments/ablations.json, optimizers.json)",
        "data_path": "a prepared dataset directory from stage 01 (every variant trains on it)",
        "budget_tokens": "training tokens per run (replaces the file's budget)",
        "budget_seconds": "training seconds per run, calibrated per variant (replaces the file's budget)"}


def main() -> None:
    parser = make_parser(ExperimentArgs, __doc__, HELP)
    parser.add_argument("--config_path", type=Path, required=True, help=HELP["config_path"])
    flags = vars(parser.parse_args())
    config_path = flags.pop("config_path")
    args = merge_config(ExperimentArgs, [(flags, "command line")])
    result = run_experiment(experiment_from_args(config_path, args), Path(args.data_path))
    logging.getLogger("lumi.experiment").info("outputs: %s; next: open %s", result.directory,
                                              result.directory / "report.md")


if __name__ == "__main__":
    sys.exit(run_main(main))
