"""Stage 02: pretrain a LlamaForCausalLM from a preset on stage 01's shards (the shared loop does the rest).

Precedence: PretrainConfig defaults < the preset's "training" section < CLI flags. Outputs in the run
directory: step-N/ checkpoints, latest, best/ and final/ (Hugging Face format), metrics.jsonl, samples.jsonl,
loss.png, config.resolved.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.core.artifacts import write_json
from utils.core.config import merge_config
from utils.core.distributed import refuse_unsupported_distribution
from utils.core.environment import choose_attention, resolve_precision
from utils.core.errors import ConfigError
from utils.lm.export import export_hf_model
from utils.lm.generation import GenerationParams, generate_ids
from utils.lm.metrics import flops_per_token
from utils.lm.model import (
    ModelConfig,
    ModelPreset,
    build_model,
    count_parameters,
    load_preset,
    zero_output_projections,
)
from utils.lm.tokenizer import PAD_ID
from utils.train.checkpoint import TrainerState, complete_checkpoints, resolve_resume_path
from utils.train.loop import Evaluator, LoopConfig, RunContext, TrainingLoop, set_determinism
from utils.train.windows import DatasetInfo, SampleOrder, TokenWindows, load_dataset_info

log = logging.getLogger(__name__)

SAMPLE_PROMPT_TOKENS = 8
SAMPLE_SETTINGS = {"greedy": GenerationParams(temperature=0.0),
                   "top_p": GenerationParams(temperature=0.8, top_p=0.95, seed=1234)}


@dataclass
class PretrainConfig(LoopConfig):
    """Stage 02 settings (every LoopConfig field plus the ones below); each is a --flag."""

    data_path: str = "data/processed/demo_tiny"
    output_dir: str | None = None  # default checkpoints/pretrain/<preset name>
    max_length: int | None = None  # default min(dataset max_length, model context)
    vocab_size: int | None = None  # must equal the dataset tokenizer's when given
    gradient_checkpointing: bool = False
    # Each block's attention output and MLP down projection start at zero, so every block starts as the identity
    # (the modded-nanogpt initialisation); the other weights keep Llama's normal(0, 0.02). On by default: it
    # measured better at equal tokens (make bench-recipe; README "Training recipe").
    zero_init_projections: bool = True
    flash_attn: bool = True
    attention_dropout: float | None = None
    eval_batches: int = 20
    num_samples: int = 2
    sample_max_new_tokens: int = 48
    eval_hellaswag_steps: int = 0  # score a multiple-choice slice every N steps (0 = off)
    eval_hellaswag_path: str | None = None  # HellaSwag-format file; default: the dataset's demo MC set
    eval_hellaswag_limit: int = 100


def load_pretrain_config(preset_path: str, cli: dict[str, Any]) -> tuple[ModelPreset, PretrainConfig]:
    preset = load_preset(preset_path)
    config = merge_config(PretrainConfig, [(preset.training, f"{preset_path} (training)"), (cli, "command line")])
    config.validate()
    return preset, config


@dataclass
class PretrainData:
    """Step k's micro-batches: global sample indices -> windows, each process taking its own slice."""

    windows: TokenWindows
    order: SampleOrder
    batch_size: int
    process_index: int
    num_processes: int

    def micro_batches(self, samples_seen: int, count: int) -> list[dict[str, torch.Tensor]]:
        batches = []
        per_micro = self.batch_size * self.num_processes
        for micro in range(count):
            start = samples_seen + micro * per_micro + self.process_index * self.batch_size
            tokens = self.windows.batch(self.order.window_indices(start, self.batch_size))
            batches.append({"input_ids": tokens[:, :-1].contiguous(), "shift_labels": tokens[:, 1:].contiguous()})
        return batches


def resolve_model(preset: ModelPreset, config: PretrainConfig, info: DatasetInfo) -> tuple[ModelConfig, int]:
    """The preset's shape with the dataset's vocabulary; the sequence length checked against the context."""
    if config.vocab_size is not None and config.vocab_size != info.vocab_size:
        raise ConfigError(f"--vocab_size {config.vocab_size} conflicts with the tokenizer of {info.path} "
                          f"(vocab {info.vocab_size}); drop --vocab_size or prepare the data with that vocabulary")
    overrides: dict[str, Any] = {"vocab_size": info.vocab_size}
    if config.attention_dropout is not None:
        overrides["attention_dropout"] = config.attention_dropout
    model = dataclasses.replace(preset.model, **overrides)
    max_length = config.max_length or min(info.max_length, model.max_position_embeddings)
    if max_length > model.max_position_embeddings:
        raise ConfigError(f"--max_length {max_length} exceeds the model's context of {model.max_position_embeddings} "
                          f"positions (max_position_embeddings in {preset.name}); lower --max_length")
    return model, max_length


