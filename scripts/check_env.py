#!/usr/bin/env python
"""Print the environment Lumi will train in: versions, CUDA and GPU, bf16, flash-attn, attention kernel.

    make check-env          # or: python scripts/check_env.py [--json]
    python scripts/check_env.py --flash_attn_build    # what would fail a flash-attn build; exit 1 if anything

Exit code: 0, or 1 when --flash_attn_build finds a problem.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.environment import describe_environment, flash_attn_build_problems  # noqa: E402

log = logging.getLogger("lumi")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the environment as JSON")
    parser.add_argument("--flash_attn_build", action="store_true",
                        help="check what a flash-attn source build needs (CUDA torch, GPU, matching nvcc)")
    return parser.parse_args()


def print_table(env: dict) -> None:
    flash = "installed" if env["flash_attn_installed"] else "not installed (make install-flash-attn)"
    if env["flash_attn_installed"] and env["flash_attn_problem"]:
        flash = f"installed but not used: {env['flash_attn_problem']}"
    rows = [("Python", env["python"]), ("Platform", env["platform"])]
    rows += [(name, version or "not installed") for name, version in env["versions"].items()]
    rows += [
        ("CUDA", f"yes ({env['cuda_version']})" if env["cuda_available"] else "no (CPU only)"),
        ("GPU", f"{env['gpu']} x{env['gpu_count']}" if env["gpu"] else "none"),
        ("CPU threads", env["cpu_threads"]),
        ("bf16", "native" if env["bf16_supported"] else
         "not native (fp16 with grad scaler on a GPU, fp32 on a CPU)"),
        ("flash-attn", flash),
        ("Attention used for training", env["attention_implementation"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args()
    if args.flash_attn_build:
        problems = flash_attn_build_problems()
        for problem in problems:
            log.error("flash-attn build: %s", problem)
        if not problems:
            log.info("flash-attn build: CUDA torch, an Ampere+ GPU and a matching nvcc are present")
        return 1 if problems else 0
    env = describe_environment()
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        print_table(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
