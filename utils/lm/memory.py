"""Training memory estimates for a preset on one GPU, and the batch size that fits a memory budget.

An estimate, not a measurement, of what stage 02 holds: HF's LlamaForCausalLM under bf16 autocast with fp32 master
weights, SDPA or FlashAttention (the attention scores are never materialised), and our fused loss. Each term is
what autograd keeps for backward; tests/lm/test_memory.py holds the activation terms against the tensors a
real forward saves under CPU bf16 autocast (which casts like CUDA's).

- States: 16 bytes per parameter (fp32 weights 4, gradients 4, AdamW moments 8), plus 2 per matmul weight: the
  bf16 copy autocast makes once per forward and autograd keeps until backward.
- Per token and layer: autocast leaves additions and norms alone, so the residual stream and both RMSNorms stay
  fp32: each norm keeps its fp32 input and normalised output (16h in all). Each projection casts the norm output
  to bf16 on its own and keeps the copy (q, k, v, gate, up) and o_proj keeps its input: 12h. SDPA keeps bf16 q,
  k, v and its output: 2h (2 + 2 kv/heads). SwiGLU keeps gate, silu(gate), up and their product: 4 x 2I.
  In all (32 + 4 kv/heads) h + 8 I bytes: 63h for base, 58h for tiny (Korthikanti et al.'s 34h assumes 16-bit
  activations and a GELU MLP).
- With activation checkpointing a layer keeps only its fp32 input (4h), and one layer is recomputed in backward.
- After the layers: the final norm (8h) and the loss. Ours keeps a bf16 logits workspace (2 bytes per vocabulary
  entry) and the bf16 gradient of the hidden states (2h); the textbook loss (--compile, fp16) peaks at ~10 bytes
  per vocabulary entry (bf16 logits, their fp32 copy and log-softmax, the gradients).
- A fixed allowance for the CUDA context and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.lm.model import ModelConfig, count_parameters

FP32, BF16 = 4, 2  # bytes per element
BYTES_PER_PARAM_TRAINING = 16  # fp32 weights 4 + fp32 grads 4 + AdamW m and v 8
AUTOCAST_WEIGHT_COPY_BYTES = BF16  # per matmul weight, kept from forward to backward
NORMS_PER_LAYER = 2
NORM_OUTPUT_CASTS = 5  # q_proj, k_proj, v_proj, gate_proj, up_proj each cast the norm output separately
MLP_SAVED_PER_INTERMEDIATE = 4  # gate, silu(gate), up, silu(gate) * up
FUSED_LOSS_BYTES_PER_VOCAB = BF16  # the logits workspace
UNFUSED_LOSS_BYTES_PER_VOCAB = 10  # bf16 logits 2 + fp32 copy 4 + fp32 log-softmax / gradient 4
CUDA_OVERHEAD_GB = 1.5
HEADROOM = 0.85  # leave 15 % for fragmentation and spikes
GB = 1024**3
RTX_4090_GB = 24.0


@dataclass(frozen=True)
class MemoryEstimate:
    states_gb: float
    activations_gb: float
    total_gb: float


def layer_activation_bytes(model: ModelConfig) -> int:
    """Bytes one decoder layer keeps for backward per token (module docstring)."""
    h, heads_width = model.hidden_size, model.num_attention_heads * model.head_dim
    kv_width = model.kv_heads * model.head_dim
    norms = NORMS_PER_LAYER * 2 * FP32 * h
    projection_inputs = NORM_OUTPUT_CASTS * BF16 * h + BF16 * heads_width
    attention = BF16 * (2 * heads_width + 2 * kv_width)
    mlp = MLP_SAVED_PER_INTERMEDIATE * BF16 * model.intermediate_size
    return norms + projection_inputs + attention + mlp


def head_activation_bytes(model: ModelConfig, fused_loss: bool) -> int:
    """Bytes per token after the layers: the final norm and the loss."""
    h, vocab = model.hidden_size, model.vocab_size
    loss = FUSED_LOSS_BYTES_PER_VOCAB * vocab + BF16 * h if fused_loss else UNFUSED_LOSS_BYTES_PER_VOCAB * vocab
    return 2 * FP32 * h + loss


def state_bytes(model: ModelConfig) -> int:
    count = count_parameters(model)
    norms = (NORMS_PER_LAYER * model.num_hidden_layers + 1) * model.hidden_size
    lookup_only = 0 if model.tie_word_embeddings else model.vocab_size * model.hidden_size  # untied: no cast
    return BYTES_PER_PARAM_TRAINING * count.total + AUTOCAST_WEIGHT_COPY_BYTES * (count.total - norms - lookup_only)


def kept_layer_bytes(model: ModelConfig, checkpointing: bool) -> int:
    """Bytes per token that the layers keep from the forward pass until backward: everything each layer saves, or
    under activation checkpointing only each layer's fp32 input."""
    per_layer = FP32 * model.hidden_size if checkpointing else layer_activation_bytes(model)
    return model.num_hidden_layers * per_layer


def estimate(model: ModelConfig, batch_size: int, seq_len: int, checkpointing: bool = False,
             fused_loss: bool = True) -> MemoryEstimate:
    recomputed = layer_activation_bytes(model) if checkpointing else 0  # one layer at a time, during backward
    per_token = kept_layer_bytes(model, checkpointing) + recomputed + head_activation_bytes(model, fused_loss)
    activations = batch_size * seq_len * per_token
    states = state_bytes(model)
    return MemoryEstimate(states / GB, activations / GB, states / GB + activations / GB + CUDA_OVERHEAD_GB)


def max_batch_size(model: ModelConfig, seq_len: int, budget_gb: float, checkpointing: bool = False) -> int:
    """The largest power-of-two micro-batch whose estimate fits `budget_gb` × HEADROOM (0 if none does)."""
    best, batch = 0, 1
    while estimate(model, batch, seq_len, checkpointing).total_gb <= budget_gb * HEADROOM:
        best, batch = batch, batch * 2
    return best
