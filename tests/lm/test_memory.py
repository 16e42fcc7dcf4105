"""The memory estimate against what autograd really keeps: the tensors a forward of HF's Llama saves for backward
under bf16 autocast with fp32 weights (CPU autocast casts the same ops as CUDA's), per token."""

from __future__ import annotations

import pytest
import torch

from utils.lm.memory import FP32, estimate, kept_layer_bytes
from utils.lm.model import ModelConfig, build_model

SHAPE = ModelConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=400, max_position_embeddings=256)
BATCH = 2
LENGTHS = (64, 128)  # per-token bytes = the difference of the two, so fixed-size tensors cancel
TOLERANCE = 0.1


def saved_bytes_per_token(checkpointing: bool) -> float:
    """Bytes of activations autograd keeps per token in a decoder forward (weights and their bf16 copies aside)."""
    torch.manual_seed(0)
    model = build_model(SHAPE, use_cache=False).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    weights = {p.data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    totals = []
    for length in LENGTHS:
        kept: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights and tuple(tensor.shape) not in weight_shapes:
                kept[storage.data_ptr()] = storage.nbytes()
            return tensor

        ids = torch.randint(0, SHAPE.vocab_size, (BATCH, length))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.model(input_ids=ids)
        totals.append(sum(kept.values()))
    return (totals[1] - totals[0]) / (BATCH * (LENGTHS[1] - LENGTHS[0]))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_layer_activations_match_what_autograd_keeps(checkpointing: bool) -> None:
    """fp32 residual stream and norms, a bf16 cast per projection: ~59h per layer here, not 16-bit's 34h; under
    checkpointing each layer keeps its fp32 input (the recomputed layer belongs to backward)."""
    final_norm = 2 * FP32 * SHAPE.hidden_size
    estimated = kept_layer_bytes(SHAPE, checkpointing) + final_norm
    assert saved_bytes_per_token(checkpointing) == pytest.approx(estimated, rel=TOLERANCE)


def test_the_fused_loss_needs_a_fraction_of_the_textbook_loss() -> None:
    from utils.lm.model import load_preset

    base = load_preset("base").model
    fused, unfused = estimate(base, 16, 1024), estimate(base, 16, 1024, fused_loss=False)
    assert unfused.activations_gb - fused.activations_gb == pytest.approx(16 * 1024 * 8 * 32768 / 1024**3, rel=0.01)
