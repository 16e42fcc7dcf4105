"""Stage 03: supervised fine-tuning with TRL's SFTTrainer (LoRA through PEFT, or --full), loss on answers only.

Data are tokenized here (utils.finetune.tokenization.tokenize_sft): every context span exactly as the prompt is
tokenized at inference, every answer with its closing marker trained, EOS appended and trained. TRL receives
{input_ids, completion_mask} and builds labels = -100 outside the completion, truncating to max_length.

The gain is measured on held-out items before and after training, on any data: the response-token loss (mean
negative log-likelihood in nats of the reference answer's tokens, EOS included, given the prompt). Where the items
carry a short gold `answer` (the demo's questions), also the answer exact match: greedy generation from the
template's generation prompt, cut at the first stop string of the template or EOS (or after gain_max_new_tokens
tokens); a hit is the gold span occurring verbatim (case-sensitive) in that response. The exact response match
(the whole response equal to the reference sentence) is reported beside it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.finetune.config import FinetuneConfig
from utils.finetune.datasets import SFTExample, load_sft_examples
from utils.finetune.gain import Measurement, held_out_set, validation_set
from utils.finetune.models import TrainingModel, peft_config_for
from utils.finetune.runner import StageData, StageSpec, run_finetune
from utils.finetune.tokenization import tokenize_sft
from utils.finetune.trainer import trainer_arguments
from utils.lm.generation import GenerationParams, generate_ids
from utils.lm.templates import PromptTemplate

log = logging.getLogger(__name__)

GAIN_METRIC = "answer_exact_match"  # where the held-out items have answers; else RESPONSE_LOSS
RESPONSE_LOSS = "response_loss"
GAIN_RULE = ("answer_exact_match: greedy response up to the template's stop string or EOS contains the gold answer "
             "span verbatim (case-sensitive); response_loss: mean NLL (nats) of the reference response tokens")


@dataclass
class SFTStageConfig(FinetuneConfig):
    """Stage 03 settings: every FinetuneConfig field plus the ones below."""

    gain_max_new_tokens: int = 32


def _has_answer(example: SFTExample) -> bool:
    return bool(example.answer)


def _any_item(example: SFTExample) -> bool:
    return True


def prepare_sft_data(config: SFTStageConfig, tokenizer: Any, template: PromptTemplate, max_length: int) -> StageData:
    examples, data_report = load_sft_examples(config.dataset_path, config.max_samples)
    examples, held_out, source = held_out_set(config, examples, lambda path: load_sft_examples(path)[0], _any_item)
    train, validation = validation_set(config, examples)
    train_rows, lengths = tokenize_sft(train, tokenizer, template, max_length, config.strict, config.dataset_path)
    val_rows, val_lengths = tokenize_sft(validation, tokenizer, template, max_length, config.strict,
                                         f"{config.dataset_path} (validation)")
    log.info("SFT data: %d train, %d validation conversations; %d held-out questions for exact-match (%s)",
             len(train_rows), len(val_rows), len(held_out), source or "none")
    report = {**data_report.as_dict(), "train": len(train_rows), "validation": len(val_rows),
              "lengths": lengths.as_dict(), "validation_lengths": val_lengths.as_dict(),
              "held_out": len(held_out), "held_out_source": source}
    return StageData(train_rows, val_rows, held_out, report)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """The response up to the first stop string (exclusive)."""
    cuts = [text.find(stop) for stop in stops if stop and stop in text]
    return text[:min(cuts)] if cuts else text


def held_out_gain(model: Any, tokenizer: Any, template: PromptTemplate, items: list[SFTExample],
                  config: SFTStageConfig) -> Measurement:
    """Response-token loss over every held-out item; answer-span and whole-response exact match over those with a
    gold answer. The rules are in the module docstring."""
    max_length = config.max_length or model.config.max_position_embeddings
    rows, _ = tokenize_sft(items, tokenizer, template, max_length, False, "held-out items")
    losses = [_response_nll(model, row, max_length) for row in rows]
    records = [{"index": item.index, "response_nll": nll, "response_tokens": count}
               for item, (nll, count) in zip(items, losses, strict=True)]
    scores = {RESPONSE_LOSS: sum(nll for nll, _ in losses) / max(sum(count for _, count in losses), 1)}
    answered = [i for i, item in enumerate(items) if item.answer]
    if answered:
        params = GenerationParams(max_new_tokens=config.gain_max_new_tokens, temperature=0.0)
        stops = (*template.stop, tokenizer.eos_token)
        with kv_cache(model):
            for i in answered:
                records[i].update(_answer_record(model, tokenizer, template, items[i], params, stops))
        hits = [records[i] for i in answered]
        scores = {GAIN_METRIC: sum(r["hit"] for r in hits) / len(hits),
                  "response_exact_match": sum(r["exact"] for r in hits) / len(hits), **scores}
    return Measurement(scores, records)


def _response_nll(model: Any, row: dict[str, list[int]], max_length: int) -> tuple[float, int]:
    """(summed NLL of the trained tokens, their count) for one tokenized row, truncated as the trainer does."""
    import torch

    ids = torch.tensor(row["input_ids"][:max_length], device=model.device)
    mask = torch.tensor(row["completion_mask"][:max_length], device=model.device)[1:].bool()
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    return float(nll[mask].sum()), int(mask.sum())


@contextlib.contextmanager
def kv_cache(model: Any) -> Iterator[None]:
    """Generate with the KV cache: pretraining exports use_cache=False (training needs none), which would make
    every generated token recompute the whole sequence (about twice as slow here)."""
    config = model.generation_config
    previous = config.use_cache
    config.use_cache = True
    try:
        yield
    finally:
        config.use_cache = previous


def _answer_record(model: Any, tokenizer: Any, template: PromptTemplate, item: SFTExample,
                   params: GenerationParams, stops: tuple[str, ...]) -> dict[str, Any]:
    prompt = template.render(item.messages[:-1], add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new = generate_ids(model, ids, params, tokenizer.eos_token_id, tokenizer.pad_token_id)
    response = cut_at_stop(tokenizer.decode(new, skip_special_tokens=False), stops).strip()
    return {"index": item.index, "answer": item.answer, "response": response, "hit": item.answer in response,
            "exact": response == item.messages[-1]["content"].strip()}


def build_sft_trainer(config: SFTStageConfig, loaded: TrainingModel, data: StageData, max_length: int,
                      run_dir: Path, callbacks: list[Any]) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    has_eval = bool(data.validation)
    args = SFTConfig(**trainer_arguments(config, run_dir, "eval_loss", greater_is_better=False, has_eval=has_eval),
                     max_length=max_length, completion_only_loss=True, packing=False)
    return SFTTrainer(model=loaded.model, args=args, train_dataset=Dataset.from_list(data.train),
                      eval_dataset=Dataset.from_list(data.validation) if has_eval else None,
                      processing_class=loaded.tokenizer, peft_config=peft_config_for(config, loaded),
                      callbacks=callbacks)


SFT_STAGE = StageSpec(name="sft", gain_metric=GAIN_METRIC, gain_rule=GAIN_RULE, prepare=prepare_sft_data,
                      measure=held_out_gain, build_trainer=build_sft_trainer,
                      extra_meta=lambda config, trainer, final_eval: {})


def run_sft(config: SFTStageConfig) -> Path:
    """Fine-tune, export adapter/ and merged/, measure exact-match before and after; returns the run directory."""
    run_dir = run_finetune(SFT_STAGE, config)
    log.info("next: python scripts/04_dpo.py --model_path %s   or   python scripts/05_evaluate.py --model_path %s",
             run_dir / "merged", run_dir / "merged")
    return run_dir
