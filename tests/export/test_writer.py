"""scripts/07_export.py without llama.cpp: what the GGUF file holds (metadata, vocabulary, tensor types and values),
the Modelfile, adapters merged first, refusals that leave the previous file in place, and the CLI's errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.core.errors import ConfigError
from utils.export.config import ExportConfig
from utils.export.layout import unpermute_for_llama_cpp
from utils.export.vocab import BYTE, CONTROL, USER_DEFINED
from utils.export.writer import export_gguf
from utils.lm.loading import load_model
from utils.lm.templates import CHATML_JINJA

gguf = pytest.importorskip("gguf")
REPO = Path(__file__).resolve().parents[2]


def _read(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def _export(model: Path, tmp_path: Path, outtype: str) -> Path:
    return export_gguf(ExportConfig(model_path=str(model), outtype=outtype,
                                    output=str(tmp_path / f"m-{outtype}.gguf"))).path


def test_f32_file_holds_the_model_exactly_in_llama_cpp_layout(serve_model_dir: Path, tmp_path: Path) -> None:
    path = _export(serve_model_dir, tmp_path, "f32")
    fields, tensors = _read(path)
    model = load_model(serve_model_dir).model
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert fields["llama.context_length"] == 2048 and fields["llama.attention.head_count"] == 4
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is False
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.chat_template"] == CHATML_JINJA
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == 400 and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types[1] == CONTROL and types[tokens.index("<|im_end|>")] == USER_DEFINED
    assert fields["tokenizer.ggml.eot_token_id"] == tokens.index("<|im_end|>")
    assert types[tokens.index("<0x0A>")] == BYTE  # byte fallback pieces kept as bytes
    q = model.state_dict()["model.layers.1.self_attn.q_proj.weight"].numpy()
    stored = np.asarray(tensors["blk.1.attn_q.weight"].data).reshape(q.shape)
    assert np.array_equal(stored, unpermute_for_llama_cpp(q, 4))
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd


def test_each_outtype_types_matrices_and_keeps_norms_f32(serve_model_dir: Path, tmp_path: Path) -> None:
    sizes = {}
    for outtype, name in (("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("f32", "F32")):
        path = _export(serve_model_dir, tmp_path, outtype)
        _, tensors = _read(path)
        assert tensors["blk.0.ffn_up.weight"].tensor_type.name == name
        assert tensors["token_embd.weight"].tensor_type.name == name
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
        sizes[outtype] = path.stat().st_size
    assert sizes["f32"] > sizes["f16"] == sizes["bf16"] > sizes["q8_0"]
    modelfile = (tmp_path / "m-q8_0.Modelfile").read_text()
    assert modelfile.startswith("FROM ./m-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in modelfile


def test_an_adapter_is_merged_into_its_base_first(serve_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = load_model(serve_model_dir).model
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(serve_model_dir / name, adapter / name)
    merged = lora.merge_and_unload().state_dict()["model.layers.0.mlp.down_proj.weight"].numpy()
    _, tensors = _read(_export(adapter, tmp_path, "f32"))  # tokenizer.model comes from the base
    stored = np.asarray(tensors["blk.0.ffn_down.weight"].data).reshape(merged.shape)
    assert np.allclose(stored, merged, atol=1e-6)
    assert not np.allclose(stored, load_model(serve_model_dir).model.state_dict()[
        "model.layers.0.mlp.down_proj.weight"].numpy(), atol=1e-4)


def test_an_ablated_model_is_refused_and_the_previous_file_stays(serve_model_dir: Path, tmp_path: Path) -> None:
    from utils.lm.model import ModelConfig, build_model

    ablated = tmp_path / "nope"
    build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=400, position_embedding="none")).save_pretrained(ablated)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        shutil.copy(serve_model_dir / name, ablated / name)
    output = _export(serve_model_dir, tmp_path, "f16")
    before = output.read_bytes()
    with pytest.raises(ConfigError, match="lumi_llama.*position_embedding=none"):
        export_gguf(ExportConfig(model_path=str(ablated), output=str(output)))
    assert output.read_bytes() == before and list(tmp_path.glob("*.partial")) == []


def test_the_cli_names_a_missing_model_and_a_bad_outtype(tmp_path: Path) -> None:
    missing = subprocess.run([sys.executable, "scripts/07_export.py", "--model_path", str(tmp_path / "none")],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0 and "model directory not found" in missing.stderr
    bad = subprocess.run([sys.executable, "scripts/07_export.py", "--outtype", "q4_0"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "q4_0" in bad.stderr
