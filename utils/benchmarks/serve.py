"""Serving benchmark (stage 06).

    make bench-serve                   # make bench-serve MODEL=<a final/ or merged/ directory>

Batch 1: time to first token and decode tokens/s of the engine in process (1 thread and torch's default; on CUDA too
when there is a GPU), through the HTTP server (streamed) and through the chat page at / in headless Chromium (Send
to the first rendered token; when make install-browser has run). Load: 64 concurrent streaming requests against a
real uvicorn subprocess (--max_concurrent 1) with the default queue of 16 (the rest must get 429) and with a queue
of 64 (all served), reporting statuses, latency percentiles, total tokens/s and the server's RSS before, at peak and
after. Checks are correctness, not speed: no status but 200/429, memory back to its baseline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.benchmarks.common import MIB, TargetCheck, format_checks, format_number, format_table, machine_info
from utils.benchmarks.web import browser_missing, page_samples
from utils.core.artifacts import REPO_ROOT
from utils.core.errors import DataError
from utils.lm.model import load_preset

DEFAULT_MODEL = REPO_ROOT / "checkpoints" / "pretrain" / "tiny" / "final"
PROMPT = "Once upon a time, a little fox found a shiny stone in the forest."
BATCH1_RUNS = 5
BATCH1_TOKENS = 128
LOAD_REQUESTS = 64
LOAD_TOKENS = 64
QUEUE_SIZES = (16, 64)  # the server's default --max_queue, then one that admits every request
SERVER_THREADS = 1  # --cpu_threads of the server: batch-1 decoding of small models gains nothing from more
MEMORY_RATIO_TARGET = 1.10  # RSS after the burst over RSS before it
SETTLE_S = 2.0  # after the burst, before RSS is read again
RSS_SAMPLE_S = 0.05
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 600.0
RANDOM_STORIES = 2000  # for the stand-in model when no trained one exists
RANDOM_VOCAB = 1024


@dataclass
class Latency:
    """Batch-1 figures: medians over `runs` generations of `new_tokens` tokens."""

    label: str
    runs: int
    prompt_tokens: int
    new_tokens: float
    ttft_ms: float
    decode_tokens_per_s: float


@dataclass
class LoadRun:
    max_queue: int
    requests: int
    statuses: dict[str, int]
    served_p50_s: float | None
    served_p95_s: float | None
    rejected_p50_ms: float | None
    completion_tokens: int
    wall_s: float
    rss_baseline_mib: float
    rss_peak_mib: float
    rss_after_mib: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s

    @property
    def unexpected(self) -> int:
        return sum(n for status, n in self.statuses.items() if status not in ("200", "429"))

    @property
    def expected_share(self) -> float:
        return 1 - self.unexpected / self.requests


@dataclass
class BenchResult:
    machine: dict[str, str]
    model: str
    model_note: str
    torch_version: str
    gpu: str | None
    load_average: tuple[float, float]
    latency: list[Latency]
    load: list[LoadRun]
    checks: list[TargetCheck]
    page_note: str | None = None  # why the chat page row is missing


def model_to_serve(requested: Path | None, work_dir: Path) -> tuple[Path, str]:
    """The model to serve and a note on what it is: the requested/default trained tiny, else a random stand-in."""
    path = requested or DEFAULT_MODEL
    if (path / "config.json").is_file():
        return path, "trained checkpoint"
    if requested is not None:
        raise DataError(f"{requested} is not a model directory (no config.json); pass a final/ or merged/ directory")
    return random_model(work_dir), (f"{DEFAULT_MODEL} is missing, so a RANDOM tiny-preset model with a "
                                          f"{RANDOM_VOCAB}-piece tokenizer stands in (same shapes and speed)")


def random_model(work_dir: Path, preset: str = "tiny") -> Path:
    """A randomly initialised model of `preset`'s shape with a RANDOM_VOCAB-piece tokenizer trained on demo text."""
    from utils.data.demo_corpus import iter_demo_stories
    from utils.lm.model import build_model
    from utils.lm.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer

    sample = work_dir / "sample.txt"
    sample.write_text("\n".join(iter_demo_stories(0, RANDOM_STORIES)), encoding="utf-8")
    out = train_tokenizer(sample, work_dir / f"random-{preset}", RANDOM_VOCAB)
    shape = dataclasses.replace(load_preset(preset).model, vocab_size=RANDOM_VOCAB)
    build_model(shape, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(out)
    return out


def median_latency(label: str, samples: list[tuple[float, float, int]], prompt_tokens: int) -> Latency:
    """samples: (seconds to the first token, seconds after it to the last, tokens) per run."""
    ttft = statistics.median(s[0] for s in samples)
    rate = statistics.median((s[2] - 1) / s[1] for s in samples if s[2] > 1 and s[1] > 0)
    return Latency(label, len(samples), prompt_tokens, statistics.median(s[2] for s in samples),
                        1000 * ttft, rate)


def engine_latency(model_path: Path, device: str, threads: int | None) -> Latency:
    """TTFT and decode rate of the engine itself: greedy, EOS ignored so every run makes the same number of tokens."""
    import torch

    from utils.lm.generation import GenerationParams, TextGenerator, iter_token_ids
    from utils.lm.loading import load_model

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        loaded = load_model(model_path, device=device)
        gen = TextGenerator(loaded.model, loaded.tokenizer)
        params = GenerationParams(max_new_tokens=BATCH1_TOKENS)
        samples = []
        for run in range(BATCH1_RUNS + 1):  # the first run warms up
            start = time.perf_counter()
            tokens = iter_token_ids(loaded.model, gen.encode(PROMPT), params, stop_ids=set())
            next(tokens)
            first = time.perf_counter()
            count = 1 + sum(1 for _ in tokens)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if run:
                samples.append((first - start, time.perf_counter() - first, count))
        label = f"engine, {device}" + (f", {torch.get_num_threads()} thread(s)" if device == "cpu" else "")
        return median_latency(label, samples, len(gen.encode(PROMPT)))
    finally:
        torch.set_num_threads(default_threads)


class _ServerProcess:
    """scripts/06_serve.py --mode api in a subprocess on a free loopback port; stopped with Ctrl-C (SIGINT)."""

    def __init__(self, model_path: Path, max_queue: int) -> None:
        import socket
        import subprocess
        import sys

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(REPO_ROOT / "scripts" / "06_serve.py"), "--mode", "api", "--model_path",
                   str(model_path), "--port", str(port), "--max_queue", str(max_queue), "--cpu_threads",
                   str(SERVER_THREADS)]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def wait_healthy(self) -> None:
        import httpx2

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{self.url}/health").status_code == 200:
                    return
            time.sleep(0.2)
        self.log.seek(0)
        raise DataError(f"the server did not become healthy; its output:\n{self.log.read()[-3000:]}")

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / MIB

    def stop(self) -> None:
        import signal

        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except Exception:
            self.process.kill()
            raise
        finally:
            self.log.close()


