"""The plain-PyTorch LLaMA training step that the training benchmark (utils/benchmarks/train.py) times beside ours:
weights as a flat dict (reference_parameters), RoPE tables, grouped-query attention over SDPA, the loss
(reference_loss) and TrainReference, one optimizer step of it. torch is imported inside these functions only (see
common.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from utils.core.errors import LumiError
from utils.lm.model import ModelConfig, count_parameters


def reference_parameters(shape: ModelConfig, device: Any) -> dict[str, Any]:
    """LLaMA weights as a flat dict: tied embedding/head, per layer q/k/v/o, SwiGLU gate/up/down and two RMSNorms."""
    import torch

    hidden, attention = shape.hidden_size, shape.num_attention_heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim

    def matrix(rows: int, cols: int) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.randn(rows, cols, device=device) * shape.initializer_range)

    def gain() -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.ones(hidden, device=device))

    params = {"embed": matrix(shape.vocab_size, hidden), "norm": gain()}
    for layer in range(shape.num_hidden_layers):
        prefix = f"layers.{layer}."
        params |= {prefix + "attn_norm": gain(), prefix + "q": matrix(attention, hidden),
                   prefix + "k": matrix(kv, hidden), prefix + "v": matrix(kv, hidden),
                   prefix + "o": matrix(hidden, attention), prefix + "mlp_norm": gain(),
                   prefix + "gate": matrix(shape.intermediate_size, hidden),
                   prefix + "up": matrix(shape.intermediate_size, hidden),
                   prefix + "down": matrix(hidden, shape.intermediate_size)}
    return params


def rope_tables(shape: ModelConfig, device: Any) -> tuple[Any, Any]:
    """cos and sin of every position's rotation angles, each (positions, head_dim), in the rotate-half layout."""
    import torch

    exponents = torch.arange(0, shape.head_dim, 2, dtype=torch.float32, device=device) / shape.head_dim
    positions = torch.arange(shape.max_position_embeddings, dtype=torch.float32, device=device)
    angles = torch.outer(positions, 1.0 / shape.rope_theta ** exponents)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _rope(x: Any, cos: Any, sin: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def _attention(params: dict[str, Any], prefix: str, shape: ModelConfig, x: Any, cos: Any, sin: Any) -> Any:
    import torch.nn.functional as F

    batch, length, _ = x.shape
    heads, kv_heads, head_dim = shape.num_attention_heads, shape.kv_heads, shape.head_dim
    q = F.linear(x, params[prefix + "q"]).view(batch, length, heads, head_dim).transpose(1, 2)
    k = F.linear(x, params[prefix + "k"]).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = F.linear(x, params[prefix + "v"]).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    q, k = _rope(q, cos[:length], sin[:length]), _rope(k, cos[:length], sin[:length])
    if kv_heads < heads:  # grouped-query attention: each kv head serves heads // kv_heads query heads
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.linear(out.transpose(1, 2).reshape(batch, length, heads * head_dim), params[prefix + "o"])


def reference_loss(params: dict[str, Any], shape: ModelConfig, cos: Any, sin: Any, input_ids: Any,
                         targets: Any) -> Any:
    """Mean next-token cross-entropy of the reference LLaMA (pre-norm blocks, SwiGLU, tied head)."""
    import torch.nn.functional as F

    hidden, eps = (shape.hidden_size,), shape.rms_norm_eps
    x = F.embedding(input_ids, params["embed"])
    for layer in range(shape.num_hidden_layers):
        prefix = f"layers.{layer}."
        x = x + _attention(params, prefix, shape, F.rms_norm(x, hidden, params[prefix + "attn_norm"], eps),
                                 cos, sin)
        h = F.rms_norm(x, hidden, params[prefix + "mlp_norm"], eps)
        x = x + F.linear(F.silu(F.linear(h, params[prefix + "gate"])) * F.linear(h, params[prefix + "up"]),
                         params[prefix + "down"])
    logits = F.linear(F.rms_norm(x, hidden, params["norm"], eps), params["embed"])
    return F.cross_entropy(logits.view(-1, shape.vocab_size), targets.view(-1))


class TrainReference:
    """A plain-PyTorch LLaMA training step of our shape: RMSNorm, RoPE, SwiGLU, SDPA, tied head, fused AdamW.

    Functions over a dict of weights rather than nn.Modules, so that this module need not import torch at the top
    (see the module docstring). One step: zero_grad, forward under autocast, loss, backward, clip, AdamW step.
    """

    def __init__(self, shape: ModelConfig, loop: Any, precision: str, compiled: bool, batch: dict[str, Any]) -> None:
        import torch

        device = loop.device
        self.shape = shape
        self.params = reference_parameters(shape, device)
        count, expected = sum(p.numel() for p in self.params.values()), count_parameters(shape).total
        if count != expected:
            raise LumiError(f"the reference model has {count:,} parameters, the pipeline's {expected:,}")
        self.cos, self.sin = rope_tables(shape, device)
        config = loop.config
        groups = [{"params": [p for p in self.params.values() if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in self.params.values() if p.ndim < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, eps=config.adam_epsilon, fused=True,
                                           betas=(config.adam_beta1, config.adam_beta2))
        self.max_grad_norm = config.max_grad_norm
        self.loss = torch.compile(reference_loss) if compiled else reference_loss
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                          enabled=precision == "bf16")
        self.input_ids = batch["input_ids"].to(device)
        self.targets = batch["shift_labels"].to(device)

    def step(self) -> None:
        import torch

        with _torch_default_algorithms():
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.loss(self.params, self.shape, self.cos, self.sin, self.input_ids, self.targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params.values(), self.max_grad_norm)
            self.optimizer.step()


@contextlib.contextmanager
def _torch_default_algorithms() -> Iterator[None]:
    """PyTorch's default (non-deterministic) kernels for the reference step. The pipeline's --deterministic setting
    is process-wide; a plain-PyTorch step does not pay for it, so the comparison shows what it costs us."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
