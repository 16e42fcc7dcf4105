#!/usr/bin/env python
"""Print the environment Lumi will train in: versions, CUDA and GPU, bf16, flash-attn, attention kernel.

    make check-env          # or: python scripts/check_env.py [--json]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.environment import describe_environment  # noqa: E402


def main() -> int:
    env = describe_environment()
    if "--json" in sys.argv:
        print(json.dumps(env, indent=2))
        return 0
    rows = [("Python", env["python"]), ("Platform", env["platform"])]
    rows += [(name, version or "not installed") for name, version in env["versions"].items()]
    rows += [
        ("CUDA", f"yes ({env['cuda_version']})" if env["cuda_available"] else "no (CPU only)"),
        ("GPU", f"{env['gpu']} x{env['gpu_count']}" if env["gpu"] else "none"),
        ("CPU threads", env["cpu_threads"]),
        ("bf16", "supported" if env["bf16_supported"] else
         "not supported (auto: fp16 with grad scaler)" if env["cuda_available"] else
         "emulated, slow on this CPU (auto: fp32)"),
        ("flash-attn", "installed" if env["flash_attn_installed"] else "not installed (make install-flash-attn)"),
        ("Attention used for training", env["attention_implementation"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