def _make_evaluator(config: PretrainConfig, accelerator: Any, val: TokenWindows, info: DatasetInfo,
                    run_dir: Path) -> Evaluator:
    # The first eval_batches global batches of the validation split, whatever the number of processes: each
    # process scores every num_processes-th window and the sums are reduced, so 2 x batch 8 sees what 1 x 16 sees.
    count = min(val.num_windows, config.eval_batches * config.batch_size * accelerator.num_processes)
    mine = np.arange(accelerator.process_index, count, accelerator.num_processes)
    batches = [val.batch(mine[i:i + config.batch_size]) for i in range(0, len(mine), config.batch_size)]

    @torch.no_grad()
    def evaluate(model: Any) -> dict[str, float]:
        """Mean loss over the fixed validation windows; `model` is the loop's unwrapped module (LM + fused loss),
        called under the training autocast by the loop."""
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # summed loss, target tokens
        for batch in batches:
            batch = batch.to(accelerator.device)
            sums[0] += model(batch[:, :-1], batch[:, 1:].contiguous(), normalizer=1).double()
            sums[1] += batch[:, 1:].numel()
        total, tokens = accelerator.reduce(sums, reduction="sum").tolist()
        loss = total / tokens
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    prompts = _sample_prompts(val, info, config.num_samples)

    def samples(model: Any, step: int) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(info.tokenizer_dir)
        records = []
        for prompt in prompts:
            for name, params in SAMPLE_SETTINGS.items():
                params = dataclasses.replace(params, max_new_tokens=config.sample_max_new_tokens)
                ids = generate_ids(model, prompt, params, info.eos_id, tokenizer.pad_token_id)
                text = tokenizer.decode(prompt + ids, skip_special_tokens=True)
                records.append({"step": step, "mode": name, "text": text})
                log.info("sample (%s): %s", name, text.replace("\n", " ")[:300])
        with (run_dir / "samples.jsonl").open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)

    return Evaluator(evaluate=evaluate, samples=samples if prompts else None,
                     benchmark=_make_mc_benchmark(config, info) if config.eval_hellaswag_steps else None,
                     benchmark_steps=config.eval_hellaswag_steps)


def _make_mc_benchmark(config: PretrainConfig, info: DatasetInfo) -> Callable[[Any], dict[str, float]]:
    """The stage 05 scorer on a fixed slice of a HellaSwag-format file, for accuracy curves during training."""
    from transformers import AutoTokenizer

    from utils.eval.tasks import load_task
    from utils.lm.scoring import LoglikelihoodScorer, aggregate, score_multiple_choice

    path = Path(config.eval_hellaswag_path) if config.eval_hellaswag_path else info.path / "demo" / "mc_validation.jsonl"
    if not path.is_file():
        raise ConfigError(f"--eval_hellaswag_steps needs a HellaSwag-format file: {path} does not exist; pass "
                          f"--eval_hellaswag_path (a HellaSwag-format .jsonl, e.g. from the Rowan/hellaswag "
                          f"validation split)")
    items = load_task("hellaswag", path, config.eval_hellaswag_limit)
    tokenizer = AutoTokenizer.from_pretrained(info.tokenizer_dir)

    @torch.no_grad()
    def benchmark(model: Any) -> dict[str, float]:
        model.eval()
        scorer = LoglikelihoodScorer(model, tokenizer, batch_size=config.batch_size)
        metrics = aggregate(score_multiple_choice(items, scorer))
        return {"hellaswag_acc": metrics["acc"], "hellaswag_acc_norm": metrics["acc_norm"]}

    return benchmark


def _sample_prompts(val: TokenWindows, info: DatasetInfo, count: int) -> list[list[int]]:
    """The first tokens of validation documents: prompts that fit whatever corpus the model learns."""
    tokens = np.asarray(val.shards[0])
    starts = np.flatnonzero(tokens == info.bos_id)[:count]
    return [tokens[s:s + SAMPLE_PROMPT_TOKENS].astype(np.int64).tolist() for s in starts]


