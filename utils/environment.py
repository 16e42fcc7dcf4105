"""What the machine offers: library versions, device, bf16 support, and which attention kernel training uses."""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import platform
from typing import Any

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "tokenizers", "sentencepiece")
FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"
# FlashAttention-2 needs an Ampere or newer GPU (compute capability 8.0+).
FLASH_ATTN_MIN_CAPABILITY = (8, 0)
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def flash_attn_usable() -> bool:
    """flash-attn must import (transformers checks the version too) and the GPU must be Ampere or newer."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    if not (torch.cuda.is_available() and is_flash_attn_2_available()):
        return False
    return torch.cuda.get_device_capability() >= FLASH_ATTN_MIN_CAPABILITY


def choose_attention(no_flash_attn: bool = False) -> str:
    """`flash_attention_2` when installed and supported, else PyTorch SDPA; `--no_flash_attn` forces SDPA."""
    if no_flash_attn:
        return SDPA
    return FLASH_ATTENTION if flash_attn_usable() else SDPA


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


def bf16_supported() -> bool:
    """bf16 that is fast here: a CUDA GPU with bf16, or a CPU on which oneDNN runs bf16 matmuls with AVX-512/AMX.
    CPU autocast accepts bf16 everywhere, but on an AVX2-only CPU it emulates the matmuls: measured on a 2-core
    AVX2 EPYC, 0.3-0.9 GFLOP/s against 25 in fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
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
        "attention_implementation": choose_attention(),
    }
