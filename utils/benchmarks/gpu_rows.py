"""The rows of `make gpu-check` (utils/benchmarks/gpu_check.py runs them in order, and says what each measures):
what every row is given (Context, CheckSizes), and the environment, data and pretraining checks (the rows of
stages 03-06 are utils/benchmarks/gpu_stage_rows.py). A check takes the Context and returns its
figures and a one-line summary, appends its targets to ctx.checks, or raises NotRun saying why it cannot run here.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.benchmarks.common import TargetCheck
from utils.core.artifacts import REPO_ROOT, read_json

MIB = 2**20
RTX_4090_USABLE_GIB = 22.0  # of a 4090's 24 GiB, what a training run may reserve (the rest: context, display)
FUSED_LOSS_REL_TOLERANCE = 1e-3  # loss of ours vs HF's, bf16 autocast
FUSED_GRAD_REL_TOLERANCE = 2e-2  # largest gradient difference over the largest gradient, bf16 autocast
FUSED_LOSS_REPEATS = 3
DRY_RUN_PRESET = {"name": "micro", "label": "micro-0.1M", "params_millions": 0.1,
                  "description": "2 layers x 64: gpu-check's dry run",
                  "model": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "max_position_embeddings": 512}}


class NotRun(Exception):
    """A row that cannot run here (no flash-attn, a failed prerequisite); its message says why."""


@dataclass(frozen=True)
class CheckSizes:
    """How big each row is: the real check (gpu_check.GPU_SIZES) or the dry run's plumbing test (DRY_RUN_SIZES)."""

    demo_stories: int
    vocab_size: int
    data_max_length: int
    tiny_preset: str  # a preset name, or "dry-run" for DRY_RUN_PRESET (also for base_preset)
    tiny_batch: int
    tiny_max_length: int
    tiny_steps: int
    tiny_every: int  # evaluation and checkpoint cadence; the resumed run starts at the first checkpoint
    mc_limit: int
    sample_tokens: int  # per generated sample at each evaluation
    base_preset: str
    base_batch: int
    base_max_length: int
    base_rounds: int
    base_compile: bool
    loss_tokens: int
    loss_hidden: int
    loss_vocab: int
    finetune_steps: int
    finetune_batch: int
    finetune_samples: int
    gain_items: int
    eval_limit: int
    eval_new_tokens: int  # per smoke prompt
    serve_streams: int
    serve_tokens: int


@dataclass
class Context:
    """What the rows share: sizes, the work directory, the device, and what earlier rows produced."""

    sizes: CheckSizes
    work: Path
    device: str
    precision: str  # the stages' --mixed_precision auto on this device
    outputs: dict[str, Path] = field(default_factory=dict)
    checks: list[TargetCheck] = field(default_factory=list)

    def need(self, name: str) -> Path:
        if name not in self.outputs:
            raise NotRun(f"needs the output of an earlier row ({name}), which did not run")
        return self.outputs[name]


# ---------------------------------------------------------------- environment and data


