#!/usr/bin/env python
"""Stage 05: evaluate a model directory (pretrain final/, merged SFT/DPO model, or a PEFT adapter directory).

    LUMI_DATA_DIR=/path/to/mirror python scripts/05_evaluate.py --model_path checkpoints/pretrain/tiny/final
    python scripts/05_evaluate.py --model_path <dir> --tasks hellaswag arc_easy --limit 200 --batch_size 32
    python scripts/05_evaluate.py --model_path <dir> --fast_mode            # 200 items per task + quick prompts
    python scripts/05_evaluate.py --model_path <dir> --tasks smoke --custom_prompts my_prompts.json --detailed_output

Scored as lm-evaluation-harness 0.4.13 scores them (zero-shot log-likelihood; acc and acc_norm with stderr).
The benchmark sets come from the Hugging Face hub (cached after the first run). Without network, set LUMI_DATA_DIR
or pass --data_dir (a local mirror: one subfolder per dataset, original formats) or one --<task>_path per task.
Writes evaluation_results/<run>/: results.json, <task>.jsonl, smoke.jsonl, report.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import parse_config, run_main  # noqa: E402
from utils.eval.evaluate import EvalConfig, evaluate_model  # noqa: E402

HELP = {
    "tasks": "any of wikitext hellaswag arc_easy arc_challenge boolq demo_mc smoke",
    "data_dir": "local mirror folder (one subfolder per dataset, original formats); default: $LUMI_DATA_DIR, else the hub",
    "limit": "the first N items of each task (lm-eval's --limit)",
    "batch_size": "sequences per forward pass when scoring; lower it if you run out of memory",
    "fast_mode": "200 items per task and the five quick prompts",
    "detailed_output": "every smoke response and its score in report.md",
    "template": "auto = the chat template for SFT/DPO models; chatml or none to force",
}


def main() -> None:
    evaluate_model(parse_config(EvalConfig, __doc__, help_texts=HELP))


if __name__ == "__main__":
    sys.exit(run_main(main))
