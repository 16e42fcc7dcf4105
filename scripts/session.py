#!/usr/bin/env python
"""Run a session (a sequence of stages under a time budget) or a session utility.

    make session-quick          # python scripts/session.py quick
    python scripts/session.py {quick,prototype,experiment,evaluation,architecture,test-pipeline,debug,status,cleanup,config-rtx4090}
    make session-prototype ARGS=--short   # the same stages on a slice of the same data: minutes on a CPU

Sessions write sessions/<timestamp>-<name>/session.log and report.md; see SESSIONS.md.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import run_main  # noqa: E402
from utils.core.errors import LumiError  # noqa: E402
from utils.sessions import diagnostics, plans  # noqa: E402

SHORT_RUNS = {"prototype": plans.prototype, "experiment": plans.experiment}
RUNS = {"quick": plans.quick, **SHORT_RUNS, "evaluation": plans.evaluation,
        "architecture": plans.architecture, "test-pipeline": plans.test_pipeline}
RTX4090_CONFIG = Path("config/rtx4090.json")


class ProblemsFound(LumiError):
    exit_code = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*RUNS, "debug", "status", "cleanup", "config-rtx4090"])
    parser.add_argument("--short", action="store_true",
                        help=f"{'/'.join(SHORT_RUNS)} only: a minutes-long CPU rehearsal on a slice of the same data")
    args = parser.parse_args()
    name = args.name
    if args.short and name not in SHORT_RUNS:
        parser.error(f"--short applies to {', '.join(SHORT_RUNS)} only")
    if name in SHORT_RUNS:
        session = SHORT_RUNS[name](short=args.short)
        print((session.directory / "report.md").read_text())
    elif name in RUNS:
        session = RUNS[name]()
        print((session.directory / "report.md").read_text())
    elif name == "status":
        print("\n".join(diagnostics.status()))
    elif name == "cleanup":
        removed = diagnostics.cleanup()
        print("\n".join(f"removed {p}" for p in removed) or "nothing to clean")
    elif name == "config-rtx4090":
        table = diagnostics.rtx4090_recommendations()
        RTX4090_CONFIG.write_text(json.dumps({"_comment": "estimated micro-batch sizes for a 24 GB GPU at each "
                                              "preset's context (utils/lm/memory.py)", **table}, indent=2) + "\n")
        for preset, row in table.items():
            print(f"{preset:<6} max_length {row['max_length']:>5}  batch_size {row['batch_size']:>3}  "
                  f"(with --gradient_checkpointing {row['batch_size_gradient_checkpointing']:>3})  "
                  f"~{row['estimated_gb']} GB")
        print(f"written to {RTX4090_CONFIG}")
    else:
        problems = diagnostics.debug()
        for problem in problems:
            print(f"PROBLEM: {problem}")
        if problems:
            raise ProblemsFound(f"{len(problems)} problem(s) found; each line above says how to fix it")
        print("no problems found: environment, datasets and checkpoints are consistent")
        print("\n".join(diagnostics.status()))


if __name__ == "__main__":
    sys.exit(run_main(main))
