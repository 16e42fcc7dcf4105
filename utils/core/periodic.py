"""A block during which a function runs every few seconds in a background thread (progress from files on disk,
memory samples), and once more as the block ends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class Periodic:
    def __init__(self, tick: Callable[[], None], interval: float) -> None:
        self.tick, self.interval = tick, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.tick()  # what happened since the last tick

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()
