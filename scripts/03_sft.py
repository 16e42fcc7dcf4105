#!/usr/bin/env python
"""Stage 03: supervised fine-tuning (LoRA through PEFT, or --full) with TRL's SFTTrainer, loss on answers only.

    python scripts/03_sft.py --model_path ./checkpoints/pretrain/tiny/final \
        --dataset_path ./data/processed/demo_tiny/demo/sft_train.json --prompt_template chatml \
        --output_dir ./checkpoints/sft --config_path config/sft.json --run_name demo
    python scripts/03_sft.py ... --full                                  # full fine-tuning instead of LoRA
    python scripts/03_sft.py ... --run_name demo --resume_from_checkpoint auto

Data: a JSON list or JSONL of {"prompt", "response"}, Alpaca {"instruction", "input", "output"}, Dolly,
{"messages": [...]} conversations, OASST message rows, or a Hugging Face id (tatsu-lab/alpaca, OpenAssistant/oasst1,
databricks/databricks-dolly-15k; needs network). Writes <output_dir>/<run_name>/: adapter/, merged/, checkpoint-N/,
metrics.jsonl, loss.png, gain.jsonl, config.resolved.json, meta.json (with the before/after exact-match gain).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import parse_config, run_main  # noqa: E402
from utils.finetune.config import FINETUNE_HELP  # noqa: E402
from utils.finetune.sft import SFTStageConfig, run_sft  # noqa: E402

HELP = {
    **FINETUNE_HELP,
    "model_path": "HF model directory (pretraining final/ or best/), or an SFT adapter/ to train further",
    "eval_dataset_path": "held-out items with gold answers for the exact-match gain (default: the _eval sibling)",
    "prompt_template": "chatml, instruct or chat",
    "full": "full fine-tuning instead of a LoRA adapter",
    "strict": "fail on a sequence longer than max_length instead of truncating it",
}


def main() -> None:
    run_sft(parse_config(SFTStageConfig, __doc__, help_texts=HELP))


if __name__ == "__main__":
    sys.exit(run_main(main))
