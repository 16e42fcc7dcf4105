"""The settings stages 03 (SFT) and 04 (DPO) share: FinetuneConfig, each field a --flag (config file < flags), and
the --help texts of the fields whose meaning is the same in both stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from utils.lm.templates import get_template

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --help texts of the FinetuneConfig fields whose meaning is the same in stages 03 and 04.
FINETUNE_HELP = {
    "dataset_path": "local .json/.jsonl(.gz) file or directory, or a Hugging Face dataset id",
    "max_time": "stop training after this many seconds and export what was learned",
    "resume_from_checkpoint": "auto (newest complete checkpoint-N of --run_name) or a checkpoint-N path",
    "overwrite": "delete an existing run directory of the same --run_name first",
}


@dataclass
class FinetuneConfig:
    """Settings shared by SFT and DPO; each is a --flag (config file < flags)."""

    model_path: str = "checkpoints/pretrain/tiny/final"
    dataset_path: str = ""
    eval_dataset_path: str | None = None  # held-out set for the before/after gain (default: <name>_eval sibling)
    output_dir: str = "checkpoints/sft"
    run_name: str | None = None  # default: <template>-<lora|full>-<YYYYmmdd-HHMMSS>
    prompt_template: str = "chatml"
    full: bool = False  # full fine-tuning instead of LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int | None = None  # overrides num_train_epochs
    max_time: float | None = None  # seconds of training; stops cleanly and exports what it has
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None  # default: the model's context
    strict: bool = False  # a sequence longer than max_length is an error instead of being truncated
    max_samples: int | None = None  # use the first N training items
    validation_split: float = 0.05  # fraction of the training items held out for eval loss
    gain_eval_size: int = 200  # held-out items for the before/after measurement (0 = skip it)
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping (None = off)
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 100
    save_total_limit: int = 2
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 42
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    resume_from_checkpoint: str | None = None  # auto (newest complete checkpoint-N of the run) or a path
    overwrite: bool = False  # delete an existing run directory of the same name first

    def __post_init__(self) -> None:
        if not self.dataset_path:
            raise ValueError("--dataset_path is required (a .json/.jsonl file, a directory, or a hub dataset id)")
        get_template(self.prompt_template)  # an unknown name is a ConfigError listing the known templates
        for name in ("lora_r", "batch_size", "gradient_accumulation_steps", "logging_steps", "eval_steps",
                     "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.early_stopping_patience is not None and self.validation_split == 0:
            raise ValueError("early_stopping_patience needs a validation split: set validation_split > 0")
