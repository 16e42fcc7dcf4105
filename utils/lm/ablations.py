"""Architecture ablations: Llama without normalisation, with post-norm, or without positional encoding (NoPE).

A preset that changes none of `norm`, `norm_position`, `position_embedding` builds a plain `LlamaForCausalLM`.
One that does builds `LumiLlamaForCausalLM`: the same modules and weight names, its config of model_type
`lumi_llama` (a `LlamaConfig` plus the three fields). Saved, it is a directory that `AutoModelForCausalLM` refuses
until `register_lumi_models()` has run (our loaders run it) — never one that a stock loader reads as a standard
Llama and computes something else with.

The ablations change the forward pass only, never the weights drawn at initialisation: the ablated model starts
from exactly the baseline's matrices under the same seed, so an equal-budget comparison isolates the change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from utils.lm.model import ABLATION_FIELDS

LUMI_MODEL_TYPE = "lumi_llama"


class LumiLlamaConfig(LlamaConfig):
    model_type = LUMI_MODEL_TYPE

    def __init__(self, norm: str = "rmsnorm", norm_position: str = "pre", position_embedding: str = "rope",
                 **kwargs: Any) -> None:
        self.norm = norm
        self.norm_position = norm_position
        self.position_embedding = position_embedding
        super().__init__(**kwargs)


class PostNormDecoderLayer(LlamaDecoderLayer):
    """The original Transformer's order: x = norm(x + attn(x)), then x = norm(x + mlp(x))."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Any = None,
                use_cache: bool | None = False, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Any) -> torch.Tensor:
        attended, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                     position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                     position_embeddings=position_embeddings, **kwargs)
        hidden_states = self.input_layernorm(hidden_states + attended)
        return self.post_attention_layernorm(hidden_states + self.mlp(hidden_states))


class NoRotaryEmbedding(nn.Module):
    """NoPE: cos = 1 and sin = 0, so Llama's rotary step leaves queries and keys exactly as they are (causal masking
    is then the model's only source of order)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)
        return (torch.ones(shape, dtype=x.dtype, device=x.device),
                torch.zeros(shape, dtype=x.dtype, device=x.device))


class LumiLlamaForCausalLM(LlamaForCausalLM):
    config_class = LumiLlamaConfig

    def __init__(self, config: LumiLlamaConfig) -> None:
        super().__init__(config)
        inner = self.model
        if config.norm_position == "post":
            for layer in inner.layers:
                # A class swap, not new layers: the modules (and their initial weights) stay the baseline's.
                layer.__class__ = PostNormDecoderLayer
        if config.norm == "none":
            for layer in inner.layers:
                layer.input_layernorm = nn.Identity()
                layer.post_attention_layernorm = nn.Identity()
            inner.norm = nn.Identity()
        if config.position_embedding == "none":
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            inner.rotary_emb = NoRotaryEmbedding(head_dim)


def register_lumi_models() -> None:
    """Teach the Auto classes the lumi_llama type (idempotent): every loader of ours calls this first."""
    if LUMI_MODEL_TYPE in CONFIG_MAPPING:
        return
    AutoConfig.register(LUMI_MODEL_TYPE, LumiLlamaConfig)
    AutoModelForCausalLM.register(LumiLlamaConfig, LumiLlamaForCausalLM)


def describe(config: Any) -> dict[str, Any]:
    """What an export's meta records about the architecture: plain Llama, or which ablations and how to load it."""
    ablations = {key: getattr(config, key, value) for key, value in ABLATION_FIELDS.items()}
    if ablations == ABLATION_FIELDS:
        return {"architecture": "llama", "plain_llama": True}
    return {"architecture": LUMI_MODEL_TYPE, "plain_llama": False, "ablations": ablations,
            "load_with": "utils.lm.loading.load_model (registers lumi_llama); a stock AutoModelForCausalLM refuses "
                         "this directory rather than run it as a standard Llama"}
