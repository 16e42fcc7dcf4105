"""Sessions: stages run in order under time budgets, every command and its output in session.log, a report.md.

A session directory `sessions/<timestamp>-<name>/` holds `session.log` (each command, then everything it printed)
and `report.md` (what ran, how long each stage took, the key figures, where the outputs are, the next command).
A failing stage stops the session; the report and the error name the command and the log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from utils.core.errors import LumiError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSIONS_DIR = Path(os.environ.get("LUMI_SESSIONS_DIR", REPO_ROOT / "sessions"))  # tests point it at a temp dir
SERVER_START_TIMEOUT_S = 180
SERVER_POLL_S = 0.5
HTTP_TIMEOUT_S = 120


class SessionError(LumiError):
    """A stage of a session failed; the message names the command and the log."""


@dataclass
class StageRecord:
    name: str
    command: str
    seconds: float
    status: str


@dataclass
class Session:
    name: str
    directory: Path
    budget_s: float
    stages: list[StageRecord] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, name: str, budget_s: float, root: Path = SESSIONS_DIR) -> "Session":
        directory = root / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"
        directory.mkdir(parents=True)
        session = cls(name, directory, budget_s)
        session.write_log(f"# session {name} started {datetime.now().isoformat(timespec='seconds')} "
                          f"(budget {budget_s / 60:.0f} min)\n")
        log.info("session %s: logging to %s", name, session.log_path)
        return session

    @property
    def log_path(self) -> Path:
        return self.directory / "session.log"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write_log(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(text)

    def run(self, stage: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Run one stage, streaming its output to the console and the log; a failure ends the session."""
        shown = " ".join(command)
        self.write_log(f"\n$ {shown}\n")
        log.info("[%s] $ %s", stage, shown)
        start = time.perf_counter()
        with self.log_path.open("a", encoding="utf-8") as fh:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", env={**os.environ, **(env or {})})
            assert process.stdout is not None
            for line in process.stdout:
                fh.write(line)
                sys.stderr.write(line)
            code = process.wait()
        seconds = time.perf_counter() - start
        self.stages.append(StageRecord(stage, shown, seconds, "ok" if code == 0 else f"failed (exit {code})"))
        if code != 0:
            self.write_report(failed=stage)
            raise SessionError(f"session {self.name}: stage '{stage}' failed (exit {code}): {shown}\n"
                               f"  full output: {self.log_path}")

    def record(self, stage: str, seconds: float, status: str = "ok", command: str = "") -> None:
        self.stages.append(StageRecord(stage, command, seconds, status))

    def write_report(self, failed: str | None = None, next_command: str = "", notes: list[str] | None = None) -> Path:
        lines = [f"# Session `{self.name}`", "",
                 f"Started in `{self.directory}`; {'FAILED at stage ' + failed if failed else 'completed'} after "
                 f"{self.elapsed / 60:.1f} min (budget {self.budget_s / 60:.0f} min).", "",
                 "| stage | seconds | status | command |", "|---|---:|---|---|"]
        lines += [f"| {s.name} | {s.seconds:.1f} | {s.status} | `{s.command}` |" for s in self.stages]
        if self.figures:
            lines += ["", "## Key figures", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in self.figures.items()]
        if self.outputs:
            lines += ["", "## Outputs", ""] + [f"- {k}: `{v}`" for k, v in self.outputs.items()]
        if notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
        if failed:
            lines += ["", f"The stage `{failed}` failed: read `{self.log_path}` for its output."]
        if next_command:
            lines += ["", "## Next", "", f"```\n{next_command}\n```"]
        path = self.directory / "report.md"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def serve_probe(session: Session, model_path: str, prompt: str, max_tokens: int = 48) -> str:
    """Start the API server on a free loopback port, ask one chat question, stop it; return the answer."""
    port = free_port()
    command = [sys.executable, "scripts/06_serve.py", "--model_path", model_path, "--mode", "api",
               "--host", "127.0.0.1", "--port", str(port)]
    session.write_log(f"\n$ {' '.join(command)}   (background)\n")
    start = time.perf_counter()
    with session.log_path.open("a", encoding="utf-8") as fh:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(server, port)
            status, reply = _http_json(f"http://127.0.0.1:{port}/v1/chat/completions", {
                "model": Path(model_path).name, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]})
            if status != 200:
                raise SessionError(f"the API answered HTTP {status}; see {session.log_path}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    answer = reply["choices"][0]["message"]["content"]
    session.write_log(f"POST /v1/chat/completions {prompt!r} -> {answer!r}\n")
    session.record("serve (one API request)", time.perf_counter() - start, command=" ".join(command))
    return answer


def _wait_healthy(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SessionError(f"the API server exited with code {server.returncode} before it was ready")
        try:
            if _http_json(f"http://127.0.0.1:{port}/health")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(SERVER_POLL_S)
    raise SessionError(f"the API server was not healthy after {SERVER_START_TIMEOUT_S} s")