def pinned_versions(path: Path = REPO_ROOT / "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if version:
            pins[name] = version
    return pins


def check_environment(ctx: Context) -> tuple[dict[str, Any], str]:
    from utils.core.environment import describe_environment, package_version

    env = describe_environment()
    installed = {name: package_version(name) for name in pinned_versions()}
    differ = {name: {"pinned": pin, "installed": installed[name]} for name, pin in pinned_versions().items()
              if (installed[name] or "").split("+")[0] != pin}  # 2.13.0+cpu is the pinned 2.13.0
    summary = (f"{env['gpu'] or 'no GPU'}; torch {env['versions']['torch']} (CUDA {env['cuda_version']}); "
               f"bf16 {'native' if env['bf16_supported'] else 'not native'}; attention "
               f"{env['attention_implementation']}; {len(differ)} package(s) differ from requirements.txt")
    return {**env, "differs_from_pins": differ}, summary


def prepare_data(ctx: Context) -> tuple[dict[str, Any], str]:
    from utils.data.config import DataConfig
    from utils.data.prepare import prepare_dataset

    sizes = ctx.sizes
    path = prepare_dataset(DataConfig(name="gpu_check", source="demo", demo_num_stories=sizes.demo_stories,
                                      vocab_size=sizes.vocab_size, max_length=sizes.data_max_length, num_workers=0,
                                      output_dir=str(ctx.work / "data"), force=True))
    ctx.outputs["data"] = path
    tokens = read_json(path / "stats.json")["tokens"]["train"]
    return {"train_tokens": tokens, "path": str(path)}, f"{sizes.demo_stories:,} stories, {tokens:,} train tokens"


# ---------------------------------------------------------------- pretraining


def tiny_preset_path(ctx: Context) -> str:
    if ctx.sizes.tiny_preset != "dry-run":
        return ctx.sizes.tiny_preset
    path = ctx.work / "dry_run_preset.json"
    path.write_text(json.dumps(DRY_RUN_PRESET))
    return str(path)


def run_pretrain(preset: str, overrides: dict[str, Any]) -> Path:
    from utils.train.pretrain import load_pretrain_config, pretrain

    preset_obj, config = load_pretrain_config(preset, overrides)
    return pretrain(preset, config, preset_obj)


def tiny_overrides(ctx: Context, output_dir: Path, steps: int, every: int) -> dict[str, Any]:
    sizes = ctx.sizes
    return {"data_path": str(ctx.need("data")), "output_dir": str(output_dir), "batch_size": sizes.tiny_batch,
            "max_length": sizes.tiny_max_length, "max_steps": steps, "warmup_steps": max(1, steps // 10),
            "logging_steps": 1, "eval_steps": every, "save_steps": every, "save_total_limit": steps // every + 1,
            "eval_hellaswag_steps": every, "eval_hellaswag_limit": sizes.mc_limit, "mixed_precision": ctx.precision,
            "sample_max_new_tokens": sizes.sample_tokens}


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    from utils.lm.metrics import read_metrics

    return read_metrics(run_dir / "metrics.jsonl", "train")


def check_tiny_resume(ctx: Context) -> tuple[dict[str, Any], str]:
    sizes, preset = ctx.sizes, tiny_preset_path(ctx)
    full, resumed = ctx.work / "tiny", ctx.work / "tiny-resumed"
    started = time.perf_counter()
    ctx.outputs["tiny"] = run_pretrain(preset, tiny_overrides(ctx, full, sizes.tiny_steps, sizes.tiny_every))
    full_seconds = time.perf_counter() - started
    start_step = sizes.tiny_every
    run_pretrain(preset, {**tiny_overrides(ctx, resumed, sizes.tiny_steps, sizes.tiny_every),
                          "resume_from_checkpoint": str(full / f"step-{start_step:06d}")})
    reference = {r["step"]: r for r in train_records(full) if r["step"] > start_step}
    again = {r["step"]: r for r in train_records(resumed)}
    differences = [abs(again[step]["loss"] - reference[step]["loss"]) for step in reference]
    same_batches = all(again[step]["batch_hash"] == reference[step]["batch_hash"] for step in reference)
    exact = max(differences) == 0.0 and same_batches and len(again) == len(reference)
    ctx.checks.append(TargetCheck("resumed losses equal the uninterrupted run's (1 = exact)", float(exact), 1.0, ""))
    records = train_records(full)
    figures = {"steps": sizes.tiny_steps, "steps_per_s_with_evals_and_saves": sizes.tiny_steps / full_seconds,
               "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in records),
               "mfu_median": _median_or_none([r["mfu"] for r in records]),
               "peak_reserved_mib": max(r.get("memory_reserved_mb", 0.0) for r in records),
               "resume_exact": exact, "same_batches": same_batches, "max_loss_difference": max(differences),
               "compared_steps": len(reference)}
    verdict = "bit-identical" if exact else f"max |diff| {max(differences):.2e}"
    return figures, (f"{sizes.tiny_steps} steps at {figures['steps_per_s_with_evals_and_saves']:.1f} steps/s "
                     f"(evals and saves included), {figures['tokens_per_s_median']:,.0f} tok/s; resumed from "
                     f"{start_step}: {len(reference)} losses {verdict}")


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def check_base(ctx: Context, compiled: bool, checkpointing: bool) -> tuple[dict[str, Any], str]:
    from utils.benchmarks.train import Case, measure_case
    from utils.lm.memory import estimate
    from utils.lm.model import load_preset

    sizes = ctx.sizes
    if compiled and not sizes.base_compile:
        raise NotRun("dry run: torch.compile's first step takes ~30 s on a CPU; the GPU run measures it")
    saves = 0 if compiled or checkpointing else 1
    preset = tiny_preset_path(ctx) if sizes.base_preset == "dry-run" else sizes.base_preset
    case = Case(preset, sizes.base_batch, sizes.base_max_length, ctx.precision, compiled,
                checkpointing, device=ctx.device, reference=False, checkpoint_saves=saves,
                rounds=sizes.base_rounds)
    result = measure_case(case, ctx.need("data"))
    predicted = estimate(load_preset(preset).model, sizes.base_batch, sizes.base_max_length,
                         checkpointing, fused_loss=not compiled)
    reserved = result.peak_reserved_mib
    if reserved is not None:
        ctx.checks.append(TargetCheck(f"{case.label} reserved memory fits a 4090", reserved / 1024,
                                      RTX_4090_USABLE_GIB, "GiB", higher_is_better=False))
    figures = {"label": case.label, "tokens_per_s": result.ours_tokens_per_s, "mfu": result.ours_mfu,
               "peak_source": result.peak_source, "first_step_s": result.first_step_s,
               "peak_allocated_mib": result.peak_memory_mib, "peak_reserved_mib": reserved,
               "estimated_gib": predicted.total_gb, "checkpoint_save_s": result.checkpoint_save_s,
               "checkpoint_mib": result.checkpoint_mib}
    mfu = f"{result.ours_mfu:.1%}" if result.ours_mfu is not None else "n/a"
    memory = (f"{result.peak_memory_mib / 1024:.1f}/{reserved / 1024:.1f} GiB allocated/reserved"
              if reserved is not None else f"peak RSS {result.peak_memory_mib / 1024:.1f} GiB")
    save = f"; save {result.checkpoint_save_s[0]:.1f} s" if result.checkpoint_save_s else ""
    return figures, (f"{result.ours_tokens_per_s:,.0f} tok/s, MFU {mfu}, {memory} (estimate "
                     f"{predicted.total_gb:.1f}){save}")


def check_fused_loss(ctx: Context) -> tuple[dict[str, Any], str]:
    import torch

    from utils.train.loss import Workspace, linear_cross_entropy, unfused_linear_cross_entropy

    sizes, device = ctx.sizes, torch.device(ctx.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(sizes.loss_tokens, sizes.loss_hidden, generator=generator).to(device)
    weight = (torch.randn(sizes.loss_vocab, sizes.loss_hidden, generator=generator) * 0.02).to(device)
    targets = torch.randint(0, sizes.loss_vocab, (sizes.loss_tokens,), generator=generator).to(device)
    workspace = Workspace()
    losses = {"ours": lambda h, w: linear_cross_entropy(h, w, targets, sizes.loss_tokens, workspace),
              "hf": lambda h, w: unfused_linear_cross_entropy(h, w, targets, sizes.loss_tokens)}
    runs = {name: _loss_run(fn, hidden, weight, device, ctx.precision == "bf16") for name, fn in losses.items()}
    ours, hf = runs["ours"], runs["hf"]
    loss_rel = abs(ours["loss"] - hf["loss"]) / abs(hf["loss"])
    grad_rel = max(float((ours[g] - hf[g]).abs().max() / hf[g].abs().max()) for g in ("grad_hidden", "grad_weight"))
    ctx.checks.append(TargetCheck("fused loss vs HF's, relative loss difference", loss_rel,
                                  FUSED_LOSS_REL_TOLERANCE, "", higher_is_better=False))
    ctx.checks.append(TargetCheck("fused loss vs HF's, relative gradient difference", grad_rel,
                                  FUSED_GRAD_REL_TOLERANCE, "", higher_is_better=False))
    figures = {"loss_ours": ours["loss"], "loss_hf": hf["loss"], "loss_rel_diff": loss_rel, "grad_rel_diff": grad_rel,
               **{f"{k}_{n}": runs[n][k] for n in runs for k in ("seconds", "peak_mib")}}
    memory = (f"; peak above the inputs ours {ours['peak_mib']:,.0f} MiB / HF {hf['peak_mib']:,.0f} MiB"
              if ours["peak_mib"] is not None else "")
    return figures, (f"loss rel diff {loss_rel:.1e}, grad rel diff {grad_rel:.1e}; fwd+bwd ours "
                     f"{ours['seconds'] * 1e3:.1f} ms / HF {hf['seconds'] * 1e3:.1f} ms{memory}")


def _loss_run(loss_fn: Callable[[Any, Any], Any], hidden: Any, weight: Any, device: Any, bf16: bool) -> dict[str, Any]:
    """Forward and backward of one loss under the training autocast: value, gradients, median time, peak memory
    above what was allocated before (CUDA; None on a CPU)."""
    import torch

    cuda = device.type == "cuda"
    times, result = [], {}
    for _ in range(FUSED_LOSS_REPEATS + 1):  # the first call warms up (and allocates our workspace)
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(h, w)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        peak = (torch.cuda.max_memory_allocated() - base) / MIB if cuda else None
        result = {"loss": loss.item(), "grad_hidden": h.grad.float(), "grad_weight": w.grad.float(), "peak_mib": peak}
    return {**result, "seconds": statistics.median(times[1:])}
