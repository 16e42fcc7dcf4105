"""What the machine offers: library versions, device, bf16 support, and which attention kernel training uses."""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from utils.core.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "tokenizers", "sentencepiece")
FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"
# FlashAttention-2 needs an Ampere or newer GPU (compute capability 8.0+); transformers accepts flash-attn >= 2.3.3.
FLASH_ATTN_MIN_CAPABILITY = (8, 0)
FLASH_ATTN_MIN_VERSION = "2.3.3"
FLASH_ATTN_PROBE_HEAD_DIM = 64
DEFAULT_CUDA_HOME = Path("/usr/local/cuda")
NVCC_RELEASE_RE = re.compile(r"release (\d+\.\d+)")
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def flash_attn_problem() -> str | None:
    """Why `flash_attention_2` cannot train here, or None when it can.

    transformers' `is_flash_attn_2_available()` reads package metadata only: a flash-attn wheel built for another
    torch or CUDA passes it and then fails when the model is built. So the modules transformers will import are
    imported here, and one tiny kernel call catches a build without this GPU's architecture.
    """
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    capability = torch.cuda.get_device_capability()
    if capability < FLASH_ATTN_MIN_CAPABILITY:
        needed = ".".join(map(str, FLASH_ATTN_MIN_CAPABILITY))
        return (f"{torch.cuda.get_device_name()} has compute capability {capability[0]}.{capability[1]}; "
                f"FlashAttention-2 needs {needed} (Ampere) or newer")
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return f"flash-attn >= {FLASH_ATTN_MIN_VERSION} is not installed (make install-flash-attn)"
    try:
        # What transformers imports for flash_attention_2 (modeling_flash_attention_utils._lazy_imports).
        from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: F401
        from flash_attn.bert_padding import pad_input, unpad_input  # noqa: F401

        probe = torch.zeros(1, 1, 1, FLASH_ATTN_PROBE_HEAD_DIM, dtype=torch.bfloat16, device="cuda")
        flash_attn_func(probe, probe, probe)
    except (ImportError, OSError, RuntimeError) as exc:
        return (f"flash-attn is installed but unusable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it "
                f"was probably built for another torch or CUDA: rebuild it with make install-flash-attn, or train "
                f"with --no_flash_attn")
    return None


def flash_attn_usable() -> bool:
    return flash_attn_problem() is None


def choose_attention(no_flash_attn: bool = False) -> str:
    """`flash_attention_2` when it imports and runs on this GPU, else PyTorch SDPA; `--no_flash_attn` forces SDPA.
    An installed but broken flash-attn is a warning, never a crash."""
    if no_flash_attn:
        return SDPA
    problem = flash_attn_problem()
    if problem is None:
        return FLASH_ATTENTION
    if package_version("flash-attn") is not None:
        log.warning("attention: using sdpa, not flash_attention_2: %s", problem)
    return SDPA


def nvcc_path() -> Path | None:
    """The nvcc a source build of flash-attn would use: $CUDA_HOME/bin, then PATH, then /usr/local/cuda/bin."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(home) / "bin" / "nvcc"] if home else []
    found = shutil.which("nvcc")
    candidates += [Path(found)] if found else []
    candidates.append(DEFAULT_CUDA_HOME / "bin" / "nvcc")
    return next((path for path in candidates if path.is_file()), None)


def nvcc_release(nvcc: Path) -> str | None:
    """'12.4' from `nvcc --version` ('Cuda compilation tools, release 12.4, V12.4.131'), or None."""
    output = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=False).stdout
    match = NVCC_RELEASE_RE.search(output)
    return match.group(1) if match else None


def flash_attn_build_problems() -> list[str]:
    """What would make `make install-flash-attn` fail after a long compile, found before it starts."""
    import torch

    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU build: flash-attn needs PyTorch's CUDA build (on Linux, "
                        f"pip install -r requirements.txt gives it)")
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible (nvidia-smi should list one)")
    elif torch.cuda.get_device_capability() < FLASH_ATTN_MIN_CAPABILITY:
        problems.append(f"{flash_attn_problem()}: use SDPA (the default without flash-attn)")
    nvcc = nvcc_path()
    if nvcc is None:
        problems.append(f"nvcc not found (CUDA_HOME, PATH, {DEFAULT_CUDA_HOME}): install the CUDA toolkit "
                        f"{torch.version.cuda or ''} and put its bin/ on PATH or set CUDA_HOME")
        return problems
    release = nvcc_release(nvcc)
    if torch.version.cuda and release and release.split(".")[0] != torch.version.cuda.split(".")[0]:
        problems.append(f"{nvcc} is CUDA {release} but torch was built with CUDA {torch.version.cuda}: PyTorch's "
                        f"extension builder refuses a different major version; install toolkit "
                        f"{torch.version.cuda.split('.')[0]}.x and set CUDA_HOME to it")
    return problems


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (CPU training only).

    By default every block over 32 MiB is a fresh mmap and freed heap tops are trimmed, so each training step
    page-faults its large tensors in again: measured on the 2-core VM, that was ~25 % of a base step and ~45 % of
    the plain-PyTorch reference's tiny step. With mmap off and trimming off, a step reuses the previous step's
    memory (the steady-state RSS is the peak, which training reaches anyway). Large blocks that a thread's arena
    cannot hold fall back to the main arena. A no-op returning False where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    log.debug("glibc malloc keeps freed memory: %s", applied)
    return applied


def cuda_bf16_native() -> bool:
    """bf16 in hardware (compute capability 8.0+). torch.cuda.is_bf16_supported() also counts the emulation that
    T4s and V100s run slowly; those GPUs get fp16 with a grad scaler instead."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def cpu_bf16_native() -> bool:
    """bf16 matmuls in hardware on this CPU (AVX512-BF16 or AMX). Elsewhere CPU bf16 is emulated: on the AVX2-only
    2-core VM a 512x512 bf16 matmul ran at ~1 GFLOP/s against ~20 for fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_supported() -> bool:
    """Native bf16 on the device training would use (the GPU when there is one)."""
    import torch

    return cuda_bf16_native() if torch.cuda.is_available() else cpu_bf16_native()


def describe_environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    flash_problem = flash_attn_problem()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_threads": torch.get_num_threads(),
        "bf16_supported": bf16_supported(),
        "flash_attn_installed": package_version("flash-attn") is not None,
        "flash_attn_problem": flash_problem,
        "attention_implementation": FLASH_ATTENTION if flash_problem is None else SDPA,
    }


def resolve_precision(requested: str, device_type: str) -> str:
    """`auto`: bf16 where the device has it in hardware; else fp16 with a grad scaler on a GPU, fp32 on a CPU
    (emulated bf16 is slow: see cpu_bf16_native)."""
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if cuda_bf16_native() else "fp16"
        return "bf16" if cpu_bf16_native() else "no"  # native bf16 measured ~1.8x faster than fp32 on a CPU
    if requested == "fp16" and device_type != "cuda":
        raise ConfigError("--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on a CPU")
    return requested
