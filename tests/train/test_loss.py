"""The fused linear cross-entropy of stage 02 equals the textbook loss of LlamaForCausalLM, in value and gradient."""

from __future__ import annotations

import pytest
import torch

import utils.train.loss as lce
from utils.lm.model import ModelConfig, build_model
from utils.train.loss import IGNORE_INDEX, CausalLMLoss

VOCAB = 300


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=VOCAB, max_position_embeddings=64)
    return build_model(config, attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       use_cache=False)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_matches_the_hf_loss_and_gradients(dtype: torch.dtype, rel: float, chunk_rows: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lce, "CHUNK_BYTES", chunk_rows * 4 * VOCAB)
    model = _model()
    ids = torch.randint(0, VOCAB, (3, 17))
    targets = torch.randint(0, VOCAB, (3, 17))
    targets[0, :5] = IGNORE_INDEX
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        expected = model(input_ids=ids, labels=targets, shift_labels=targets, num_items_in_batch=40).loss
    expected.backward()
    reference = _grads(model)
    wrapped = CausalLMLoss(model)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = wrapped(ids, targets, normalizer=40)
    (loss * 2.0).backward()  # backward scales by the incoming gradient (a power of 2: exact in bf16)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for ours, theirs in zip(_grads(model), reference, strict=True):
        assert torch.allclose(ours, 2.0 * theirs, rtol=rel, atol=rel * theirs.abs().max().item())
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        default = wrapped(ids, targets)  # normalizer: the count of non-ignored targets (46)
    assert default.item() == pytest.approx(expected.item() * 40 / 46, rel=1e-6)


def test_steps_reuse_one_workspace() -> None:
    wrapped = CausalLMLoss(_model())
    ids = torch.randint(0, VOCAB, (2, 9))
    wrapped(ids, ids).backward()
    buffers = {key: tensor.data_ptr() for key, tensor in wrapped.workspace._buffers.items()}
    wrapped(ids, ids).backward()
    assert {key: tensor.data_ptr() for key, tensor in wrapped.workspace._buffers.items()} == buffers
    assert len(buffers) == 2


def test_unfused_mode_for_compile_is_the_hf_loss() -> None:
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 9))
    expected = model(input_ids=ids, labels=ids, shift_labels=ids).loss
    assert CausalLMLoss(model, fused=False)(ids, ids).item() == pytest.approx(expected.item(), rel=1e-6)
