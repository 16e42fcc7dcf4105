#!/usr/bin/env python
"""Stage 04: direct preference optimisation with TRL's DPOTrainer on a LoRA adapter (reference = adapter disabled).

    python scripts/04_dpo.py --model_path ./checkpoints/sft/demo/merged \
        --dataset_path ./data/processed/demo_tiny/demo/dpo_train.json --config_path config/dpo.json --run_name demo
    python scripts/04_dpo.py --model_path <sft merged/> --dataset_path ./data/dpo_dataset.json --beta 0.1 \
        --learning_rate 5e-7 --batch_size 2 --gradient_accumulation_steps 8 --num_train_epochs 1

Data: a JSON list or JSONL of {"prompt", "chosen", "rejected"}; hh-rlhf dialogues {"chosen", "rejected"} (split at
the last "\\n\\nAssistant:"; identical pairs and pairs whose prompts differ are dropped and counted); UltraFeedback
binarized rows; or a Hugging Face id (Anthropic/hh-rlhf, HuggingFaceH4/ultrafeedback_binarized; needs network).
Writes <output_dir>/<run_name>/: adapter/, merged/, checkpoint-N/, metrics.jsonl (loss, rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins), loss.png, gain.jsonl, config.resolved.json, meta.json
(with the before/after preference accuracy).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import parse_config, run_main  # noqa: E402
from utils.finetune.config import FINETUNE_HELP  # noqa: E402
from utils.finetune.dpo import DPOStageConfig, run_dpo  # noqa: E402

HELP = {
    **FINETUNE_HELP,
    "model_path": "HF model directory (an SFT merged/), or an SFT adapter/ to keep training",
    "eval_dataset_path": "held-out pairs for the preference-accuracy gain (default: the _eval sibling)",
    "beta": "DPO temperature: how far the policy may move from the reference",
    "prompt_template": "chatml, instruct or chat (use the one the SFT model was trained with)",
    "early_stopping_patience": "evaluations without a better validation rewards/accuracies before stopping",
    "strict": "fail on a pair longer than max_length instead of truncating it",
}


def main() -> None:
    run_dpo(parse_config(DPOStageConfig, __doc__, help_texts=HELP))


if __name__ == "__main__":
    sys.exit(run_main(main))
