"""Stage 06 settings and model loading, shared by both modes: ServeConfig (every --flag of scripts/06_serve.py),
choose_device and load_for_serving. Free of FastAPI, so the terminal chat starts without the web stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from utils.core.environment import cuda_bf16_native
from utils.core.errors import ConfigError
from utils.lm.generation import GenerationParams, fresh_seed
from utils.lm.loading import LoadedModel, load_model
from utils.lm.templates import get_template

DEFAULT_HOST = "127.0.0.1"  # loopback unless --host says otherwise
DEFAULT_PORT = 8000
API_KEY_ENV = "LUMI_API_KEY"


@dataclass
class ServeConfig:
    """Stage 06 settings; each is a --flag. The sampling fields are the defaults a request may override."""

    model_path: str = "checkpoints/pretrain/tiny/final"
    mode: Literal["interactive", "api"] = "interactive"
    template: str = "chatml"
    system_prompt: str | None = None  # interactive mode: a system message that opens every conversation
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 150
    seed: int | None = None  # None: a fresh seed for every answer
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None  # default: $LUMI_API_KEY; unset = no key needed
    cors_origins: list[str] = field(default_factory=list)
    max_concurrent: int = 1
    max_queue: int = 16
    served_model_name: str | None = None  # default: the model directory's name
    device: str = "auto"
    cpu_threads: int = 0  # torch's intra-op threads; 0 = torch's default (one per core)

    def __post_init__(self) -> None:
        get_template(self.template)
        self.default_params(seed=0 if self.seed is None else self.seed)  # InvalidParam (exit 2) names a bad value
        if self.max_concurrent < 1 or self.max_queue < 0:
            raise ConfigError(f"max_concurrent must be at least 1 and max_queue at least 0, got "
                              f"{self.max_concurrent} and {self.max_queue}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.cpu_threads < 0:
            raise ConfigError(f"cpu_threads must be 0 (torch's default) or positive, got {self.cpu_threads}")

    def default_params(self, seed: int | None = None) -> GenerationParams:
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, repetition_penalty=self.repetition_penalty,
                                seed=fresh_seed() if seed is None else seed)

    @property
    def model_id(self) -> str:
        return self.served_model_name or Path(os.path.abspath(self.model_path)).name  # "." named, links kept

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None


def choose_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def load_for_serving(config: ServeConfig) -> LoadedModel:
    import torch

    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    device = choose_device(config.device)
    dtype = torch.bfloat16 if device.startswith("cuda") and cuda_bf16_native() else torch.float32
    return load_model(Path(config.model_path), dtype=dtype, device=device)
