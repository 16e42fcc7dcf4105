"""Ablation switches: what each changes in the forward pass, and that an ablated model is never mistaken for a
standard Llama (plain presets stay plain LlamaForCausalLM directories)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.core.errors import ConfigError
from utils.lm.model import ModelConfig, build_model, count_parameters, load_preset

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = [{"norm": "none"}, {"norm_position": "post"}, {"position_embedding": "none"}]
SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 100}


def _built(seed: int = 0, **ablation: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**SHAPE, **ablation)).eval()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: "-".join(a.values()))
def test_each_switch_changes_the_forward_pass_but_not_the_initial_weights(ablation: dict[str, str]) -> None:
    baseline, ablated = _built(), _built(**ablation)
    assert type(baseline).__name__ == "LlamaForCausalLM" and type(ablated).__name__ == "LumiLlamaForCausalLM"
    assert sum(p.numel() for p in ablated.parameters()) == count_parameters(ModelConfig(**SHAPE, **ablation)).total
    base_weights = dict(baseline.named_parameters())
    for name, weight in ablated.named_parameters():  # the same draws under the same seed: a controlled comparison
        assert torch.equal(weight, base_weights[name]), name
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(_logits(baseline, ids), _logits(ablated, ids))


def test_no_norm_has_no_norm_weights_at_all() -> None:
    names = [n for n, _ in _built(norm="none").named_parameters()]
    assert not [n for n in names if "norm" in n]
    assert count_parameters(ModelConfig(**SHAPE, norm="none")).total == \
        count_parameters(ModelConfig(**SHAPE)).total - 5 * SHAPE["hidden_size"]  # 2 per layer + the final one


def test_nope_leaves_queries_and_keys_unrotated() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = _built(position_embedding="none")
    q, k = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8)
    cos, sin = model.model.rotary_emb(q, torch.arange(12)[None].expand(2, -1))
    rotated_q, rotated_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(rotated_q, q) and torch.equal(rotated_k, k)


def test_post_norm_normalises_the_residual_stream() -> None:
    """Post-norm: every layer's output is an RMSNorm output (unit RMS at init, norm weights 1); pre-norm's is not."""
    outputs = {}
    for name, model in (("post", _built(norm_position="post")), ("pre", _built())):
        layer = model.model.layers[0]
        layer.register_forward_hook(lambda module, args, out, name=name: outputs.__setitem__(name, out))
        _logits(model, torch.randint(0, 100, (1, 6)))
    rms = outputs["post"].pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)
    assert not torch.allclose(outputs["pre"].pow(2).mean(-1).sqrt(), torch.ones_like(rms), atol=1e-1)


def test_standard_presets_build_plain_llama_and_record_no_ablation_keys() -> None:
    for name in ("tiny", "small", "base", "advanced_example"):
        model = load_preset(name).model
        assert model.is_plain_llama and set(model.shape()) & {"norm", "norm_position", "position_embedding"} == set()
    from utils.lm.model import to_llama_config

    config = to_llama_config(ModelConfig(**SHAPE))
    assert config.model_type == "llama" and not hasattr(config, "norm_position")


def test_bad_switches_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    preset = json.loads((REPO / "config" / "tiny.json").read_text())
    for bad, key in (({"norm": "layernorm"}, "norm"), ({"norm": "none", "norm_position": "post"}, "norm_position")):
        preset["model"] = {**SHAPE, **bad}
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(preset))
        with pytest.raises(ConfigError, match=key):
            load_preset(path)


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: "-".join(a.values()))
def test_saved_ablated_model_reloads_through_our_loader_and_stock_auto_refuses(tmp_path: Path,
                                                                               ablation: dict[str, str]) -> None:
    from utils.lm.loading import from_pretrained

    model = _built(**ablation)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lumi_llama"
    reloaded = from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (1, 9))
    assert torch.equal(_logits(model, ids), _logits(reloaded, ids))
    # Greedy decoding with the KV cache equals recomputing the whole sequence (NoPE and post-norm included).
    generated = reloaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert _logits(reloaded, generated[:, :-1])[0, -1].argmax() == generated[0, -1]


def test_stock_auto_classes_refuse_an_ablated_directory(tmp_path: Path) -> None:
    """A fresh interpreter that never registered lumi_llama must fail, not load a standard Llama."""
    _built(norm="none").save_pretrained(tmp_path)
    stock = subprocess.run([sys.executable, "-c", "import sys; from transformers import AutoModelForCausalLM; "
                            "AutoModelForCausalLM.from_pretrained(sys.argv[1])", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert stock.returncode != 0 and "lumi_llama" in stock.stderr
