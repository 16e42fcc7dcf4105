"""Stage 01's pass 1 on datatrove (`--engine datatrove`): dedup state on disk, work split into resumable tasks.

    filter   (one task per group of input files, or per shard of a hub dataset)  utils/data/engine_steps.FilterStep
             read -> clean -> split -> filter -> dedup keys; sorted bucket files, a spool and counts per task
    buckets  (one task per key column)  datatrove's MinhashDedupBuckets: duplicate pairs from the merged files
    drops    (one task)                 utils/data/engine_steps.DropsStep: the later document of each pair
    assembly (this process)             spools in task order, minus the drops -> the same spool as the local engine

Each task is marked complete by datatrove (logs/<step>/completions/); a rerun of an interrupted prepare skips the
completed tasks. The working folder is named after the config's fingerprint, so only a run of the same config and
input resumes from it, and it is removed once the output is published.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets
from tqdm import tqdm

from utils.core.artifacts import read_json, write_json
from utils.core.errors import ConfigError, DataError
from utils.data.config import DataConfig, hub_dataset, memory_budget_bytes
from utils.data.dedup import DedupKeyer
from utils.data.engine_steps import (
    BYTES_PER_KEY,
    DropsStep,
    FilterStep,
    bucket_config,
    chunk_summary,
    drops_file,
    merge_counts,
    rank_files,
)
from utils.data.executors import Step, run_steps
from utils.data.pipeline import FirstPass, spool_read

log = logging.getLogger(__name__)

DEFAULT_MAX_TASKS = 64
MIN_CHUNK_DOCUMENTS = 256  # a task flushes its keys at least every this many documents, whatever the budget
WORK_PREFIX = "datatrove-"
PLAN_NAME = "plan.json"  # the task split, so that a resume reads the same inputs per task
_DROP_REASONS = (None, "exact_duplicate", "near_duplicate")


def work_directory(config: DataConfig, fingerprint: str) -> Path:
    root = Path(config.work_dir) if config.work_dir else Path(config.output_dir)
    # Absolute: the tasks of a cluster executor resolve it on other machines.
    return root.resolve() / f".{config.name}.{WORK_PREFIX}{fingerprint[:12]}"


def input_units(config: DataConfig, files: list[Path]) -> list[list[str]]:
    """Each task's input: contiguous groups of the files of about equal size (so task order is input order), or,
    for a hub dataset read through `datasets`, one shard each (an empty list)."""
    if files:
        units = contiguous_groups(files, min(config.tasks or DEFAULT_MAX_TASKS, len(files)))
    else:
        from utils.core.hub import load_hub_split

        tasks = config.tasks or max(1, config.num_workers)
        rows = load_hub_split(hub_dataset(config), streaming=config.hf_streaming)  # downloads once, here
        units = [[] for _ in range(min(tasks, rows.num_shards) if config.hf_streaming else tasks)]
    if config.max_documents is not None and len(units) > 1:
        raise ConfigError(f"max_documents takes the first {config.max_documents} documents of the whole input, but "
                          f"the datatrove engine reads it in {len(units)} tasks: add --tasks 1, or use --engine local")
    return units


def contiguous_groups(files: list[Path], tasks: int) -> list[list[str]]:
    """Files in order, cut into at most `tasks` non-empty groups of about equal bytes."""
    sizes = [path.stat().st_size + 1 for path in files]
    total, before = sum(sizes), 0
    groups: list[list[str]] = [[] for _ in range(tasks)]
    for path, size in zip(files, sizes):
        groups[min(tasks - 1, (tasks * (2 * before + size)) // (2 * total))].append(str(path))
        before += size
    return [group for group in groups if group]


def run_datatrove(config: DataConfig, files: list[Path], spool_path: Path, fingerprint: str) -> FirstPass:
    """The datatrove engine's pass 1 on config.executor; returns what the local engine's run_pass1 returns."""
    work = work_directory(config, fingerprint)
    units = input_units(config, files)
    _check_plan(work, units, regenerated=config.source == "demo")
    keyer = DedupKeyer(config.exact_dedup, config.near_dedup, config.minhash_num_perm, config.minhash_bands,
                       config.shingle_size) if config.exact_dedup or config.near_dedup else None
    columns = keyer.columns if keyer else 0
    workers = max(1, config.num_workers)
    chunk = key_chunk_documents(config, columns)
    log.info("datatrove engine, %s executor: %d task(s), %d at a time, dedup keys flushed every %s documents per "
             "task; working folder %s", config.executor, len(units), workers, f"{chunk:,}", work)
    steps = [Step("filter", [FilterStep(config, units, str(work), columns, chunk)], len(units), workers)]
    if columns:
        buckets = MinhashDedupBuckets(str(work / "keys"), str(work / "dups"), config=bucket_config(columns))
        steps += [Step("buckets", [buckets], columns, workers),
                  Step("drops", [DropsStep(str(work), len(units), config.exact_dedup)], 1, 1)]
    seconds = run_steps(config, work, steps)
    state = assemble(config, work, len(units), spool_path, dedup=columns > 0)
    chunks = chunk_summary(work, len(units))
    state.timer.add("dedup", seconds.get("buckets", 0.0) + seconds.get("drops", 0.0))
    state.engine = {"name": "datatrove", "executor": config.executor, "tasks": len(units), "workers": workers,
                    "key_chunk_documents": chunk, "memory_budget_gb": round(memory_budget_bytes(config) / 2**30, 3),
                    "step_seconds": {name: round(value, 3) for name, value in seconds.items()}, **chunks}
    return state


def key_chunk_documents(config: DataConfig, columns: int) -> int:
    """How many documents' keys a filter task buffers before it writes them out: on this machine the budget shared
    by the tasks running at once; on a cluster half of each task's own memory."""
    if config.executor == "local":
        per_task = memory_budget_bytes(config) // max(1, config.num_workers)
    else:
        per_task = config.task_memory_gb * 2**30 // 2
    return max(MIN_CHUNK_DOCUMENTS, per_task // (max(columns, 1) * BYTES_PER_KEY))


def _check_plan(work: Path, units: list[list[str]], regenerated: bool) -> None:
    """A working folder continues only the task split it was made with: a task's rank names its input.
    `regenerated`: the input is written afresh by each run (the demo corpus), so an earlier run's tasks are stale."""
    path = work / PLAN_NAME
    if path.is_file():
        planned = read_json(path)["units"]
        if planned == units:
            return
        if regenerated:
            log.info("%s: the interrupted run's input was regenerated since; starting over", work)
            shutil.rmtree(work)
        elif len(planned) != len(units):
            raise DataError(f"{work} holds an interrupted run of this config split into {len(planned)} task(s); "
                            f"this run would split its input into {len(units)}. Rerun with --tasks {len(planned)} "
                            f"to continue it, or delete that folder to start over")
        else:
            raise DataError(f"{work} holds an interrupted run of this config that read its input from other paths "
                            f"(moved since?): move it back to continue that run, or delete that folder to start over")
    work.mkdir(parents=True, exist_ok=True)
    write_json(path, {"units": units})


def assemble(config: DataConfig, work: Path, tasks: int, spool_path: Path, dedup: bool) -> FirstPass:
    """Every task's filtered documents in task order, minus its drops, into the spool the local engine writes."""
    state = FirstPass(config)
    budget = memory_budget_bytes(config)
    with open(spool_path, "wb") as spool:
        for rank in tqdm(range(tasks), desc="assemble", unit="task", mininterval=1.0):
            filtered, counts = rank_files(work, rank)
            after_filters = merge_counts(state, counts)
            reasons = np.zeros(after_filters, dtype=np.uint8)
            if dedup:
                with np.load(drops_file(work, rank)) as drops:
                    reasons[drops["near"]], reasons[drops["exact"]] = 2, 1
                state.counts["after_exact_dedup"] += after_filters - int((reasons == 1).sum())
            else:
                state.counts["after_exact_dedup"] += after_filters
            for index, text in enumerate(spool_read(filtered)):
                if reasons[index]:
                    state.drop(_DROP_REASONS[reasons[index]], 1, [text])
                else:
                    state.keep(spool, text)
            if state.state_bytes > budget:
                raise DataError(f"the split keys of {state.counts['kept']:,} kept documents take "
                                f"{state.state_bytes / 2**30:.2f} GB, past --memory_budget_gb {budget / 2**30:g}: "
                                f"raise it (the working folder {work} is kept, so only the assembly reruns)")
    return state


def remove_work_directory(config: DataConfig, fingerprint: str) -> None:
    """After the output is published: the working folder is no longer needed."""
    shutil.rmtree(work_directory(config, fingerprint), ignore_errors=True)
