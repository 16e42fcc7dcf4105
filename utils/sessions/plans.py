"""The sessions behind `make session-*`: which stages run, with which budgets, and what the report shows.

quick        demo data → tiny pretrain → SFT → DPO → evaluation → one API request (≤ 15 min on 2 CPU cores)
prototype    tiny on TinyStories (hub or mirror) + the benchmarks (2 h on an RTX 4090; --short: minutes on a CPU)
experiment   small on FineWeb-Edu + SFT (Alpaca) + DPO (hh-rlhf) + the benchmarks (4 h; --short likewise)
evaluation   deep evaluation of every final/ and merged/ model found (1 h)
architecture every preset: exact parameter counts, a forward/backward pass, memory estimates for a 24 GB GPU
test-pipeline every stage end to end on a micro model in minutes (the wiring, not the quality)

status, debug, cleanup and config-rtx4090 are in utils/sessions/diagnostics.py.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.artifacts import read_json
from utils.core.config import load_config
from utils.core.errors import CheckpointError, DataError
from utils.core.hub import PublicDataset, check_available
from utils.core.records import read_records
from utils.data.config import DataConfig, hub_dataset
from utils.eval.tasks import task_dataset
from utils.finetune.sources import DPO_HUB_DATASETS, SFT_HUB_DATASETS, public_dataset
from utils.lm.memory import RTX_4090_GB, estimate, max_batch_size
from utils.lm.model import PRESET_NAMES, count_parameters, load_preset
from utils.sessions.diagnostics import model_directories
from utils.sessions.runner import REPO_ROOT, Session, serve_probe

PY = sys.executable
DEMO_DATA = "data/processed/demo_tiny"
ARCH_PROBE_TOKENS = 128


@dataclass(frozen=True)
class QuickBudget:
    """Seconds per training stage: CPU sized to fit 15 minutes in all; a GPU trains longer on more data."""

    demo_stories: int
    pretrain_s: int
    pretrain_steps: int
    pretrain_batch: int
    sft_s: int
    dpo_s: int
    eval_steps: int  # each evaluation also writes samples, loss.png and best/
    save_steps: int


# CPU: tiny learns to copy facts out of the story (what the demo questions ask) between ~500 and ~800 steps of
# batch 16 (demo MC 42 % at 500, 59 % at 700, 88 % at 800; 1.8 steps/s on 2 cores), and SFT and DPO gain more
# from a model that copies well (from 760 steps: SFT 3 % -> 22 %, DPO 68 % -> 70 %; from 1,000: 15 % -> 34 %,
# 69.5 % -> 74 %), so pretraining gets most of the budget; SFT and DPO each take ~1 min.
CPU_QUICK = QuickBudget(demo_stories=22_000, pretrain_s=560, pretrain_steps=1000, pretrain_batch=16, sft_s=90,
                        dpo_s=75, eval_steps=250, save_steps=500)
# GPU: sized, not measured (no GPU was lent). 8,000 steps finish inside pretrain_s at >= 9 steps/s; on a slower
# GPU the wsd decay is brought forward to end inside max_time (TrainingLoop.fit_schedule_to_time). 8 evaluations
# instead of 80.
GPU_QUICK = QuickBudget(demo_stories=100_000, pretrain_s=900, pretrain_steps=8_000, pretrain_batch=64, sft_s=300,
                        dpo_s=240, eval_steps=1_000, save_steps=2_000)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _metric_values(path: Path, kind: str, key: str) -> list[Any]:
    rows = read_records(path) if path.is_file() else []
    return [r[key] for r in rows if r.get("kind") == kind and r.get(key) is not None] or [float("nan")]


def _gain(meta_path: Path) -> str:
    gain = read_json(meta_path).get("gain") if meta_path.is_file() else None
    if not gain:
        return "n/a"
    from utils.finetune.gain import format_score  # torch and transformers: not on the session's start-up path

    before, after = format_score(gain["metric"], gain["before"]), format_score(gain["metric"], gain["after"])
    return f"{gain['metric']} {before} → {after} (n={gain['n']})"


def quick() -> Session:
    budget = GPU_QUICK if _cuda() else CPU_QUICK
    session = Session.start("quick", budget_s=30 * 60 if _cuda() else 15 * 60)
    tag = session.directory.name
    pretrain_dir = f"checkpoints/pretrain/{tag}"
    session.run("check-env", [PY, "scripts/check_env.py"])
    # On CPU the standard demo_tiny (a rerun is a no-op); on a GPU a larger demo corpus under its own name.
    larger = [] if budget is CPU_QUICK else ["--demo_num_stories", str(budget.demo_stories), "--name", "demo_large"]
    session.run("data", [PY, "scripts/01_prepare_data.py", "--config_path", "config/datasets/demo_tiny.json", *larger])
    data = DEMO_DATA if budget is CPU_QUICK else "data/processed/demo_large"
    session.run("pretrain", [PY, "scripts/02_pretrain.py", "--config_path", "config/tiny.json", "--data_path", data,
                             "--output_dir", pretrain_dir, "--max_time", str(budget.pretrain_s),
                             "--max_steps", str(budget.pretrain_steps), "--batch_size", str(budget.pretrain_batch),
                             "--eval_steps", str(budget.eval_steps), "--save_steps", str(budget.save_steps)])
    session.run("sft", [PY, "scripts/03_sft.py", "--config_path", "config/sft.json",
                        "--model_path", f"{pretrain_dir}/final",
                        "--dataset_path", f"{data}/demo/sft_train.json", "--prompt_template", "chatml",
                        "--output_dir", "checkpoints/sft", "--run_name", tag, "--max_time", str(budget.sft_s)])
    session.run("dpo", [PY, "scripts/04_dpo.py", "--config_path", "config/dpo.json",
                        "--model_path", f"checkpoints/sft/{tag}/merged",
                        "--dataset_path", f"{data}/demo/dpo_train.json", "--output_dir", "checkpoints/dpo",
                        "--run_name", tag, "--max_time", str(budget.dpo_s)])
    final = f"checkpoints/dpo/{tag}/merged"
    session.run("evaluate", [PY, "scripts/05_evaluate.py", "--model_path", final, "--tasks", "demo_mc", "smoke",
                             "--demo_mc_path", f"{data}/demo/mc_validation.jsonl", "--fast_mode",
                             "--output_dir", "evaluation_results", "--run_name", tag])
    answer = serve_probe(session, final, "Tom went to the park and found a red ball.\nQuestion: What did Tom find?")
    _quick_figures(session, data, pretrain_dir, tag, answer)
    session.write_report(next_command=f"make serve MODEL={final}")
    return session


def _quick_figures(session: Session, data: str, pretrain_dir: str, tag: str, answer: str) -> None:
    stats = read_json(REPO_ROOT / data / "stats.json")
    metrics = REPO_ROOT / pretrain_dir / "metrics.jsonl"
    results = read_json(REPO_ROOT / "evaluation_results" / tag / "results.json")
    demo_mc = results["tasks"]["demo_mc"]
    session.figures.update({
        "documents read → kept": f"{stats['documents']['read']:,} → {stats['documents']['kept']:,}",
        "train tokens": f"{stats['tokens']['train']:,}",
        "pretrain steps": _metric_values(metrics, "end", "step")[-1],
        "pretrain loss first → last": f"{_metric_values(metrics, 'train', 'loss')[0]:.3f} → "
                                      f"{_metric_values(metrics, 'train', 'loss')[-1]:.3f}",
        "validation loss (final)": f"{_metric_values(metrics, 'eval', 'val_loss')[-1]:.3f}",
        "SFT exact match before → after": _gain(REPO_ROOT / f"checkpoints/sft/{tag}/merged/meta.json"),
        "DPO preference accuracy before → after": _gain(REPO_ROOT / f"checkpoints/dpo/{tag}/merged/meta.json"),
        "demo MC accuracy (chance 25 %)": f"{100 * demo_mc['acc']:.1f}% ± {100 * demo_mc['acc_stderr']:.1f} "
                                          f"(n={demo_mc['n']})",
        "smoke prompt quality": f"{results['smoke']['mean_score']:.3f}",
        "API answer": repr(answer),
    })
    session.outputs.update({"dataset": data, "pretrained": f"{pretrain_dir}/final",
                            "SFT": f"checkpoints/sft/{tag}/merged", "DPO": f"checkpoints/dpo/{tag}/merged",
                            "evaluation": f"evaluation_results/{tag}/report.md",
                            "loss curve": f"{pretrain_dir}/loss.png"})


MICRO_PRESET = {"name": "micro", "label": "micro-0.1M", "params_millions": 0.1,
                "description": "2 layers x 64: the smoke test's model",
                "model": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "max_position_embeddings": 256}}


def test_pipeline() -> Session:
    """Every stage end to end on a micro model in minutes: proves the wiring, not the quality."""
    session = Session.start("test-pipeline", budget_s=10 * 60)
    work = session.directory / "work"
    work.mkdir()
    preset = work / "micro.json"
    preset.write_text(json.dumps(MICRO_PRESET))
    data, pretrain_dir = work / "data" / "smoke", work / "pretrain"
    session.run("data", [PY, "scripts/01_prepare_data.py", "--source", "demo", "--name", "smoke",
                         "--demo_num_stories", "1500", "--vocab_size", "512", "--max_length", "128",
                         "--num_workers", "0", "--output_dir", str(work / "data")])
    session.run("pretrain", [PY, "scripts/02_pretrain.py", "--config_path", str(preset), "--data_path", str(data),
                             "--output_dir", str(pretrain_dir), "--max_steps", "30", "--batch_size", "8",
                             "--max_length", "64", "--eval_steps", "15", "--save_steps", "15", "--logging_steps", "5",
                             "--learning_rate", "3e-3", "--warmup_steps", "5", "--eval_batches", "2"])
    session.run("sft", [PY, "scripts/03_sft.py", "--model_path", str(pretrain_dir / "final"), "--dataset_path",
                        str(data / "demo" / "sft_train.json"), "--output_dir", str(work / "sft"), "--run_name",
                        "smoke", "--max_steps", "10", "--gain_eval_size", "10", "--max_samples", "200"])
    session.run("dpo", [PY, "scripts/04_dpo.py", "--model_path", str(work / "sft" / "smoke" / "merged"),
                        "--dataset_path", str(data / "demo" / "dpo_train.json"), "--output_dir", str(work / "dpo"),
                        "--run_name", "smoke", "--max_steps", "5", "--gain_eval_size", "10", "--max_samples", "100",
                        "--loss_type", "sigmoid", "sft"])
    final = str(work / "dpo" / "smoke" / "merged")
    session.run("evaluate", [PY, "scripts/05_evaluate.py", "--model_path", final, "--tasks", "demo_mc", "smoke",
                             "--demo_mc_path", str(data / "demo" / "mc_validation.jsonl"), "--limit", "20",
                             "--fast_mode", "--max_new_tokens", "16", "--output_dir", str(work / "eval"),
                             "--run_name", "smoke"])
    answer = serve_probe(session, final, "Where did Tom go?", max_tokens=8)
    session.figures["API answer"] = repr(answer)
    session.outputs.update({"work directory": str(work)})
    session.write_report(next_command="make session-quick")
    return session


@dataclass(frozen=True)
class RealDataBudget:
    """Sizes of a real-data session: the GPU run it is for, or `--short`, a minutes-long CPU rehearsal of the same
    stages on a slice of the same data (proves the data, the wiring and the outputs before the hours are spent)."""

    budget_s: int
    preset: str
    max_documents: int | None  # None: the dataset config's own cap
    vocab_size: int | None  # None: the dataset config's
    pretrain_s: int
    pretrain_steps: int
    pretrain_flags: tuple[str, ...]
    finetune_s: int
    finetune_flags: tuple[str, ...]
    eval_flags: tuple[str, ...]


# Prototype on an RTX 4090 (SESSIONS.md has the arithmetic): tiny on 1M TinyStories stories (~230M tokens),
# 80 min of training; max_steps sized so that the schedule ends near the time limit at ~270k tok/s.
PROTOTYPE = RealDataBudget(
    budget_s=2 * 3600, preset="config/tiny.json", max_documents=1_000_000, vocab_size=None, pretrain_s=4800,
    pretrain_steps=40_000, pretrain_flags=("--batch_size", "64", "--max_length", "512"), finetune_s=0,
    finetune_flags=(), eval_flags=())
# Experiment on an RTX 4090: small on the first FineWeb-Edu sample-10BT file (~0.7B tokens), 140 min of training
# (10,000 steps of 131k tokens at ~160k tok/s), then SFT on Alpaca (30 min), LoRA DPO on hh-rlhf (20 min), evaluation.
EXPERIMENT = RealDataBudget(
    budget_s=4 * 3600, preset="config/small.json", max_documents=None, vocab_size=None, pretrain_s=8400,
    pretrain_steps=10_000, pretrain_flags=(), finetune_s=1800, finetune_flags=(), eval_flags=())
SHORT_EVAL = ("--limit", "2", "--fast_mode", "--max_new_tokens", "8", "--batch_size", "4")
SHORT_FINETUNE = ("--max_steps", "4", "--max_samples", "200", "--gain_eval_size", "4", "--batch_size", "4",
                  "--eval_steps", "2", "--save_steps", "4", "--logging_steps", "1", "--max_length", "128")
SHORT_PRETRAIN = ("--max_length", "128", "--warmup_steps", "2", "--eval_batches", "2")
PROTOTYPE_SHORT = RealDataBudget(
    budget_s=10 * 60, preset="config/tiny.json", max_documents=600, vocab_size=1024, pretrain_s=120,
    pretrain_steps=20,
    pretrain_flags=(*SHORT_PRETRAIN, "--batch_size", "8", "--eval_steps", "10", "--save_steps", "10"),
    finetune_s=0, finetune_flags=(), eval_flags=SHORT_EVAL)
# The rehearsal trains tiny instead of small: the same stages and data, minutes instead of an hour on 2 CPU cores.
EXPERIMENT_SHORT = RealDataBudget(
    budget_s=15 * 60, preset="config/tiny.json", max_documents=200, vocab_size=1024, pretrain_s=120,
    pretrain_steps=6, pretrain_flags=(*SHORT_PRETRAIN, "--batch_size", "2", "--eval_steps", "3", "--save_steps", "3",
                                      "--gradient_accumulation_steps", "1"),
    finetune_s=120, finetune_flags=SHORT_FINETUNE, eval_flags=SHORT_EVAL)
PROTOTYPE_DATA = "config/datasets/tinystories.json"
EXPERIMENT_DATA = "config/datasets/fineweb_edu.json"
SFT_DATASET = "tatsu-lab/alpaca"
DPO_DATASET = "Anthropic/hh-rlhf"
BENCHMARK_TASKS = ("wikitext", "hellaswag", "arc_easy", "arc_challenge", "boolq")


def session_datasets(data_config: str | None, tasks: tuple[str, ...], sft: str | None = None,
                     dpo: str | None = None) -> list[PublicDataset]:
    """Every public dataset a session reads, for the check before its first stage."""
    needed = []
    if data_config:
        config = load_config(DataConfig, REPO_ROOT / data_config)
        needed.append(hub_dataset(config))
    needed += [d for d in (task_dataset(t) for t in tasks) if d is not None]
    if sft:
        needed.append(public_dataset(sft, SFT_HUB_DATASETS[sft]))
    if dpo:
        needed.append(public_dataset(dpo, DPO_HUB_DATASETS[dpo]))
    return needed


def _check_data(session: Session, needed: list[PublicDataset]) -> None:
    """Seconds, not hours, to learn that a dataset cannot be had: one message naming each one and both fixes."""
    start = time.perf_counter()
    try:
        check_available(needed)
    except DataError as exc:
        session.record("check data", time.perf_counter() - start, "failed")
        session.write_report(failed="check data")
        raise DataError(f"session {session.name}: {exc}") from exc
    session.record("check data", time.perf_counter() - start)


def _prepare(session: Session, data_config: str, budget: RealDataBudget, name: str) -> str:
    flags = [*(["--max_documents", str(budget.max_documents)] if budget.max_documents else []),
             *(["--vocab_size", str(budget.vocab_size)] if budget.vocab_size else [])]
    session.run("data", [PY, "scripts/01_prepare_data.py", "--config_path", data_config, "--name", name, *flags])
    return f"data/processed/{name}"


def _pretrain(session: Session, data: str, run_dir: str, budget: RealDataBudget) -> None:
    session.run("pretrain", [PY, "scripts/02_pretrain.py", "--config_path", budget.preset, "--data_path", data,
                             "--output_dir", run_dir, "--max_time", str(budget.pretrain_s),
                             "--max_steps", str(budget.pretrain_steps), "--eval_hellaswag_steps", "0",
                             *budget.pretrain_flags])


def _evaluate(session: Session, model: str, tag: str, budget: RealDataBudget) -> None:
    session.run("evaluate", [PY, "scripts/05_evaluate.py", "--model_path", model, "--run_name", tag,
                             "--tasks", *BENCHMARK_TASKS, "smoke", *budget.eval_flags])


def prototype(short: bool = False) -> Session:
    """Tiny on TinyStories from the hub (or the mirror), then the benchmarks."""
    budget = PROTOTYPE_SHORT if short else PROTOTYPE
    session = Session.start("prototype-short" if short else "prototype", budget_s=budget.budget_s)
    _check_data(session, session_datasets(PROTOTYPE_DATA, BENCHMARK_TASKS))
    tag = session.directory.name
    run_dir = f"checkpoints/pretrain/{tag}"
    data = _prepare(session, PROTOTYPE_DATA, budget, "tinystories_short" if short else "tinystories")
    _pretrain(session, data, run_dir, budget)
    _evaluate(session, f"{run_dir}/final", tag, budget)
    session.outputs.update({"dataset": data, "model": f"{run_dir}/final", "loss curve": f"{run_dir}/loss.png",
                            "evaluation": f"evaluation_results/{tag}/report.md"})
    session.write_report(next_command=f"make serve MODEL={run_dir}/final")
    return session


def experiment(short: bool = False) -> Session:
    """Small on a FineWeb-Edu sample, LoRA SFT on Alpaca, LoRA DPO on hh-rlhf, the benchmarks."""
    budget = EXPERIMENT_SHORT if short else EXPERIMENT
    session = Session.start("experiment-short" if short else "experiment", budget_s=budget.budget_s)
    _check_data(session, session_datasets(EXPERIMENT_DATA, BENCHMARK_TASKS, SFT_DATASET, DPO_DATASET))
    tag = session.directory.name
    run_dir = f"checkpoints/pretrain/{tag}"
    data = _prepare(session, EXPERIMENT_DATA, budget, "fineweb_edu_short" if short else "fineweb_edu")
    _pretrain(session, data, run_dir, budget)
    session.run("sft", [PY, "scripts/03_sft.py", "--config_path", "config/sft_alpaca.json",
                        "--model_path", f"{run_dir}/final", "--dataset_path", SFT_DATASET,
                        "--output_dir", "checkpoints/sft", "--run_name", tag, "--max_time", str(budget.finetune_s),
                        *budget.finetune_flags])
    session.run("dpo", [PY, "scripts/04_dpo.py", "--config_path", "config/dpo_hh_rlhf.json",
                        "--model_path", f"checkpoints/sft/{tag}/merged", "--dataset_path", DPO_DATASET,
                        "--output_dir", "checkpoints/dpo", "--run_name", tag,
                        "--max_time", str(budget.finetune_s * 2 // 3), *budget.finetune_flags])
    final = f"checkpoints/dpo/{tag}/merged"
    _evaluate(session, final, tag, budget)
    session.figures.update({"SFT gain": _gain(REPO_ROOT / f"checkpoints/sft/{tag}/merged/meta.json"),
                            "DPO preference accuracy before → after":
                                _gain(REPO_ROOT / f"checkpoints/dpo/{tag}/merged/meta.json")})
    session.outputs.update({"dataset": data, "pretrained": f"{run_dir}/final", "SFT": f"checkpoints/sft/{tag}/merged",
                            "DPO": final, "evaluation": f"evaluation_results/{tag}/report.md"})
    session.write_report(next_command=f"make serve MODEL={final}")
    return session


def evaluation() -> Session:
    session = Session.start("evaluation", budget_s=3600)
    _check_data(session, session_datasets(None, BENCHMARK_TASKS))
    models = model_directories()
    if not models:
        session.write_report(next_command="make session-quick")
        raise CheckpointError("no final/ or merged/ model under checkpoints/: train one first (make session-quick)")
    for model in models:
        name = "-".join(model.relative_to(REPO_ROOT).parts[1:3])
        session.run(f"evaluate {name}", [PY, "scripts/05_evaluate.py", "--model_path", str(model),
                                         "--run_name", f"{session.directory.name}-{name}", "--detailed_output"])
        session.outputs[name] = f"evaluation_results/{session.directory.name}-{name}/report.md"
    session.write_report(next_command="make assess-performance")
    return session


def architecture() -> Session:
    import torch

    session = Session.start("architecture", budget_s=30 * 60)
    notes = []
    for name in PRESET_NAMES:
        start = time.perf_counter()
        preset = load_preset(name)
        count = count_parameters(preset.model)
        seconds = _forward_backward_seconds(preset.model, torch)
        seq = preset.model.max_position_embeddings
        plain, ckpt = estimate(preset.model, 8, seq), estimate(preset.model, 8, seq, checkpointing=True)
        session.figures[f"{name} ({preset.label})"] = (
            f"{count.total:,} total, {count.non_embedding:,} non-embedding; fwd+bwd of 1×{ARCH_PROBE_TOKENS} tokens on "
            f"CPU {seconds:.2f} s; 24 GB estimate at 8×{seq}: {plain.total_gb:.1f} GB ({ckpt.total_gb:.1f} GB with "
            f"checkpointing); max batch {max_batch_size(preset.model, seq, RTX_4090_GB)} "
            f"({max_batch_size(preset.model, seq, RTX_4090_GB, True)} with checkpointing)")
        session.record(f"validate {name}", time.perf_counter() - start)
        if abs(count.total / 1e6 - preset.params_millions) > 0.1 * preset.params_millions:
            notes.append(f"{name}: label {preset.params_millions}M is off by more than 10 % of {count.total:,}")
    notes.append("Memory figures are estimates (utils/lm/memory.py), not measurements.")
    session.write_report(notes=notes, next_command="make config-rtx4090")
    return session


def _forward_backward_seconds(model_config: Any, torch: Any) -> float:
    from utils.lm.model import build_model

    model = build_model(model_config)
    ids = torch.randint(0, model_config.vocab_size, (1, ARCH_PROBE_TOKENS))
    start = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    if not torch.isfinite(out.loss):
        raise CheckpointError(f"non-finite loss on a random batch for preset {model_config}")
    return time.perf_counter() - start
