"""What the machine offers: library versions, device, bf16 support, and which attention kernel training uses."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

PACKAGES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "tokenizers", "sentencepiece")
FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"
# FlashAttention-2 needs an Ampere or newer GPU (compute capability 8.0+).
FLASH_ATTN_MIN_CAPABILITY = (8, 0)


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


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return True  # CPU autocast supports bf16 on every PyTorch 2.x build


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