async def _stream(client: Any, url: str) -> tuple[int, float, float | None, int]:
    """One streamed chat request: (status, total seconds, seconds to the first content delta, completion tokens)."""
    import json

    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": LOAD_TOKENS,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
        return response.status_code, time.perf_counter() - start, first, tokens


def http_latency(server: _ServerProcess, prompt_tokens: int) -> Latency:
    import asyncio

    import httpx2

    async def run() -> list[tuple[float, float, int]]:
        samples = []
        async with httpx2.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            for index in range(BATCH1_RUNS + 1):
                status, total, first, tokens = await _stream(client, server.url)
                if status != 200 or first is None:
                    raise DataError(f"a batch-1 request failed with status {status}")
                if index:
                    samples.append((first, total - first, tokens))
        return samples

    return median_latency(f"HTTP stream (chat template), --cpu_threads {SERVER_THREADS}",
                           asyncio.run(run()), prompt_tokens)


def _percentile(values: list[float], fraction: float) -> float | None:
    return float(np.percentile(values, 100 * fraction)) if values else None


def measure_load(server: _ServerProcess, max_queue: int) -> LoadRun:
    """LOAD_REQUESTS streaming requests at once; the server's RSS sampled throughout."""
    import asyncio
    import gc

    import httpx2

    gc.collect()
    baseline = server.rss_mib()

    async def burst() -> tuple[list[tuple[int, float, float | None, int]], float, float]:
        peak = baseline
        limits = httpx2.Limits(max_connections=LOAD_REQUESTS, max_keepalive_connections=LOAD_REQUESTS)
        async with httpx2.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
            start = time.perf_counter()
            tasks = [asyncio.create_task(_stream(client, server.url)) for _ in range(LOAD_REQUESTS)]
            while not all(task.done() for task in tasks):
                peak = max(peak, server.rss_mib())
                await asyncio.sleep(RSS_SAMPLE_S)
            wall = time.perf_counter() - start
        return [task.result() for task in tasks], wall, peak

    results, wall, peak = asyncio.run(burst())
    time.sleep(SETTLE_S)
    statuses: dict[str, int] = {}
    for status, *_ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    served = [total for status, total, _, _ in results if status == 200]
    rejected = [1000 * total for status, total, _, _ in results if status == 429]
    return LoadRun(max_queue, len(results), statuses, _percentile(served, 0.5), _percentile(served, 0.95),
                        _percentile(rejected, 0.5), sum(r[3] for r in results), wall, baseline, peak,
                        server.rss_mib())


