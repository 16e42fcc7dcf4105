"""Stage 04: direct preference optimisation with TRL's DPOTrainer on a PEFT adapter.

With a new LoRA adapter the reference model is the policy with its adapter disabled: no second copy of the model
is held (`trainer.ref_model is None`). With --full, a frozen copy is the reference (the only way to keep one).
Prompts are rendered with the shared template (generation prompt included); each answer is the text plus the
template's closing marker, and TRL appends EOS.

The gain is preference accuracy on held-out pairs before and after training: the policy ranks chosen above rejected
when the summed log-probability of the chosen answer (with its closing marker) after the prompt is higher than the
rejected one's (utils.lm.scoring.LoglikelihoodScorer, lm-evaluation-harness conventions). The demo pairs have equal
word counts, so length does not decide.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.finetune.config import FinetuneConfig
from utils.finetune.datasets import PreferencePair, load_preference_pairs
from utils.finetune.gain import Measurement, held_out_set, validation_set
from utils.finetune.models import TrainingModel, peft_config_for
from utils.finetune.runner import StageData, StageSpec, run_finetune
from utils.finetune.tokenization import LengthReport, check_dpo_lengths, dpo_rows
from utils.finetune.trainer import trainer_arguments
from utils.lm.scoring import LoglikelihoodScorer
from utils.lm.templates import PromptTemplate

log = logging.getLogger(__name__)

GAIN_METRIC = "preference_accuracy"
GAIN_RULE = "summed log-prob of chosen (answer + closing marker) after the prompt exceeds the rejected one's"
REWARD_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
EARLY_STOPPING_METRIC = "rewards/accuracies"


@dataclass
class DPOStageConfig(FinetuneConfig):
    """Stage 04 settings: every FinetuneConfig field plus the ones below."""

    model_path: str = "checkpoints/sft/demo/merged"
    output_dir: str = "checkpoints/dpo"
    learning_rate: float = 5e-7
    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    # One weight per loss_type (TRL's loss_weights); None weighs each 1.0. ["sigmoid", "sft"] is RPO: DPO plus the
    # NLL of the chosen answer, which keeps DPO from lowering the likelihood of both answers.
    loss_weights: list[float] | None = None
    score_batch_size: int = 16  # pairs scored per forward pass for the preference accuracy

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} "
                             f"loss_type entries ({', '.join(self.loss_type)}); give one weight per loss type")


def prepare_dpo_data(config: DPOStageConfig, tokenizer: Any, template: PromptTemplate, max_length: int) -> StageData:
    pairs, data_report = load_preference_pairs(config.dataset_path, config.max_samples)
    pairs, held_out, source = held_out_set(config, pairs, lambda path: load_preference_pairs(path)[0],
                                           lambda _: True)
    train, validation = validation_set(config, pairs)
    train_rows, val_rows = dpo_rows(train, template), dpo_rows(validation, template)
    lengths: LengthReport = check_dpo_lengths(train, train_rows, tokenizer, max_length, config.strict,
                                              config.dataset_path)
    log.info("DPO data: %d train, %d validation pairs; %d held-out pairs for preference accuracy (%s)",
             len(train_rows), len(val_rows), len(held_out), source or "none")
    report = {**data_report.as_dict(), "train": len(train_rows), "validation": len(val_rows),
              "lengths": lengths.as_dict(), "held_out": len(held_out), "held_out_source": source}
    return StageData(train_rows, val_rows, held_out, report)


def preference_accuracy(model: Any, tokenizer: Any, template: PromptTemplate, pairs: list[PreferencePair],
                        config: DPOStageConfig) -> Measurement:
    """The share of pairs whose chosen answer out-scores the rejected one, and per-pair log-likelihoods."""
    scorer = LoglikelihoodScorer(model, tokenizer, config.score_batch_size)
    requests = []
    for pair in pairs:
        prompt = template.render(pair.prompt, add_generation_prompt=True)
        requests += [(prompt, pair.chosen + template.assistant_close),
                     (prompt, pair.rejected + template.assistant_close)]
    scores = scorer.score(requests)
    records = [{"index": pair.index, "ll_chosen": chosen[0], "ll_rejected": rejected[0],
                "win": chosen[0] > rejected[0]} for pair, chosen, rejected in zip(pairs, scores[0::2], scores[1::2])]
    return Measurement({GAIN_METRIC: sum(r["win"] for r in records) / max(len(records), 1)}, records)


def build_dpo_trainer(config: DPOStageConfig, loaded: TrainingModel, data: StageData, max_length: int,
                      run_dir: Path, callbacks: list[Any]) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    has_eval = bool(data.validation)
    args = DPOConfig(**trainer_arguments(config, run_dir, EARLY_STOPPING_METRIC, greater_is_better=True,
                                         has_eval=has_eval),
                     beta=config.beta, loss_type=list(config.loss_type), loss_weights=config.loss_weights,
                     max_length=max_length)
    # Full fine-tuning needs a frozen copy as the reference; with a LoRA adapter the reference is the same model
    # with the adapter disabled, so none is passed (an input adapter gets a frozen adapter copy from TRL).
    reference = _frozen_copy(loaded.model) if config.full else None
    trainer = DPOTrainer(model=loaded.model, ref_model=reference, args=args,
                         train_dataset=Dataset.from_list(data.train),
                         eval_dataset=Dataset.from_list(data.validation) if has_eval else None,
                         processing_class=loaded.tokenizer, peft_config=peft_config_for(config, loaded),
                         callbacks=callbacks)
    if not config.full and trainer.ref_model is not None:
        raise AssertionError("DPO with an adapter must not hold a reference model copy")
    log.info("reference model: %s", "a frozen copy (full fine-tuning)" if config.full
             else "the policy with its adapter disabled (no second copy in memory)")
    return trainer


def _frozen_copy(model: Any) -> Any:
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def reward_summary(config: DPOStageConfig, trainer: Any, final_eval: dict[str, float]) -> dict[str, Any]:
    """meta.json's DPO fields: the last training log's loss and rewards/*, the final validation ones."""
    train_logs = [r for r in trainer.state.log_history if "rewards/accuracies" in r]
    last = train_logs[-1] if train_logs else {}
    rewards = {"train": {k: last.get(k) for k in REWARD_KEYS},
               "validation": {k: final_eval.get("val_loss" if k == "loss" else k) for k in REWARD_KEYS}}
    for split, values in rewards.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None)
        log.info("DPO final %s: %s", split, shown or "n/a")
    return {"beta": config.beta, "rewards": rewards,
            "reference": "frozen copy" if config.full else "the policy with its adapter disabled"}


DPO_STAGE = StageSpec(name="dpo", gain_metric=GAIN_METRIC, gain_rule=GAIN_RULE, prepare=prepare_dpo_data,
                      measure=preference_accuracy, build_trainer=build_dpo_trainer, extra_meta=reward_summary)


def run_dpo(config: DPOStageConfig) -> Path:
    """Preference-tune, export adapter/ and merged/, measure preference accuracy before and after."""
    run_dir = run_finetune(DPO_STAGE, config)
    log.info("next: python scripts/05_evaluate.py --model_path %s", run_dir / "merged")
    return run_dir
