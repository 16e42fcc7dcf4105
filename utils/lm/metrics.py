"""Training telemetry shared by every training stage: JSONL metrics, TensorBoard/W&B, loss.png, FLOPs and MFU.

MFU = achieved model FLOPs / device peak. Model FLOPs per token follow the PaLM appendix: 6 × (matmul
parameters) + 12 × layers × heads × head_dim × sequence length (attention scores and values, forward and
backward). The peak comes from a table of dense datasheet figures per exact GPU name, at the run's precision
(16-bit tensor cores, TF32 or plain fp32), or, on a CPU, from a matmul measured on this machine at that precision.
"""

from __future__ import annotations

import functools
import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.core.errors import ConfigError
from utils.core.records import read_records
from utils.lm.model import ModelConfig, count_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuPeak:
    """Dense (no sparsity) datasheet peaks in TFLOP/s: 16-bit tensor cores with fp32 accumulation (bf16; fp16 on
    GPUs without bf16), TF32 tensor cores (None where there are none), plain fp32."""

    tensor16: float
    tf32: float | None
    fp32: float


_A100 = GpuPeak(312.0, 156.0, 19.5)
_H100_SXM = GpuPeak(989.4, 494.7, 66.9)
_V100_SXM2 = GpuPeak(125.0, None, 15.7)
_V100_PCIE = GpuPeak(112.0, None, 14.0)
# Keyed by the exact name torch.cuda.get_device_name() reports: a substring match gave the 4090 Laptop GPU and the
# 4090 D (fewer SMs, lower clocks) the desktop 4090's peak. A name not listed gets no MFU rather than a wrong one.
GPU_PEAKS = {
    "NVIDIA H100 80GB HBM3": _H100_SXM, "NVIDIA H100 PCIe": GpuPeak(756.5, 378.0, 51.2), "NVIDIA H200": _H100_SXM,
    "NVIDIA A100-SXM4-80GB": _A100, "NVIDIA A100-SXM4-40GB": _A100, "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100, "NVIDIA L40S": GpuPeak(362.05, 183.0, 91.6),
    "NVIDIA L40": GpuPeak(181.05, 90.5, 90.5),
    "NVIDIA L4": GpuPeak(121.0, 60.0, 30.3), "NVIDIA A10": GpuPeak(125.0, 62.5, 31.2),
    "NVIDIA GeForce RTX 4090": GpuPeak(165.2, 82.6, 82.6), "NVIDIA GeForce RTX 4080": GpuPeak(97.5, 48.7, 48.7),
    "NVIDIA GeForce RTX 3090": GpuPeak(71.0, 35.6, 35.6), "NVIDIA RTX A6000": GpuPeak(154.8, 77.4, 38.7),
    "Tesla V100-SXM2-16GB": _V100_SXM2, "Tesla V100-SXM2-32GB": _V100_SXM2, "Tesla V100-PCIE-16GB": _V100_PCIE,
    "Tesla V100-PCIE-32GB": _V100_PCIE, "Tesla T4": GpuPeak(65.0, None, 8.1),
}
TERA = 1e12
CPU_PROBE_SIZES = (256, 512, 1024, 2048)  # square matmuls, measured up to the first slow one
CPU_PROBE_SLOW_S = 0.1  # a bf16 matmul of 2048 takes ~50 s on an AVX2-only CPU: stop growing after such a size
CPU_PROBE_REPEATS = 5
KIB = 1024
MIB = 2**20


def matmul_params(model: ModelConfig) -> int:
    """Parameters that take part in a matmul per token: all but the embedding lookup and the norms' gains."""
    count = count_parameters(model)
    norms = (2 * model.num_hidden_layers + 1) * model.hidden_size
    return count.non_embedding - norms + model.vocab_size * model.hidden_size  # + the output projection


def flops_per_token(model: ModelConfig, seq_len: int) -> float:
    attention = 12 * model.num_hidden_layers * model.num_attention_heads * model.head_dim * seq_len
    return 6 * matmul_params(model) + attention


def gpu_peak_flops(device_name: str, dtype: torch.dtype, tf32: bool) -> float | None:
    """The datasheet peak for a run at `dtype` (16-bit autocast, or fp32 with or without TF32 matmuls)."""
    peak = GPU_PEAKS.get(device_name)
    if peak is None:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        return peak.tensor16 * TERA
    return (peak.tf32 if tf32 and peak.tf32 is not None else peak.fp32) * TERA


def _matmul_seconds(size: int, dtype: torch.dtype) -> float:
    """The best of a few timings of one square matmul (after a warm-up). Its own generator: how many sizes run
    depends on timing, and the training RNG stream must not."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(CPU_PROBE_REPEATS):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache  # once per process and dtype: gpu-check builds several training loops in one process
def cpu_peak_flops(dtype: torch.dtype) -> float:
    """Measured matmul throughput of this CPU at `dtype`: our practical ceiling. Sizes grow while a matmul stays
    quick, so the probe reaches 2048 where the CPU is fast and takes seconds, not minutes, where it is slow."""
    for size in CPU_PROBE_SIZES:
        seconds = _matmul_seconds(size, dtype)
        if seconds > CPU_PROBE_SLOW_S:
            break
    return 2 * size**3 / seconds


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        peak = gpu_peak_flops(name, dtype, tf32)
        kind = "16-bit tensor" if dtype != torch.float32 else ("TF32" if tf32 else "fp32")
        return peak, (f"{name} datasheet, {kind}" if peak else
                      f"{name}: not in utils/lm/metrics.GPU_PEAKS, MFU not reported")
    return cpu_peak_flops(dtype), f"CPU matmul measured at {dtype}"


def memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated, or the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB


def memory_stats(device: torch.device) -> dict[str, float]:
    """What the step logs: memory_mb (peak allocated on a GPU, peak RSS on a CPU) and, on a GPU, the peak the
    caching allocator reserved (memory_reserved_mb), which is what must fit the card."""
    stats = {"memory_mb": memory_mb(device)}
    if device.type == "cuda":
        stats["memory_reserved_mb"] = torch.cuda.max_memory_reserved(device) / MIB
    return stats


class MetricsLogger:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard or W&B."""

    def __init__(self, run_dir: Path, report_to: str, enabled: bool, run_name: str, config: dict[str, Any]):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        try:
            if report_to == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            elif report_to == "wandb":
                import wandb

                self._wandb = wandb.init(project="lumi", name=run_name, config=config, dir=str(run_dir))
        except ImportError as exc:
            raise ConfigError(f"--report_to {report_to} needs the {report_to} package ({exc}): run "
                              f"make install-extra, or use --report_to none") from exc

    def truncate_after(self, step: int) -> None:
        """On resume, forget events the killed run logged after its checkpoint: they are about to happen again."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path, kind: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [r for r in read_records(path) if r["kind"] == kind]


def plot_loss(metrics_path: Path, out_path: Path, title: str) -> Path | None:
    """Train and validation loss against step, written atomically as PNG."""
    train = read_metrics(metrics_path, "train")
    evals = read_metrics(metrics_path, "eval")
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    tmp = out_path.with_name(out_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out_path)
    return out_path