def _check_output_dir(run_dir: Path, resume: str | None) -> None:
    """A fresh run never writes into a run directory that already holds checkpoints."""
    if resume is None and complete_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints. Continue it with --resume_from_checkpoint auto, "
                          f"or start a new run with another --output_dir.")


def pretrain(preset_path: str, config: PretrainConfig, preset: ModelPreset) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    refuse_unsupported_distribution()
    info = load_dataset_info(Path(config.data_path))
    model_config, max_length = resolve_model(preset, config, info)
    run_dir = Path(config.output_dir or f"checkpoints/pretrain/{preset.name}")
    _check_output_dir(run_dir, config.resume_from_checkpoint)
    resume_path = resolve_resume_path(run_dir, config.resume_from_checkpoint)
    set_determinism(config.deterministic)
    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=resolve_precision(config.mixed_precision, "cpu" if cpu else "cuda"),
                              cpu=cpu)
    set_seed(config.seed)
    attention = choose_attention(no_flash_attn=not config.flash_attn)
    model = build_model(model_config, attn_implementation=attention, bos_token_id=info.bos_id,
                        eos_token_id=info.eos_id, pad_token_id=PAD_ID, use_cache=False)
    if config.zero_init_projections:
        zero_output_projections(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    count = count_parameters(model_config)
    log.info("model %s: %s; attention %s; precision %s; context %d", preset.name, count, attention,
             accelerator.mixed_precision, max_length)
    train = TokenWindows(info, "train", max_length)
    val = TokenWindows(info, "val", max_length)
    log.info("data %s: %s train windows of %d tokens (%s tokens), %d validation windows", info.path,
             f"{train.num_windows:,}", max_length, f"{info.train_tokens:,}", val.num_windows)
    resolved = {"preset": preset_path, "model": dataclasses.asdict(model_config), "max_length": max_length,
                "attention": attention, **dataclasses.asdict(config)}
    meta = {"stage": "pretrain", "dataset": str(info.path), "tokenizer_sha256": info.tokenizer_sha256,
            "optimizer": config.optimizer,
            "params_total": count.total, "params_non_embedding": count.non_embedding}
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.resolved.json", resolved)

    def export(model: Any, state: TrainerState, name: str) -> Path:
        return export_hf_model(model, info.tokenizer_dir, run_dir / name, resolved,
                               {**meta, **dataclasses.asdict(state)})

    context = RunContext(run_dir=run_dir, resolved_config=resolved, model_shape=model_config.shape(),
                         meta=meta, tokens_per_sample=max_length,
                         flops_per_token=flops_per_token(model_config, max_length), export_final=export,
                         run_name=f"pretrain-{preset.name}")
    data = PretrainData(train, SampleOrder(train.num_windows, config.seed), config.batch_size,
                        accelerator.process_index, accelerator.num_processes)
    loop = TrainingLoop(accelerator, model, config, data, _make_evaluator(config, accelerator, val, info, run_dir),
                        context)
    if resume_path is not None:
        _check_same_data(resume_path, info)
        loop.resume_from(resume_path)
    final = loop.run()
    _summarize(run_dir, final, loop)
    return final


def _check_same_data(path: Path, info: DatasetInfo) -> None:
    from utils.core.artifacts import read_json
    from utils.core.errors import CheckpointError

    sha = read_json(path / "meta.json").get("tokenizer_sha256")
    if sha != info.tokenizer_sha256:
        raise CheckpointError(f"{path} was trained with tokenizer {str(sha)[:12]}, but {info.path} uses "
                              f"{info.tokenizer_sha256[:12]} (vocab mismatch): resume with the original --data_path")


def _summarize(run_dir: Path, final: Path, loop: TrainingLoop) -> None:
    state = loop.state
    log.info("trained %d steps, %s tokens in %.0f s; best validation loss %s", state.step,
             f"{state.tokens_seen:,}", state.elapsed_seconds,
             f"{state.best_val_loss:.4f}" if state.best_val_loss is not None else "n/a")
    log.info("outputs: %s (HF model), %s, %s, %s", final, run_dir / "best", run_dir / "metrics.jsonl",
             run_dir / "loss.png")
    log.info("next: python scripts/03_sft.py --model_path %s   or   python scripts/05_evaluate.py --model_path %s",
             final, final)
