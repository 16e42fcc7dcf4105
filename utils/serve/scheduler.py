"""Scheduling of the API's generations: Slots (the concurrency limit and the bounded queue), Job (one generation on
a worker thread) and ServerState (the model, the slots and the running jobs of one app).

Generation runs on worker threads, never on the event loop. At most --max_concurrent generations run (1 on CPU: two
would only share the same cores) and at most --max_queue more wait in line; a request beyond that is refused at once
with 429 and Retry-After, so overload never turns into timeouts or 5xx. A slot is released by the worker thread itself
when it finishes, so it is never reused while a generation still runs. A client that goes away (mid-stream, or while
waiting for a whole answer) sets its generation's cancel flag, which stops it within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from utils.lm.generation import GenerationResult, TextGenerator, TextStream
from utils.serve.config import ServeConfig
from utils.serve.errors import APIError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class Slots:
    """At most `max_active` generations at once and `max_queue` waiting; beyond that `acquire` refuses (429).
    Used from the event loop only, so the counters need no lock."""

    def __init__(self, max_active: int, max_queue: int) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self._semaphore = asyncio.Semaphore(max_active)
        self.running = 0
        self.waiting = 0

    async def acquire(self) -> None:
        if self.running + self.waiting >= self.max_active + self.max_queue:
            raise APIError(429, f"server busy: {self.running} generating and {self.waiting} waiting (limits "
                                f"--max_concurrent {self.max_active}, --max_queue {self.max_queue}); retry in a moment",
                           "rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._semaphore.release()


class Job:
    """One generation on its own worker thread; text deltas reach the event loop through an asyncio queue, and the
    thread releases the slot itself when it ends (however the request ended)."""

    _DELTA, _DONE, _FAILED = "delta", "done", "failed"

    def __init__(self, stream: TextStream, cancel: threading.Event, on_end: Callable[[Job], None]) -> None:
        self.stream, self.cancel, self._on_end = stream, cancel, on_end
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        threading.Thread(target=self._run, name="lumi-generate", daemon=True).start()

    def _put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        try:
            for delta in self.stream:
                self._put((self._DELTA, delta))
            self._put((self._DONE, self.stream.result))
        except Exception as exc:  # reported to the client; the server keeps serving
            log.exception("generation failed")
            self._put((self._FAILED, exc))
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_end, self)

    async def deltas(self) -> AsyncIterator[str]:
        while True:
            kind, value = await self._queue.get()
            if kind == self._DELTA:
                yield value
            elif kind == self._FAILED:
                raise APIError(500, f"generation failed: {value}", "server_error")
            else:
                return

    @property
    def result(self) -> GenerationResult:
        assert self.stream.result is not None, "read result only after deltas() is exhausted"
        return self.stream.result


@dataclass
class ServerState:
    config: ServeConfig
    slots: Slots
    generator: TextGenerator | None = None
    load_error: str | None = None
    jobs: set[Job] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("completed", "cancelled", "failed",
                                                                         "rejected"), 0))
    created: int = field(default_factory=lambda: int(time.time()))

    def ready(self) -> TextGenerator:
        if self.generator is None:
            detail = f"failed to load: {self.load_error}" if self.load_error else "is still loading; retry shortly"
            raise APIError(503, f"the model {detail}", "service_unavailable", code="model_not_ready",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return self.generator

    def end_job(self, job: Job) -> None:
        self.jobs.discard(job)
        self.slots.release()
        outcome = job.stream.result.finish_reason if job.stream.result else "failed"
        self.stats[outcome if outcome in ("cancelled", "failed") else "completed"] += 1