def _checks(load: Sequence[LoadRun]) -> list[TargetCheck]:
    checks = []
    for run in load:
        checks.append(TargetCheck(f"share of streams ending 200 or 429, queue {run.max_queue}", run.expected_share,
                                  1.0, ""))
        checks.append(TargetCheck(f"server RSS after / before the burst, queue {run.max_queue}",
                                  run.rss_after_mib / run.rss_baseline_mib, MEMORY_RATIO_TARGET, "x",
                                  higher_is_better=False))
    return checks


def run_benchmark(requested_model: Path | None, work_dir: Path) -> BenchResult:
    import torch

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request would bury the report
    load_before = os.getloadavg()[0]
    model_path, note = model_to_serve(requested_model, work_dir)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    latency = [engine_latency(model_path, "cpu", threads) for threads in (1, None)]
    if gpu:
        latency.append(engine_latency(model_path, "cuda", None))
    load, page_note = [], None
    for max_queue in QUEUE_SIZES:
        server = _ServerProcess(model_path, max_queue)
        try:
            server.wait_healthy()
            http = http_latency(server, latency[0].prompt_tokens)
            if max_queue == QUEUE_SIZES[0]:
                latency.append(http)  # the batch-1 HTTP figure once; the second server only warms up with it
                page_note = browser_missing()
                if page_note is None:
                    latency.append(median_latency("chat page, headless Chromium (Send to first rendered token)",
                                                   page_samples(server.url, PROMPT, LOAD_TOKENS, BATCH1_RUNS),
                                                   latency[0].prompt_tokens))
            load.append(measure_load(server, max_queue))
        finally:
            server.stop()
    return BenchResult(machine_info(), str(model_path), note, torch.__version__, gpu,
                       (load_before, os.getloadavg()[0]), latency, load, _checks(load), page_note)


def _latency_table(rows: Sequence[Latency]) -> str:
    return format_table(["batch 1 (median of runs)", "runs", "prompt tok", "new tok", "TTFT ms", "decode tok/s"],
                        [[r.label, str(r.runs), str(r.prompt_tokens), format_number(r.new_tokens, 0),
                          format_number(r.ttft_ms, 1), format_number(r.decode_tokens_per_s, 1)] for r in rows])


def _load_table(runs: Sequence[LoadRun]) -> str:
    rows = [[f"{r.requests} streams, max_queue {r.max_queue}", str(r.statuses.get("200", 0)),
             str(r.statuses.get("429", 0)), str(r.unexpected), format_number(r.served_p50_s, 2),
             format_number(r.served_p95_s, 2), format_number(r.rejected_p50_ms, 0), format_number(r.tokens_per_s, 1),
             format_number(r.rss_baseline_mib, 0), format_number(r.rss_peak_mib, 0), format_number(r.rss_after_mib, 0)]
            for r in runs]
    return format_table(["concurrent load", "200", "429", "other", "p50 s", "p95 s", "429 p50 ms", "total tok/s",
                         "RSS before MiB", "peak", "after"], rows)


def format_report(result: BenchResult) -> str:
    machine = result.machine
    return "\n\n".join([
        f"Lumi serving benchmark (stage 06)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}, torch {result.torch_version}; GPU: {result.gpu or 'none'}\n"
        f"model: {result.model} ({result.model_note})\nload average (1 min): {result.load_average[0]:.2f} before, "
        f"{result.load_average[1]:.2f} after (other work on the machine slows every figure)",
        _latency_table(result.latency) + f"\nTTFT: prefill of the prompt and the first token (HTTP: to the "
        f"first content delta, template and SSE included); decode: the tokens after the first over their time. "
        f"Engine rows ignore EOS to make {BATCH1_TOKENS} tokens every run; HTTP rows stop at EOS or "
        f"{LOAD_TOKENS} tokens."
        + (f"\nChat page: not measured ({result.page_note})." if result.page_note else
           "\nChat page: the same streamed request sent by the page at / and timed by it (performance.now(), Send "
           "to the first token in the DOM), the browser on the same CPUs.")
        + ("" if result.gpu else "\nGPU: not measured (no CUDA device here); on a GPU machine "
                                 "`make bench-serve MODEL=<base final/>` adds an engine row on cuda."),
        _load_table(result.load) + f"\nOne server per row (--max_concurrent 1, --cpu_threads "
        f"{SERVER_THREADS}); each stream asks for up to {LOAD_TOKENS} tokens at temperature 0. p50/p95: "
        f"latency of the served (200) streams, request to [DONE]; total tok/s: completion tokens of all streams over "
        f"the burst's wall time; RSS of the server process, 'after' read {SETTLE_S:g} s after the burst.",
        format_checks(result.checks),
    ])
