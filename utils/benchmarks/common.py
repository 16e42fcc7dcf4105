"""What every benchmark shares: figures against named targets (TargetCheck; TargetMissed, exit code 3), the machine
description, plain-text tables and figures, emit_report (print the report, save the result as JSON), and
run_in_fresh_process (a measurement in a freshly spawned interpreter, so that its peak memory and warm-up are its
own) with the peak-RSS helper. Figures are printed, never asserted in tests.

torch is imported inside functions only, here and in every benchmark module: the data benchmark's fresh processes
import this module, and ~135 MiB of torch would distort their peak-memory figures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from utils.core.cli import setup_logging
from utils.core.errors import LumiError

log = logging.getLogger(__name__)

KIB_PER_MIB = 1024
FIGURE_INTEGER_FROM = 1000
MB = 1e6
MIB = 2**20


class TargetMissed(LumiError):
    """A benchmark ran to completion but at least one figure missed its target."""

    exit_code = 3


@dataclass
class TargetCheck:
    """One figure against its target; `passed` is computed."""

    name: str
    value: float
    target: float
    unit: str
    higher_is_better: bool = True
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.value >= self.target if self.higher_is_better else self.value <= self.target

    def headroom(self) -> str:
        """How far the value is on the good side of the target, as a percentage of it (negative: missed by)."""
        ratio = self.value / self.target
        return f"{ratio - 1 if self.higher_is_better else 1 - ratio:+.0%}"


def machine_info() -> dict[str, str]:
    return {"processor": platform.processor() or platform.machine(), "cpus": str(os.cpu_count()),
            "python": f"{platform.python_implementation()} {platform.python_version()}"}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def format_checks(checks: Sequence[TargetCheck]) -> str:
    rows = [[c.name, f"{_figure(c.value)} {c.unit}", f"{'>=' if c.higher_is_better else '<='} {_figure(c.target)} "
             f"{c.unit}", c.headroom(), "PASS" if c.passed else "FAIL"] for c in checks]
    return format_table(["target", "measured", "required", "headroom", "result"], rows)


def format_number(value: float | None, digits: int) -> str:
    """`value` with `digits` decimals and thousands separators; "-" for a figure that was not measured."""
    return "-" if value is None else f"{value:,.{digits}f}"


def _figure(value: float) -> str:
    """Large figures as whole numbers, small ones with two decimals."""
    return format_number(value, 0 if abs(value) >= FIGURE_INTEGER_FROM else 2)


def emit_report(report: str, result: Any, json_path: Path | None) -> None:
    """Print a benchmark's report; with json_path, also save its result dataclass there as JSON."""
    print(report)
    if json_path:
        json_path.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n", encoding="utf-8")
        log.info("results saved to %s", json_path)


def peak_rss_kib() -> int:
    """Peak RSS of this process or of any reaped descendant (the pool workers), in KiB on Linux."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _child(function: Callable[..., Any], args: tuple[Any, ...], log_level: int, conn: Connection) -> None:
    setup_logging(log_level)
    try:
        conn.send(("ok", function(*args)))
    except LumiError as exc:
        conn.send(("error", str(exc)))
    finally:
        conn.close()


def run_in_fresh_process(function: Callable[..., Any], args: tuple[Any, ...], what: str) -> Any:
    """`function(*args)` in a freshly spawned interpreter, so that its peak memory and warm-up are its own.
    A LumiError in the child, or a child that dies, becomes a LumiError naming `what`."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, args, logging.getLogger().getEffectiveLevel(), send))
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "died", None
    process.join()
    if status != "ok":
        reason = value or f"its process exited with code {process.exitcode} and no result (see the log above)"
        raise LumiError(f"{what} failed: {reason}")
    return value


def name_and_dir(text: str) -> tuple[str, Path]:
    """argparse type of the benchmarks' repeatable NAME=DIR flags (--reuse, --model_path)."""
    import argparse

    name, sep, path = text.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=DIR (e.g. tiny=checkpoints/pretrain/tiny/final)")
    return name, Path(path)
