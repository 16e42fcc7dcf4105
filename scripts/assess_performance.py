#!/usr/bin/env python
"""Verdict per metric of an evaluation against the model's size class, with concrete recommendations.

    python scripts/assess_performance.py evaluation_results/<run>/results.json
    make assess-performance RESULTS=evaluation_results/<run>/results.json
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.artifacts import read_json  # noqa: E402
from utils.core.cli import DeprecatedAlias, run_main  # noqa: E402
from utils.core.errors import DataError  # noqa: E402
from utils.eval.assessment import DEFAULT_CONFIG, load_expectations, render_assessment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json written by scripts/05_evaluate.py")
    parser.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG, help="expected ranges per size class")
    parser.add_argument("--config", dest="config_path", type=Path, action=DeprecatedAlias, replacement="--config_path")
    args = parser.parse_args()
    if not args.results.is_file():
        raise DataError(f"results file not found: {args.results}. Run scripts/05_evaluate.py first.")
    print(render_assessment(read_json(args.results), load_expectations(args.config_path)))


if __name__ == "__main__":
    sys.exit(run_main(main))
