"""What llama.cpp's `llama` architecture runs, and our Llama weights in its layout.

Refused before anything is written, each with the setting that stands in the way: ablated models (`lumi_llama`: no
norm, post-norm and NoPE have no llama.cpp graph), biases, another activation, rope scaling, and for q8_0 a matrix
whose rows are not whole 32-value blocks. Everything else maps one to one onto llama.cpp's tensor names.

The one change of layout: Hugging Face's Llama rotates the two halves of each head (`rotate_half`), llama.cpp
rotates adjacent pairs. llama.cpp's own converter reorders the rows of q_proj and k_proj so that the pairs line up
(per head: rows 0, d/2, 1, d/2+1, ...), and so do we; without it the model runs and writes nonsense.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.core.errors import ConfigError
from utils.lm.model import ABLATION_FIELDS

Q8_0_BLOCK = 32  # values per q8_0 block: every quantized row must hold whole blocks
SUPPORTED_MODEL_TYPE = "llama"
LAYER_TENSORS = {  # Hugging Face name inside model.layers.N -> llama.cpp name inside blk.N
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters a llama.cpp `llama` model is described by."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tied_embeddings: bool


def _rope_theta(config: Any) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    scaling = parameters.get("rope_type", "default")
    if scaling != "default":
        raise ConfigError(f"rope_type {scaling!r} (rope scaling) is not exported: only plain RoPE is written to GGUF")
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def llama_shape(config: Any) -> LlamaShape:
    """The shape of a loaded model's config, or a ConfigError naming what llama.cpp could not run."""
    model_type = getattr(config, "model_type", None)
    if model_type != SUPPORTED_MODEL_TYPE:
        ablations = ", ".join(f"{k}={getattr(config, k, '?')}" for k in ABLATION_FIELDS)
        detail = f" (ablations {ablations})" if model_type == "lumi_llama" else ""
        raise ConfigError(f"model type {model_type!r}{detail} cannot be exported to GGUF: llama.cpp's llama "
                          f"architecture needs a plain Llama (RMSNorm pre-norm, RoPE); only standard presets export")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ConfigError(f"{flag}=true: llama.cpp's llama architecture has no biases")
    if config.hidden_act != "silu":
        raise ConfigError(f"hidden_act {config.hidden_act!r}: llama.cpp's llama architecture uses SwiGLU (silu)")
    heads = config.num_attention_heads
    return LlamaShape(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                      intermediate_size=config.intermediate_size, num_layers=config.num_hidden_layers,
                      num_heads=heads, num_kv_heads=config.num_key_value_heads or heads,
                      head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                      context_length=config.max_position_embeddings, rope_theta=_rope_theta(config),
                      rms_norm_eps=config.rms_norm_eps, tied_embeddings=bool(config.tie_word_embeddings))


def check_quantizable(shape: LlamaShape, outtype: str) -> None:
    """q8_0 stores each matrix row in 32-value blocks: every row length (the input width) must divide."""
    if outtype != "q8_0":
        return
    for name, width in (("hidden_size", shape.hidden_size), ("intermediate_size", shape.intermediate_size),
                        ("num_attention_heads x head_dim", shape.num_heads * shape.head_dim)):
        if width % Q8_0_BLOCK:
            raise ConfigError(f"q8_0 needs matrix rows in blocks of {Q8_0_BLOCK} values, but {name} is {width}; "
                              f"export with --outtype f16 (or bf16, f32) instead")


def unpermute_for_llama_cpp(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q_proj / k_proj from the half-split rotary layout to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def llama_cpp_tensors(state_dict: dict[str, Any], shape: LlamaShape) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) for every weight; a tied output head is left to llama.cpp, which reuses the
    token embedding when output.weight is absent."""
    for name, tensor in state_dict.items():
        array = tensor.detach().float().cpu().numpy()
        if name in GLOBAL_TENSORS:
            if name == "lm_head.weight" and shape.tied_embeddings:
                continue
            yield GLOBAL_TENSORS[name], array
            continue
        match = LAYER_NAME.fullmatch(name)
        if match is None or match.group(2) not in LAYER_TENSORS:
            raise ConfigError(f"weight {name!r} has no place in llama.cpp's llama architecture")
        layer, inner = match.groups()
        if inner == "self_attn.q_proj.weight":
            array = unpermute_for_llama_cpp(array, shape.num_heads)
        elif inner == "self_attn.k_proj.weight":
            array = unpermute_for_llama_cpp(array, shape.num_kv_heads)
        yield f"blk.{layer}.{LAYER_TENSORS[inner]}", array
