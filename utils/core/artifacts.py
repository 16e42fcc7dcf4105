"""Artifact directories: built in a temporary sibling, swapped in only when complete, with a meta.json.

Every stage writes its output this way, so a crash or a bad input never leaves a half-written
directory where a good one used to be.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

META_NAME = "meta.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_meta(directory: Path, **fields: Any) -> Path:
    meta = {"git_sha": git_sha(), "created_unix": int(time.time()), **fields}
    path = directory / META_NAME
    write_json(path, meta)
    return path


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _clear_leftovers(final: Path) -> None:
    """Remove the `.<name>.tmp-<pid>` / `.<name>.old-<pid>` directories of killed writers of `final` (a SIGKILL runs
    no cleanup); a writer killed between its two renames left no `final`: its `.old-<pid>` is put back."""
    prefix = f".{final.name}."
    for path in final.parent.iterdir():
        kind, _, pid = path.name[len(prefix):].partition("-")
        if not path.name.startswith(prefix) or kind not in ("tmp", "old") or not pid.isdigit() \
                or _pid_alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            os.replace(path, final)
            log.warning("restored %s from %s (its writer was killed while swapping it)", final, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a killed writer", path)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `final`, on any error it is removed.

    The previous `final` is moved aside first and deleted only after the new one is in place. What a killed
    writer of `final` left behind is cleared first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
