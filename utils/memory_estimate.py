"""Training memory estimates for a preset on one GPU, and the batch size that fits a memory budget.

An estimate, not a measurement: weights, gradients and AdamW moments in fp32 (16 bytes per parameter: mixed
precision keeps fp32 master weights), plus bf16 activations per token following Korthikanti et al. 2022
("Reducing Activation Recomputation", table 2) without the attention-score term (SDPA/FlashAttention never
materialise the scores): 34·h bytes per layer, or 2·h with activation checkpointing plus one layer recomputed;
plus the logits (bf16 output, fp32 upcast for the loss and its gradient: 10 bytes per vocabulary entry), plus a
fixed allowance for the CUDA context and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.model import ModelConfig, count_parameters

BYTES_PER_PARAM_TRAINING = 16  # fp32 weights 4 + fp32 grads 4 + AdamW m and v 8
ACTIVATION_BYTES_PER_HIDDEN = 34  # per token per layer, bf16, no attention-score materialisation
CHECKPOINTED_BYTES_PER_HIDDEN = 2  # the layer input kept per layer under activation checkpointing
LOGIT_BYTES_PER_VOCAB = 10  # bf16 logits 2 + fp32 upcast 4 + fp32 gradient 4
CUDA_OVERHEAD_GB = 1.5
HEADROOM = 0.85  # leave 15 % for fragmentation and spikes
GB = 1024**3
RTX_4090_GB = 24.0


@dataclass(frozen=True)
class MemoryEstimate:
    states_gb: float
    activations_gb: float
    total_gb: float


def estimate(model: ModelConfig, batch_size: int, seq_len: int, checkpointing: bool = False) -> MemoryEstimate:
    params = count_parameters(model).total
    h, layers = model.hidden_size, model.num_hidden_layers
    tokens = batch_size * seq_len
    if checkpointing:
        per_token = layers * CHECKPOINTED_BYTES_PER_HIDDEN * h + ACTIVATION_BYTES_PER_HIDDEN * h
    else:
        per_token = layers * ACTIVATION_BYTES_PER_HIDDEN * h
    activations = tokens * (per_token + LOGIT_BYTES_PER_VOCAB * model.vocab_size)
    states = params * BYTES_PER_PARAM_TRAINING
    return MemoryEstimate(states / GB, activations / GB, states / GB + activations / GB + CUDA_OVERHEAD_GB)


def max_batch_size(model: ModelConfig, seq_len: int, budget_gb: float, checkpointing: bool = False) -> int:
    """The largest power-of-two micro-batch whose estimate fits `budget_gb` × HEADROOM (0 if none does)."""
    best, batch = 0, 1
    while estimate(model, batch, seq_len, checkpointing).total_gb <= budget_gb * HEADROOM:
        best, batch = batch, batch * 2
    return best
