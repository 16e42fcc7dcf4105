"""Stage 07: a model directory -> one GGUF file that llama.cpp and Ollama run, and an Ollama Modelfile beside it.

    export_gguf(ExportConfig(model_path="checkpoints/pretrain/tiny/final", outtype="q8_0"))

Written with the `gguf` package's GGUFWriter (the library llama.cpp's own converter uses). Norms and other 1-D
weights stay f32 whatever the output type, as llama.cpp's converter keeps them; matrices take the output type. The
file is written under a temporary name and renamed when complete, so a failed export leaves the previous file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import DataError
from utils.export.config import ExportConfig
from utils.export.layout import LlamaShape, check_quantizable, llama_cpp_tensors, llama_shape
from utils.export.vocab import GGUFVocab, find_sentencepiece, sentencepiece_vocab
from utils.lm.templates import CHATML_JINJA, IM_END

log = logging.getLogger(__name__)

MODELFILE_SUFFIX = ".Modelfile"
# Ollama's Go template for the same ChatML our chat template renders ("<|im_start|>{role}\n{content}<|im_end|>\n").
OLLAMA_TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                   '<|im_start|>assistant\n')


@dataclass
class ExportResult:
    path: Path
    modelfile: Path
    outtype: str
    size_bytes: int
    seconds: float


def _qtypes(outtype: str) -> tuple[object, int]:
    """(GGML type of the matrices, llama.cpp file type) for an output type."""
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16),
            "q8_0": (q.Q8_0, f.MOSTLY_Q8_0)}[outtype]


def _add_metadata(writer: object, name: str, shape: LlamaShape, vocab: GGUFVocab, file_type: int) -> None:
    writer.add_architecture()
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_block_count(shape.num_layers)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_unk_token_id(vocab.unk_id)
    if vocab.eot_id is not None:
        writer.add_eot_token_id(vocab.eot_id)
    # Our engine adds no BOS or EOS to a prompt and our tokenizers have no dummy prefix: llama.cpp must do the same.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHATML_JINJA)


def _write(path: Path, name: str, model: object, shape: LlamaShape, vocab: GGUFVocab, outtype: str) -> None:
    import gguf

    matrix_type, file_type = _qtypes(outtype)
    writer = gguf.GGUFWriter(path, "llama")
    _add_metadata(writer, name, shape, vocab, int(file_type))
    for tensor_name, array in llama_cpp_tensors(model.state_dict(), shape):
        qtype = matrix_type if array.ndim == 2 else gguf.GGMLQuantizationType.F32
        writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_modelfile(gguf_path: Path, shape: LlamaShape) -> Path:
    """An Ollama Modelfile next to the GGUF (FROM is relative to the Modelfile): ChatML, stop at <|im_end|>."""
    path = gguf_path.with_suffix(MODELFILE_SUFFIX)
    path.write_text(f"FROM ./{gguf_path.name}\n"
                    f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
                    f'PARAMETER stop "{IM_END}"\n'
                    f"PARAMETER num_ctx {shape.context_length}\n", encoding="utf-8")
    return path


def export_gguf(config: ExportConfig) -> ExportResult:
    from utils.lm.loading import load_model

    started = time.perf_counter()
    model_path = Path(config.model_path)
    if not model_path.is_dir():
        raise DataError(f"model directory not found: {model_path}; pass --model_path <final/, merged/ or adapter dir>")
    loaded = load_model(model_path)  # a PEFT adapter is merged into its base here
    shape = llama_shape(loaded.model.config)
    check_quantizable(shape, config.outtype)
    vocab = sentencepiece_vocab(find_sentencepiece(model_path, loaded.base_path), shape.vocab_size)
    output = config.output_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        _write(partial, config.model_name(), loaded.model, shape, vocab, config.outtype)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    modelfile = write_modelfile(output, shape)
    result = ExportResult(output, modelfile, config.outtype, output.stat().st_size, time.perf_counter() - started)
    log.info("wrote %s (%s, %.1f MiB) in %.1f s; Ollama: %s", output, config.outtype, result.size_bytes / 2**20,
             result.seconds, modelfile)
    log.info("next: llama-cli -m %s -cnv   or   ollama create %s -f %s", output, config.model_name(), modelfile)
    return result
