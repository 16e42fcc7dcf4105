"""Session utilities behind `make session-status`, `session-debug`, `session-cleanup` and `config-rtx4090`:
what exists and the next command, every problem found with its fix, removal of temporary and incomplete leftovers,
and micro-batch sizes per preset for a 24 GB GPU.

    python scripts/session.py {status,debug,cleanup,config-rtx4090}
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from utils.core.artifacts import read_json
from utils.core.errors import CheckpointError, LumiError
from utils.lm.memory import RTX_4090_GB, estimate, max_batch_size
from utils.lm.model import load_preset
from utils.sessions.runner import REPO_ROOT, SESSIONS_DIR
from utils.train.checkpoint import COMPLETE, verify_checkpoint

KEEP_SESSIONS = 10


def model_directories() -> list[Path]:
    """Every final/ and merged/ model under checkpoints/, newest first."""
    found = [p for name in ("final", "merged") for p in (REPO_ROOT / "checkpoints").glob(f"*/*/{name}")
             if (p / "config.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def rtx4090_recommendations() -> dict[str, Any]:
    """Recommended micro-batch sizes per preset on a 24 GB card at the preset's context, from the estimate."""
    table = {}
    for name in ("tiny", "small", "base"):
        model = load_preset(name).model
        seq = model.max_position_embeddings
        batch = max_batch_size(model, seq, RTX_4090_GB)
        ckpt = max_batch_size(model, seq, RTX_4090_GB, checkpointing=True)
        table[name] = {"max_length": seq, "batch_size": batch, "batch_size_gradient_checkpointing": ckpt,
                       "estimated_gb": round(estimate(model, batch, seq).total_gb, 1)}
    return table


def status() -> list[str]:
    lines = ["Datasets:"]
    for manifest in sorted((REPO_ROOT / "data" / "processed").glob("*/manifest.json")):
        m = read_json(manifest)
        lines.append(f"  {manifest.parent.relative_to(REPO_ROOT)}: {m['splits']['train']['tokens']:,} train tokens, "
                     f"vocab {m['tokenizer']['vocab_size']}")
    lines.append("Checkpoints:")
    for run in sorted((REPO_ROOT / "checkpoints").glob("*/*")):
        if run.is_dir():
            latest = (run / "latest").read_text().strip() if (run / "latest").is_file() else "-"
            kinds = [k for k in ("final", "merged", "adapter", "best") if (run / k).is_dir()]
            lines.append(f"  {run.relative_to(REPO_ROOT)}: latest {latest}; {', '.join(kinds) or 'no model yet'}")
    lines.append("Evaluations:")
    for results in sorted((REPO_ROOT / "evaluation_results").glob("*/results.json"))[-5:]:
        tasks = read_json(results)["tasks"]
        summary = ", ".join(f"{k} {100 * v['acc']:.1f}%" for k, v in tasks.items() if "acc" in v)
        lines.append(f"  {results.parent.relative_to(REPO_ROOT)}: {summary or 'perplexity only'}")
    reports = sorted(SESSIONS_DIR.glob("*/report.md"))
    lines.append(f"Sessions: {len(reports)}" + (f", newest {reports[-1].relative_to(REPO_ROOT)}" if reports else ""))
    lines.append(f"Next: {suggest_next()}")
    return lines


def suggest_next() -> str:
    if not list((REPO_ROOT / "data" / "processed").glob("*/manifest.json")):
        return "make prepare-demo   (or make session-quick for the whole pipeline)"
    if not list((REPO_ROOT / "checkpoints" / "pretrain").glob("*/final")):
        return "make pretrain-tiny"
    if not list((REPO_ROOT / "checkpoints" / "sft").glob("*/merged")):
        return "make sft"
    if not list((REPO_ROOT / "checkpoints" / "dpo").glob("*/merged")):
        return "make dpo"
    if not list((REPO_ROOT / "evaluation_results").glob("*/results.json")):
        return "make evaluate MODEL=<a merged/ directory>"
    return f"make serve MODEL={model_directories()[0].relative_to(REPO_ROOT)}"


def debug() -> list[str]:
    """Every problem found, each with its fix; an empty list means nothing is wrong."""
    from utils.core.environment import describe_environment
    from utils.lm.shards import read_shard

    problems = []
    env = describe_environment()
    if shutil.disk_usage(REPO_ROOT).free < 2 * 1024**3:
        problems.append("less than 2 GB of free disk: checkpoints will fail to save. Free space or make clean.")
    if env["cuda_available"] and not env["bf16_supported"]:
        problems.append("this GPU lacks bf16: training uses fp16 with a grad scaler; lower --learning_rate if "
                        "the loss spikes.")
    for manifest in (REPO_ROOT / "data" / "processed").glob("*/manifest.json"):
        m = read_json(manifest)
        for split in m["splits"].values():
            for shard in split["shards"]:
                try:
                    read_shard(manifest.parent / shard["file"], m["tokenizer"]["sha256"])
                except LumiError as exc:
                    problems.append(f"{exc} -> rebuild with make prepare CONFIG=... ARGS=--force")
    for step in (REPO_ROOT / "checkpoints").glob("*/*/step-*"):
        if step.name.endswith(".tmp") or not (step / COMPLETE).is_file():
            problems.append(f"{step}: incomplete checkpoint (ignored by auto-resume) -> make session-cleanup")
            continue
        try:
            verify_checkpoint(step)
        except CheckpointError as exc:
            problems.append(f"{exc} -> delete it; resume from an earlier step")
    for model in model_directories():
        problems += _vocab_problem(model)
    return problems


def _vocab_problem(model: Path) -> list[str]:
    config = read_json(model / "config.json")
    tokenizer = model / "tokenizer.json"
    if not tokenizer.is_file():
        return [f"{model}: no tokenizer files -> re-export the model with its stage"]
    vocab = len(read_json(tokenizer)["model"]["vocab"])
    if vocab > config["vocab_size"]:
        return [f"{model}: tokenizer has {vocab} tokens but the model only {config['vocab_size']} (vocab mismatch) "
                f"-> pair the model with the tokenizer it was trained with"]
    return []


def cleanup() -> list[str]:
    """Remove temporary build directories, incomplete checkpoints and all but the newest session logs."""
    removed = []
    patterns = ["data/processed/.*.tmp-*", "checkpoints/*/*/step-*.tmp", "checkpoints/*/.*.tmp-*",
                "checkpoints/*/*/.*.tmp-*", "evaluation_results/.*.tmp-*"]
    for pattern in patterns:
        for path in REPO_ROOT.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path.relative_to(REPO_ROOT)))
    for step in REPO_ROOT.glob("checkpoints/*/*/step-*"):
        if step.is_dir() and not (step / COMPLETE).is_file():
            shutil.rmtree(step)
            removed.append(str(step.relative_to(REPO_ROOT)))
    for old in sorted(p for p in SESSIONS_DIR.glob("*-*") if p.is_dir())[:-KEEP_SESSIONS]:
        shutil.rmtree(old)
        removed.append(str(old.relative_to(REPO_ROOT)))
    return removed
