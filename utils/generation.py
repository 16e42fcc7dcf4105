"""Text generation shared by pretraining samples, evaluation and serving.

Sampling never touches the global RNG of a training run (it runs inside `torch.random.fork_rng` with its own
seed), so taking samples during training cannot change what the run does next: exact resume holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_hf_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": not self.greedy,
                                  "repetition_penalty": self.repetition_penalty}
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p)
        return kwargs


@torch.no_grad()
def generate_ids(model: Any, prompt_ids: list[int], params: GenerationParams, eos_token_id: int,
                 pad_token_id: int) -> list[int]:
    """New token ids after `prompt_ids` (KV-cached HF generate), without disturbing the caller's RNG."""
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.seed)
            input_ids = torch.tensor([prompt_ids], device=device)
            output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                    eos_token_id=eos_token_id, pad_token_id=pad_token_id, **params.to_hf_kwargs())
    finally:
        model.train(was_training)
    return output[0, len(prompt_ids):].tolist()
