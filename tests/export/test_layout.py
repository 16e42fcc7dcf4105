"""Our Llama in llama.cpp's layout: the q/k row order that makes llama.cpp's rotary equal Hugging Face's, the tensor
names, and the refusals (ablated models, biases, q8_0 widths) that name what stands in the way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.core.errors import ConfigError
from utils.export.layout import check_quantizable, llama_cpp_tensors, llama_shape, unpermute_for_llama_cpp
from utils.lm.model import ModelConfig, build_model, to_llama_config

HEADS, HEAD_DIM, HIDDEN = 4, 16, 64


def _hf_rotary(x: np.ndarray, position: int, theta: float = 10000.0) -> np.ndarray:
    """Hugging Face Llama: dimension i and i + d/2 form a pair (rotate_half)."""
    half = x.shape[-1] // 2
    freqs = position * theta ** (-np.arange(half) * 2 / x.shape[-1])
    cos, sin = np.concatenate([np.cos(freqs)] * 2), np.concatenate([np.sin(freqs)] * 2)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _llama_cpp_rotary(x: np.ndarray, position: int, theta: float = 10000.0) -> np.ndarray:
    """llama.cpp's normal RoPE (the llama architecture): dimensions 2i and 2i + 1 form a pair."""
    freqs = position * theta ** (-np.arange(x.shape[-1] // 2) * 2 / x.shape[-1])
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(freqs) - odd * np.sin(freqs)
    out[..., 1::2] = even * np.sin(freqs) + odd * np.cos(freqs)
    return out


def _scores(wq: np.ndarray, wk: np.ndarray, h: np.ndarray, rotary, positions: tuple[int, int]) -> np.ndarray:
    q = (wq @ h[0]).reshape(HEADS, HEAD_DIM)
    k = (wk @ h[1]).reshape(HEADS, HEAD_DIM)
    return (rotary(q, positions[0]) * rotary(k, positions[1])).sum(-1)  # one attention logit per head


@pytest.mark.parametrize("positions", [(0, 0), (5, 2), (300, 17)])
def test_permuted_rows_under_llama_cpp_rotary_give_hugging_faces_attention(positions: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    wq, wk = rng.normal(size=(2, HEADS * HEAD_DIM, HIDDEN))
    h = rng.normal(size=(2, HIDDEN))
    expected = _scores(wq, wk, h, _hf_rotary, positions)
    ours = _scores(unpermute_for_llama_cpp(wq, HEADS), unpermute_for_llama_cpp(wk, HEADS), h, _llama_cpp_rotary,
                   positions)
    assert np.allclose(ours, expected, atol=1e-9)
    unpermuted = _scores(wq, wk, h, _llama_cpp_rotary, positions)
    assert positions == (0, 0) or not np.allclose(unpermuted, expected)  # the permutation is what makes them agree


def _model(**overrides: object) -> torch.nn.Module:
    fields = {"hidden_size": HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": HEADS,
              "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 64, **overrides}
    return build_model(ModelConfig(**fields))


def test_every_weight_gets_its_llama_cpp_name_and_the_tied_head_is_left_out() -> None:
    model = _model()
    shape = llama_shape(model.config)
    tensors = dict(llama_cpp_tensors(model.state_dict(), shape))
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.tied_embeddings) == (4, 2, 16, True)
    assert "output.weight" not in tensors and tensors["token_embd.weight"].shape == (300, HIDDEN)
    assert sorted(n for n in tensors if n.startswith("blk.1.")) == [
        f"blk.1.{n}.weight" for n in ("attn_k", "attn_norm", "attn_output", "attn_q", "attn_v", "ffn_down",
                                      "ffn_gate", "ffn_norm", "ffn_up")]
    k = model.state_dict()["model.layers.0.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(tensors["blk.0.attn_k.weight"], unpermute_for_llama_cpp(k, 2))  # by KV heads (GQA)
    untied = dict(llama_cpp_tensors(_model(tie_word_embeddings=False).state_dict(),
                                    llama_shape(_model(tie_word_embeddings=False).config)))
    assert untied["output.weight"].shape == (300, HIDDEN)


def test_an_ablated_model_is_refused_naming_its_ablation() -> None:
    config = to_llama_config(ModelConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=HEADS, vocab_size=300, position_embedding="none"))
    with pytest.raises(ConfigError, match="lumi_llama.*position_embedding=none.*plain Llama"):
        llama_shape(config)


def test_biases_and_rope_scaling_are_refused() -> None:
    config = _model().config
    config.attention_bias = True
    with pytest.raises(ConfigError, match="attention_bias"):
        llama_shape(config)
    config = _model().config
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match="rope_type 'linear'"):
        llama_shape(config)


def test_q8_0_refuses_a_width_that_is_not_whole_blocks() -> None:
    shape = llama_shape(_model(intermediate_size=120).config)
    check_quantizable(shape, "f16")  # any width is fine unquantized
    with pytest.raises(ConfigError, match="intermediate_size is 120.*--outtype f16"):
        check_quantizable(shape, "q8_0")
