#!/usr/bin/env python
"""Stage 02: pretrain a LLaMA-style model from a preset on stage 01's token shards.

    python scripts/02_pretrain.py --config_path config/tiny.json --data_path data/processed/demo_tiny
    python scripts/02_pretrain.py --config_path config/base.json --data_path data/processed/openwebtext \\
        --batch_size 16 --gradient_accumulation_steps 4 --learning_rate 6e-4 --compile
    python scripts/02_pretrain.py --config_path config/tiny.json --resume_from_checkpoint auto
    accelerate launch --num_processes 2 scripts/02_pretrain.py --config_path config/small.json ...

Settings: PretrainConfig defaults < the preset's "training" section < these flags. Outputs go to
checkpoints/pretrain/<preset>/ (override with --output_dir): step-N/ checkpoints, best/ and final/ in Hugging Face
format, metrics.jsonl, samples.jsonl, loss.png.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import DeprecatedAlias, make_parser, run_main  # noqa: E402
from utils.train.pretrain import PretrainConfig, load_pretrain_config, pretrain  # noqa: E402

HELP = {
    "data_path": "a prepared dataset directory from stage 01",
    "batch_size": "sequences per micro-batch per device; lower it if you run out of memory",
    "gradient_accumulation_steps": "micro-batches per optimizer step (effective batch = batch_size x this x GPUs)",
    "max_length": "tokens per sequence; must not exceed the preset's max_position_embeddings",
    "max_time": "stop cleanly after this many seconds (checkpoint + final model)",
    "resume_from_checkpoint": "'auto' for the newest complete checkpoint of --output_dir, or a step-N directory",
    "gradient_checkpointing": "recompute activations in the backward pass: ~30%% slower, far less memory",
    "flash_attn": "use FlashAttention-2 when installed and supported (--no_flash_attn forces SDPA)",
    "deterministic": "deterministic kernels: exact resume and reruns (--no_deterministic is faster on GPU)",
    "compile": "torch.compile the model (first step takes 30-60 s)",
    "mixed_precision": "auto = bf16 where supported, else fp16 with a grad scaler on GPU",
    "attention_dropout": "override the preset's attention dropout",
    "optimizer": "adamw for every weight, or muon (torch.optim.Muon) for the hidden matrices + AdamW for the rest",
    "learning_rate": "peak learning rate of AdamW (with --optimizer muon: of the embedding and norms)",
    "muon_learning_rate": "peak learning rate of Muon (same scale as AdamW's: adjust_lr_fn match_rms_adamw)",
    "muon_weight_decay": "decoupled weight decay of the Muon-trained matrices",
    "lr_schedule": "after the warmup: wsd (hold the peak, then the last 20%% of the steps decay linearly to zero) "
                   "or cosine to 10%% of the peak",
    "zero_init_projections": "start every block's attention output and MLP down projection at zero "
                             "(--no_zero_init_projections: Llama's normal init for them too)",
}


def main() -> None:
    parser = make_parser(PretrainConfig, __doc__, HELP)
    parser.add_argument("--config_path", default="config/tiny.json", help="model preset JSON (config/tiny.json, ...)")
    parser.add_argument("--config", dest="config_path", action=DeprecatedAlias, replacement="--config_path")
    args = vars(parser.parse_args())
    preset_path = args.pop("config_path")
    preset, config = load_pretrain_config(preset_path, args)
    pretrain(preset_path, config, preset)


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(run_main(main))
