"""A real uvicorn server over the serving test model on a free loopback port, shared by the API and web tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the pinned openai package ships with
import uvicorn

from utils.lm.loading import LoadedModel
from utils.serve.api import create_app
from utils.serve.config import ServeConfig

LOOPBACK = "127.0.0.1"
TIMEOUT_S = 30
LONG = 1500  # tokens: a generation that runs for seconds, to cancel or to keep a slot busy
USER = [{"role": "user", "content": "Tell me a story about a fox."}]


class LiveServer:
    """uvicorn serving `app` on a free loopback port in a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.url = f"http://{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.lumi

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT_S)
        self.sock.close()

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)


def serve(serve_model_dir: Path, loaded: LoadedModel, **overrides: Any) -> LiveServer:
    config = ServeConfig(**{"model_path": str(serve_model_dir), "mode": "api", "temperature": 0.0,
                            "max_new_tokens": 8, **overrides})
    return LiveServer(create_app(config, load=lambda: loaded))


@contextlib.contextmanager
def open_stream(http: httpx.Client, max_tokens: int = LONG) -> Iterator[Iterator[str]]:
    """A chat stream that has produced its first content delta (so its generation holds a slot)."""
    body = {"messages": USER, "max_tokens": max_tokens, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        contents = (line for line in lines if line.startswith("data: ") and '"content": "' in line)
        next(contents), next(contents)  # the role chunk, then the first content delta
        yield lines
