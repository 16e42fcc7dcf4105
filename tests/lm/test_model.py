"""Preset labels are true: the exact count matches a real LlamaForCausalLM and each label within 10 %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.core.errors import ConfigError
from utils.lm.model import PRESET_NAMES, ModelConfig, build_model, count_parameters, load_preset

LABEL_TOLERANCE = 0.10


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_label_within_ten_percent_of_exact_count(name: str) -> None:
    preset = load_preset(name)
    total = count_parameters(preset.model).total
    assert abs(total / 1e6 - preset.params_millions) <= LABEL_TOLERANCE * preset.params_millions
    label_millions = float(preset.label.rsplit("-", 1)[1].rstrip("M"))
    assert abs(total / 1e6 - label_millions) <= LABEL_TOLERANCE * label_millions


def test_base_is_gpt2_small_class() -> None:
    model = load_preset("base").model
    assert (model.num_hidden_layers, model.hidden_size, model.vocab_size) == (12, 768, 32768)
    assert model.tie_word_embeddings
    assert 120e6 <= count_parameters(model).total <= 128e6


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_count_matches_real_model(tied: bool, kv_heads: int | None) -> None:
    shape = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=kv_heads, vocab_size=300, tie_word_embeddings=tied)
    model = build_model(shape)
    real_total = sum(p.numel() for p in model.parameters())
    count = count_parameters(shape)
    assert count.total == real_total
    embedding = model.get_input_embeddings().weight.numel()
    head = 0 if tied else model.get_output_embeddings().weight.numel()
    assert count.non_embedding == real_total - embedding - head


def test_gqa_example_uses_fewer_kv_heads() -> None:
    model = load_preset("advanced_example").model
    assert model.kv_heads < model.num_attention_heads and model.rope_theta == 500000.0


def test_bad_preset_errors_name_the_key(tmp_path: Path) -> None:
    data = json.loads((Path(__file__).resolve().parents[2] / "config" / "tiny.json").read_text())
    data["model"]["hidden_sise"] = 3
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown key 'hidden_sise'"):
        load_preset(path)
    del data["model"]["hidden_sise"]
    data["model"]["num_attention_heads"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not divisible"):
        load_preset(path)
