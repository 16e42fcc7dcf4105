"""Where the datatrove engine's steps run (`--executor`): datatrove's local, Slurm or Ray executor.

Each step is a datatrove pipeline run as `tasks` ranks; datatrove marks each finished rank in
`<work>/logs/<step>/completions/`, which is what a rerun skips and what the progress bars count. The local and Ray
executors run a step and return; the Slurm executor submits every step at once as job arrays that each wait for
the one before (afterok), and this process then waits for their completion markers, so that the assembly and
pass 2 follow on the submitting machine, as with the other two.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.logging import logger as loguru_logger
from tqdm import tqdm

from utils.core.artifacts import REPO_ROOT
from utils.core.errors import ConfigError, DataError
from utils.core.periodic import Periodic
from utils.data.config import DataConfig

log = logging.getLogger(__name__)

PROGRESS_POLL_SECONDS = 1.0
SLURM_POLL_SECONDS = 5.0  # how often a waiting prepare asks squeue whether its jobs are still there
RAY_INSTALL = "pip install ray==2.60.0 (or make install-extra)"


@dataclass(frozen=True)
class Step:
    name: str
    pipeline: list[Any]
    tasks: int
    workers: int  # tasks of this step at a time


def run_steps(config: DataConfig, work: Path, steps: list[Step]) -> dict[str, float]:
    """Runs the steps in order on `config.executor`; returns each step's seconds (on Slurm: from the end of the one
    before, or the submission, to its end)."""
    _quiet_console()
    if config.executor == "slurm":
        return _run_slurm(config, work, steps)
    with contextlib.ExitStack() as stack:
        make = _local_executor if config.executor == "local" else stack.enter_context(_ray_session(config))
        seconds = {}
        for step in steps:
            start = time.perf_counter()
            _run_blocking(work, step, make(step, _logging_dir(work, step)))
            seconds[step.name] = time.perf_counter() - start
    return seconds


def _logging_dir(work: Path, step: Step) -> str:
    return str(work / "logs" / step.name)


def _run_blocking(work: Path, step: Step, executor: Any) -> None:
    done = _announce(step, executor)
    with TaskProgress(work, step, done):
        try:
            executor.run()
        except (ConfigError, DataError):
            raise
        except Exception as exc:
            raise DataError(f"datatrove step {step.name} failed: {exc}. The task logs are in "
                            f"{_logging_dir(work, step)}/logs; run the same command again to continue from the "
                            f"completed tasks") from exc
    _check_complete(work, step, executor)


def _announce(step: Step, executor: Any) -> int:
    done = step.tasks - len(executor.get_incomplete_ranks(range(step.tasks)))
    if done:
        log.info("datatrove step %s: %d of %d task(s) completed by an earlier run, skipped", step.name, done,
                 step.tasks)
    return done


def _check_complete(work: Path, step: Step, executor: Any) -> None:
    if executor.get_incomplete_ranks(range(step.tasks)):
        raise DataError(f"datatrove step {step.name} did not complete all its tasks; see "
                        f"{_logging_dir(work, step)}/logs and run the same command again (completed tasks are kept)")


def _local_executor(step: Step, logging_dir: str) -> Any:
    # fork, as the local engine's pool: the tasks inherit the loaded modules instead of importing them again.
    return QuietLocalExecutor(step.pipeline, tasks=step.tasks, workers=min(step.workers, step.tasks),
                              logging_dir=logging_dir, start_method="fork")


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor with each task's log in its file only: datatrove copies the log of the task that
    runs as local rank 0 to the console, which would bury stage 01's own progress (errors still show)."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        try:
            return super()._run_for_rank(rank, local_rank + 1, node_rank)
        finally:
            _quiet_console()  # datatrove restores its default console log after each task


def _quiet_console() -> None:
    loguru_logger.remove()
    loguru_logger.add(sys.stderr, level="WARNING", format="datatrove {level}: {message}")


@contextlib.contextmanager
def _ray_session(config: DataConfig) -> Iterator[Callable[[Step, str], Any]]:
    """Connects to --ray_address (or starts a local Ray instance, stopped afterwards) and yields a maker of
    datatrove's Ray executor for a step."""
    try:
        import ray
        from datatrove.executor import RayPipelineExecutor
    except ImportError as exc:
        raise ConfigError(f"--executor ray needs Ray: {RAY_INSTALL}") from exc
    started = not ray.is_initialized()
    if started:
        # The tasks unpickle stage 01's steps, so they import this repository: a cluster needs it at the same path
        # on every node, as it needs the working folder (datatrove's requirement too).
        ray.init(address=config.ray_address, num_cpus=None if config.ray_address else max(1, config.num_workers),
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}, include_dashboard=False,
                 log_to_driver=False)
        log.info("Ray: %s", "connected to " + config.ray_address if config.ray_address else "a local instance")

    def make(step: Step, logging_dir: str) -> Any:
        return RayPipelineExecutor(step.pipeline, tasks=step.tasks, workers=step.workers, logging_dir=logging_dir,
                                   cpus_per_task=1, mem_per_cpu_gb=config.task_memory_gb)

    try:
        yield make
    finally:
        if started:
            ray.shutdown()


