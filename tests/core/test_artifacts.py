"""Atomic output directories under SIGKILL: the previous output survives, and what the killed writer left is cleared
by the next write of that output (also when the kill fell between the two renames)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from utils.core.artifacts import atomic_directory

REPO = Path(__file__).resolve().parents[2]
# A writer that reports where it is, then waits on stdin until killed: inside the block, or (SWAP) right after
# it moved the previous output aside and before it renamed the new one into place.
WRITER = """
import os, sys
from pathlib import Path
from utils.core.artifacts import atomic_directory

replace = os.replace

def replace_then_wait(src, dst):
    replace(src, dst)
    print("moved aside", flush=True)
    sys.stdin.read()

with atomic_directory(Path(sys.argv[1])) as tmp:
    (tmp / "data.txt").write_text("new, half written")
    if sys.argv[2] == "swap":
        os.replace = replace_then_wait
    else:
        print("writing", flush=True)
        sys.stdin.read()
"""


def write(final: Path, text: str) -> None:
    with atomic_directory(final) as tmp:
        (tmp / "data.txt").write_text(text)


def kill_writer(final: Path, where: str) -> None:
    """Start a writer of `final`, wait until it reports reaching `where`, SIGKILL it."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(final), where], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() in ("writing", "moved aside")
    writer.kill()
    assert writer.wait() == -signal.SIGKILL
    writer.stdin.close()
    writer.stdout.close()


def test_sigkill_inside_the_block_keeps_the_old_output_and_the_next_write_clears_its_leftovers(tmp_path: Path) -> None:
    final = tmp_path / "out"
    write(final, "old")
    kill_writer(final, "block")
    assert (final / "data.txt").read_text() == "old"
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1  # no code runs at SIGKILL: the next writer clears it
    write(final, "new")
    assert (final / "data.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigkill_between_the_renames_gets_the_old_output_back(tmp_path: Path) -> None:
    final = tmp_path / "out"
    write(final, "old")
    kill_writer(final, "swap")
    assert not final.exists() and len(list(tmp_path.glob(".out.old-*"))) == 1
    with atomic_directory(final) as tmp:
        assert (final / "data.txt").read_text() == "old"  # put back before the new output is built
        (tmp / "data.txt").write_text("new")
    assert (final / "data.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
