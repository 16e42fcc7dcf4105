"""The rows of `make gpu-check` after pretraining: SFT (full and LoRA), DPO, evaluation, the API under concurrent
streams, flash-attn. Each takes the Context of utils/benchmarks/gpu_rows.py and returns its figures and a one-line
summary, or raises NotRun saying why it cannot run here.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from utils.benchmarks.common import TargetCheck
from utils.benchmarks.gpu_rows import (
    MIB,
    Context,
    NotRun,
    run_pretrain,
    tiny_overrides,
    tiny_preset_path,
    train_records,
)
from utils.core.artifacts import read_json
from utils.core.errors import LumiError

SERVE_PROMPT = "Tom went to the park and found a red ball. What did Tom find?"
SERVE_START_TIMEOUT_S = 120.0
SERVE_POLL_S = 0.1
HTTP_OK = 200
SSE_DATA, SSE_DONE = "data: ", "data: [DONE]"


def finetune_values(ctx: Context, stage: str, run_name: str, model: Path) -> dict[str, Any]:
    sizes, data = ctx.sizes, ctx.need("data")
    return {"model_path": str(model), "dataset_path": str(data / "demo" / f"{stage}_train.json"),
            "output_dir": str(ctx.work / stage), "run_name": run_name, "overwrite": True,
            "max_steps": sizes.finetune_steps, "batch_size": sizes.finetune_batch, "logging_steps": 1,
            "eval_steps": sizes.finetune_steps, "save_steps": sizes.finetune_steps,
            "max_samples": sizes.finetune_samples, "gain_eval_size": sizes.gain_items, "validation_split": 0.05,
            "mixed_precision": ctx.precision}


def finetune_figures(run_dir: Path) -> tuple[dict[str, Any], str]:
    meta = read_json(run_dir / "meta.json")
    records = train_records(run_dir)
    gain, timing = meta["gain"] or {}, meta["timing"]
    figures = {"steps": meta["steps"], "steps_per_s": timing["steps_per_s"], "train_s": timing["train_s"],
               "peak_memory_mb": max((r["memory_mb"] for r in records), default=None),
               "peak_reserved_mb": max((r.get("memory_reserved_mb", 0.0) for r in records), default=None),
               "gain": gain, "stop_reason": meta["stop_reason"]}
    shown = f"{gain['metric']} {100 * gain['before']:.0f}% -> {100 * gain['after']:.0f}%" if gain else "no gain items"
    memory = f"{figures['peak_reserved_mb']:,.0f} MiB reserved" if figures["peak_reserved_mb"] else \
        f"{figures['peak_memory_mb'] or 0:,.0f} MiB"
    return figures, f"{meta['steps']} steps, {timing['steps_per_s'] or 0:.2f} steps/s, {memory}; {shown}"


def check_sft(ctx: Context, full: bool) -> tuple[dict[str, Any], str]:
    from utils.core.config import load_config
    from utils.finetune.sft import SFTStageConfig, run_sft

    name = "full" if full else "lora-grad-ckpt"
    values = {**finetune_values(ctx, "sft", name, ctx.need("tiny")), "full": full,
              "gradient_checkpointing": not full, "gain_max_new_tokens": 16}
    run_dir = run_sft(load_config(SFTStageConfig, None, values))
    if full:
        ctx.outputs["sft"] = run_dir / "merged"
    return finetune_figures(run_dir)


def check_dpo(ctx: Context) -> tuple[dict[str, Any], str]:
    from utils.core.config import load_config
    from utils.finetune.dpo import DPOStageConfig, run_dpo

    values = {**finetune_values(ctx, "dpo", "lora", ctx.need("sft")), "loss_type": ["sigmoid", "sft"]}
    run_dir = run_dpo(load_config(DPOStageConfig, None, values))
    ctx.outputs["dpo"] = run_dir / "merged"
    return finetune_figures(run_dir)


def check_evaluate(ctx: Context) -> tuple[dict[str, Any], str]:
    from utils.core.config import load_config
    from utils.eval.evaluate import EvalConfig, evaluate_model

    config = load_config(EvalConfig, None, {
        "model_path": str(ctx.need("dpo")), "tasks": ["demo_mc", "smoke"], "fast_mode": True,
        "demo_mc_path": str(ctx.need("data") / "demo" / "mc_validation.jsonl"), "limit": ctx.sizes.eval_limit,
        "max_new_tokens": ctx.sizes.eval_new_tokens, "output_dir": str(ctx.work / "evaluation"),
        "run_name": "gpu-check"})
    results = read_json(evaluate_model(config) / "results.json")
    demo = results["tasks"]["demo_mc"]
    figures = {"demo_mc": demo, "smoke_mean_score": results["smoke"]["mean_score"], "timing": results.get("timing")}
    return figures, (f"demo MC {100 * demo['acc']:.1f}% (n={demo['n']}), smoke quality "
                     f"{results['smoke']['mean_score']:.2f}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_serve(ctx: Context) -> tuple[dict[str, Any], str]:
    import torch
    import uvicorn

    from utils.serve.api import create_app
    from utils.serve.config import ServeConfig

    sizes = ctx.sizes
    config = ServeConfig(model_path=str(ctx.need("dpo")), mode="api", port=free_port(), temperature=0.0,
                         max_concurrent=sizes.serve_streams, max_queue=sizes.serve_streams)
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://{config.host}:{config.port}"
        _wait_healthy(base, app)
        started = time.perf_counter()
        streams = _concurrent_streams(base, sizes.serve_streams, sizes.serve_tokens)
        wall = time.perf_counter() - started
    finally:
        server.should_exit = True
        thread.join()
    model = app.state.lumi.generator.model
    statuses = sorted({s["status"] for s in streams})
    tokens = sum(s["tokens"] for s in streams)
    ctx.checks.append(TargetCheck(f"serve: {sizes.serve_streams} concurrent streams answered 200",
                                  float(sum(s["status"] == HTTP_OK for s in streams)), float(sizes.serve_streams), ""))
    reserved = torch.cuda.max_memory_reserved() / MIB if torch.cuda.is_available() else None
    figures = {"streams": streams, "statuses": statuses, "tokens_per_s": tokens / wall,
               "ttft_s_median": statistics.median(s["ttft_s"] for s in streams), "dtype": str(next(
                   model.parameters()).dtype), "device": str(next(model.parameters()).device),
               "peak_reserved_mib": reserved}
    return figures, (f"{sizes.serve_streams} streams, statuses {statuses}, {tokens / wall:,.0f} tok/s in all, TTFT "
                     f"median {figures['ttft_s_median'] * 1e3:.0f} ms; {figures['dtype']} on {figures['device']}")


def _wait_healthy(base: str, app: Any) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if app.state.lumi.load_error:
            raise LumiError(f"the server could not load the model: {app.state.lumi.load_error}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=SERVE_POLL_S * 10) as response:
                if response.status == HTTP_OK:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(SERVE_POLL_S)
    raise LumiError(f"the server at {base} was not healthy after {SERVE_START_TIMEOUT_S:.0f} s")


def _concurrent_streams(base: str, count: int, max_tokens: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(count)]
    threads = [threading.Thread(target=_one_stream, args=(base, max_tokens, results, i)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _one_stream(base: str, max_tokens: int, results: list[dict[str, Any]], index: int) -> None:
    """One streamed chat completion: status, time to the first content delta, completion tokens."""
    body = {"messages": [{"role": "user", "content": SERVE_PROMPT}], "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(request, timeout=SERVE_START_TIMEOUT_S) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith(SSE_DATA) or line == SSE_DONE:
                continue
            chunk = json.loads(line.removeprefix(SSE_DATA))
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
        status = response.status
    elapsed = time.perf_counter() - start
    results[index] = {"status": status, "ttft_s": first if first is not None else elapsed, "tokens": tokens,
                      "seconds": elapsed}


def check_flash_attn(ctx: Context) -> tuple[dict[str, Any], str]:
    from utils.core.environment import flash_attn_problem

    problem = flash_attn_problem()
    if problem is not None:
        raise NotRun(problem)
    sizes, preset = ctx.sizes, tiny_preset_path(ctx)
    steps, every = sizes.tiny_steps // 10, sizes.tiny_steps // 20
    runs = {}
    for name, flash in (("flash_attention_2", True), ("sdpa", False)):
        run_dir = ctx.work / f"attention-{name}"
        run_pretrain(preset, {**tiny_overrides(ctx, run_dir, steps, every), "flash_attn": flash})
        runs[name] = train_records(run_dir)
    differences = [abs(a["loss"] - b["loss"]) for a, b in zip(runs["flash_attention_2"], runs["sdpa"], strict=True)]
    speeds = {name: statistics.median(r["tokens_per_s"] for r in records) for name, records in runs.items()}
    figures = {"steps": steps, "max_loss_difference": max(differences), "tokens_per_s": speeds}
    return figures, (f"{steps} steps with evaluations and samples; flash {speeds['flash_attention_2']:,.0f} vs sdpa "
                     f"{speeds['sdpa']:,.0f} tok/s; max loss difference {max(differences):.2e}")
