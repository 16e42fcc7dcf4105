"""Hugging Face-format model directories (pretraining's best/ and final/, fine-tuning's merged/): what stage 02
hands stages 03-06, loadable by AutoModelForCausalLM and AutoTokenizer with nothing else beside them. An ablated
model (utils/lm/ablations.py) is the one exception: its meta says `plain_llama: false` and names our loader."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from utils.core.artifacts import atomic_directory, write_json, write_meta

TOKENIZER_EXTRA_FILES = ("tokenizer.model",)  # save_pretrained does not copy the SentencePiece model


def export_hf_model(model: Any, tokenizer_dir: Path, out_dir: Path, resolved_config: dict[str, Any],
                    meta: dict[str, Any]) -> Path:
    """Write a self-contained Hugging Face model directory (loadable by AutoModelForCausalLM/AutoTokenizer)."""
    from transformers import AutoTokenizer, GenerationConfig

    from utils.lm.ablations import describe

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_EXTRA_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, tmp / name)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.8, top_p=0.95,
                         max_new_tokens=128).save_pretrained(tmp)
        write_json(tmp / "config.resolved.json", resolved_config)
        write_meta(tmp, **meta, **describe(model.config))
    return out_dir
