"""make bench-export (stage 07): export time and file size per output type for tiny and base, then llama.cpp's
decode rate on the exported files beside our engine's on the same prompt, machine and thread count, in one run.

Models: random initialisations of the presets' shapes with a RANDOM_VOCAB-piece tokenizer (the weights' values do not
change sizes or speeds; the report states the vocabulary), or the directories given with --model_path. llama.cpp
rows need llama-cpp-python (make install-llama-cpp); without it they are left out and the report says so.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.benchmarks.common import MIB, format_number, format_table, machine_info
from utils.benchmarks.serve import (
    BATCH1_RUNS,
    BATCH1_TOKENS,
    PROMPT,
    RANDOM_VOCAB,
    Latency,
    engine_latency,
    median_latency,
    random_model,
)
from utils.export.config import OUTTYPES, ExportConfig
from utils.export.writer import export_gguf
from utils.lm.model import count_parameters, load_preset

log = logging.getLogger(__name__)

PRESETS = ("tiny", "base")
DECODE_OUTTYPES = ("f32", "f16", "q8_0")  # llama.cpp rows; bf16 matrices have no fast kernel on AVX2-only CPUs
LLAMA_CPP_CONTEXT = 512


@dataclass
class ExportRow:
    model: str
    outtype: str
    seconds: float
    size_mib: float


@dataclass
class ModelBench:
    name: str
    params: int
    exports: list[ExportRow] = field(default_factory=list)
    decode: list[Latency] = field(default_factory=list)


@dataclass
class ExportBench:
    machine: dict[str, str]
    threads: int
    models: list[ModelBench]
    llama_cpp_note: str | None  # why the llama.cpp rows are missing


def llama_cpp_missing() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (make install-llama-cpp)"
    return None


def llama_cpp_latency(path: Path, threads: int, outtype: str) -> Latency:
    """Greedy decoding in llama.cpp, EOS ignored as in our engine rows: TTFT and the rate after the first token."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=LLAMA_CPP_CONTEXT, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    prompt = llm.tokenize(PROMPT.encode("utf-8"), add_bos=False, special=False)
    samples = []
    for run in range(BATCH1_RUNS + 1):  # the first run warms up
        start = time.perf_counter()
        first, count = None, 0
        for _ in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            count += 1
            first = first or time.perf_counter()
            if count == BATCH1_TOKENS:
                break
        if run:
            samples.append((first - start, time.perf_counter() - first, count))
    return median_latency(f"llama.cpp {outtype}, {threads} thread(s)", samples, len(prompt))


def bench_model(name: str, model_path: Path, work_dir: Path, threads: int, with_llama_cpp: bool) -> ModelBench:
    from utils.lm.loading import load_model

    bench = ModelBench(name, load_model(model_path).params_total)
    files = {}
    for outtype in OUTTYPES:
        output = work_dir / f"{name}-{outtype}.gguf"
        result = export_gguf(ExportConfig(model_path=str(model_path), outtype=outtype, output=str(output)))
        bench.exports.append(ExportRow(name, outtype, result.seconds, result.size_bytes / MIB))
        files[outtype] = result.path
    bench.decode.append(engine_latency(model_path, "cpu", threads))
    if with_llama_cpp:
        bench.decode += [llama_cpp_latency(files[t], threads, t) for t in DECODE_OUTTYPES]
    for path in files.values():
        path.unlink()  # base's four files are ~1 GB together
    return bench


def run_benchmark(model_paths: dict[str, Path] | None, work_dir: Path) -> ExportBench:
    threads = os.cpu_count() or 1
    note = llama_cpp_missing()
    models = []
    for name in (model_paths or {preset: None for preset in PRESETS}):
        path = (model_paths or {}).get(name) or random_model(work_dir, name)
        log.info("bench-export: %s (%s)", name, path)
        models.append(bench_model(name, path, work_dir, threads, note is None))
    return ExportBench(machine_info(), threads, models, note)


def format_report(result: ExportBench) -> str:
    machine = result.machine
    exports = format_table(["model", "outtype", "export s", "file MiB"],
                           [[row.model, row.outtype, format_number(row.seconds, 1), format_number(row.size_mib, 1)]
                            for bench in result.models for row in bench.exports])
    decode = format_table(["model", "decoder", "runs", "prompt tok", "new tok", "TTFT ms", "decode tok/s"],
                          [[bench.name, r.label, str(r.runs), str(r.prompt_tokens), format_number(r.new_tokens, 0),
                            format_number(r.ttft_ms, 1), format_number(r.decode_tokens_per_s, 1)]
                           for bench in result.models for r in bench.decode])
    params = ", ".join(f"{b.name} {b.params / 1e6:.1f}M parameters" for b in result.models)
    shapes = ", ".join(f"{p}: {count_parameters(load_preset(p).model)}" for p in PRESETS)
    return "\n\n".join([
        f"Lumi export benchmark (stage 07: GGUF)\nmachine: {machine['processor']}, {machine['cpus']} CPUs, "
        f"{machine['python']}\nmodels: {params} (random weights, {RANDOM_VOCAB}-piece vocabulary unless given; "
        f"at the presets' own vocabulary, {shapes})",
        exports + "\nexport s: loading the directory, checks, conversion and writing the file, end to end.",
        decode + f"\nBatch 1, greedy, {BATCH1_TOKENS} tokens with EOS ignored, median of {BATCH1_RUNS} runs after a "
        f"warm-up, same prompt; {result.threads} threads for both."
        + (f"\nllama.cpp: not measured ({result.llama_cpp_note})." if result.llama_cpp_note else ""),
    ])