def _run_slurm(config: DataConfig, work: Path, steps: list[Step]) -> dict[str, float]:
    from datatrove.executor import SlurmPipelineExecutor

    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise ConfigError("--executor slurm runs Slurm's sbatch and squeue, which are not on PATH here: run the "
                          "prepare command on a machine of the cluster (a login node or inside salloc)")
    executors: list[Any] = []
    for step in steps:
        executors.append(SlurmPipelineExecutor(
            step.pipeline, tasks=step.tasks, time=config.slurm_time, partition=config.slurm_partition,
            cpus_per_task=1, mem_per_cpu_gb=config.task_memory_gb, workers=step.workers,
            job_name=_job_name(config, step), qos="", env_command=slurm_env_command(config),
            logging_dir=_logging_dir(work, step), depends=executors[-1] if executors else None,
            sbatch_args=_sbatch_args(config)))
    dones = [_announce(step, executor) for step, executor in zip(steps, executors)]
    start = time.perf_counter()
    executors[-1].run()  # submits each incomplete step, the dependencies first
    jobs = [str(executor.job_id) for executor in executors]  # "-1": already complete, nothing submitted
    log.info("Slurm: submitted job(s) %s; waiting for them (the prepare may be interrupted and rerun: completed "
             "tasks are kept, incomplete ones resubmitted)", ", ".join(j for j in jobs if j != "-1") or "none")
    seconds = {}
    try:
        for step, job, done in zip(steps, jobs, dones):
            _wait_for_slurm(work, step, done, job)
            seconds[step.name] = time.perf_counter() - start  # from the previous step's end (or the submission)
            start += seconds[step.name]
    except BaseException:
        _cancel(config, steps)  # what waits on a failed step would pend forever (DependencyNeverSatisfied)
        raise
    return seconds


def slurm_env_command(config: DataConfig) -> str:
    """What a Slurm task runs before datatrove's launcher: --slurm_env_command, or this interpreter's virtual
    environment and this repository on PYTHONPATH (the steps are unpickled there, so they import it)."""
    if config.slurm_env_command:
        return config.slurm_env_command
    commands = []
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        commands.append(f"source {shlex.quote(str(activate))}")
    commands.append(f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}")
    return " && ".join(commands)


def _sbatch_args(config: DataConfig) -> dict[str, str]:
    return {"account": config.slurm_account} if config.slurm_account else {}


def _wait_for_slurm(work: Path, step: Step, done: int, job: str) -> None:
    """Until the step's tasks are complete, or its job array has left the queue without completing them."""
    with TaskProgress(work, step, done) as progress:
        last_check = time.monotonic()
        while progress.done < step.tasks:
            time.sleep(PROGRESS_POLL_SECONDS)
            progress.update()
            if time.monotonic() - last_check >= SLURM_POLL_SECONDS:
                last_check = time.monotonic()
                if job not in _queued_jobs():
                    progress.update()  # its last task may have completed since the count above
                    break
    if progress.done < step.tasks:
        raise DataError(f"the Slurm jobs of datatrove step {step.name} ended with {step.tasks - progress.done} of "
                        f"{step.tasks} task(s) incomplete; see the task logs in {_logging_dir(work, step)}/logs and "
                        f"Slurm's in {_logging_dir(work, step)}/slurm_logs, then run the same command again "
                        f"(completed tasks are kept)")


def _job_name(config: DataConfig, step: Step) -> str:
    return f"lumi-{config.name}-{step.name}"


def _cancel(config: DataConfig, steps: list[Step]) -> None:
    """Cancels this prepare's jobs still queued: the steps' arrays and datatrove's stats jobs, which share a name."""
    names = [_job_name(config, step) for step in steps]
    for name in names:  # scancel takes one name at a time
        subprocess.run(["scancel", "--me", f"--name={name}"], capture_output=True, timeout=60)
    log.info("Slurm: cancelled this prepare's queued jobs (%s)", ", ".join(names))


def _queued_jobs() -> set[str]:
    """This user's jobs Slurm still has pending or running, by (array) job id."""
    result = subprocess.run(["squeue", "--me", "--noheader", "--format=%F"], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise DataError(f"squeue failed while waiting for the Slurm jobs: {result.stderr.strip()}")
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


class TaskProgress(Periodic):
    """A progress bar with ETA over a step's tasks, counting the completion markers datatrove writes (every
    PROGRESS_POLL_SECONDS, in a thread, while a blocking executor runs)."""

    def __init__(self, work: Path, step: Step, done: int) -> None:
        super().__init__(self.update, PROGRESS_POLL_SECONDS)
        self.folder = work / "logs" / step.name / "completions"
        self.done = done
        self.bar = tqdm(total=step.tasks, initial=done, desc=f"datatrove {step.name}", unit="task", mininterval=1.0)
        self.lock = threading.Lock()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.bar.close()

    def update(self) -> None:
        with self.lock:
            self.done = sum(1 for _ in self.folder.iterdir()) if self.folder.is_dir() else 0
            self.bar.update(max(0, self.done - self.bar.n))
