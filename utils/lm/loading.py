"""Load any model directory a stage produces: a Hugging Face model (pretrain final/ or best/, merged SFT/DPO) or a
PEFT adapter directory (its base model is found from the adapter's config and the adapter applied on top).

Evaluation and serving both load through here, so both accept exactly the same directories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.core.artifacts import read_json
from utils.core.errors import DataError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    base_path: Path | None = None  # set for adapter directories

    @property
    def params_total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _read_meta(path: Path) -> dict[str, Any]:
    meta = path / "meta.json"
    return read_json(meta) if meta.is_file() else {}


def has_tokenizer(path: Path) -> bool:
    return all((path / name).is_file() for name in TOKENIZER_FILES)


def _base_of_adapter(path: Path) -> Path:
    base = read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise DataError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path; cannot find the base model")
    base_path = Path(base)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = (path / base).resolve()
    if not (base_path / MODEL_CONFIG).is_file():
        raise DataError(f"the base model of adapter {path} ({base}) is not a model directory; move it back or "
                        f"edit base_model_name_or_path in {path / ADAPTER_CONFIG}")
    return base_path


def load_tokenizer_from(path: Path, fallback: Path | None = None) -> Any:
    from transformers import AutoTokenizer

    for candidate in (path, fallback):
        if candidate is not None and has_tokenizer(candidate):
            return AutoTokenizer.from_pretrained(candidate)
    raise DataError(f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)} missing). Every Lumi model directory "
                    f"carries its tokenizer: export it with the stage that made the model, or copy the dataset's "
                    f"tokenizer/ files into it.")


def from_pretrained(path: Path, dtype: torch.dtype = torch.float32) -> Any:
    """AutoModelForCausalLM.from_pretrained for every model directory we write, ablated ones (lumi_llama) too."""
    from transformers import AutoModelForCausalLM

    from utils.lm.ablations import register_lumi_models

    register_lumi_models()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def load_model(path: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               merge_adapter: bool = True) -> LoadedModel:
    """Load a model directory for inference (eval mode). Adapters are merged by default: same logits, faster."""
    if not path.is_dir():
        raise DataError(f"model directory not found: {path}")
    if (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base_path = _base_of_adapter(path)
        base = from_pretrained(base_path, dtype)
        model = PeftModel.from_pretrained(base, path)
        if merge_adapter:
            model = model.merge_and_unload()
        tokenizer = load_tokenizer_from(path, fallback=base_path)
        loaded = LoadedModel(model, tokenizer, path, _read_meta(path), base_path)
    elif (path / MODEL_CONFIG).is_file():
        model = from_pretrained(path, dtype)
        loaded = LoadedModel(model, load_tokenizer_from(path), path, _read_meta(path))
    else:
        raise DataError(f"{path} is neither a model directory ({MODEL_CONFIG}) nor a PEFT adapter "
                        f"({ADAPTER_CONFIG}); pass a final/, best/, merged/ or adapter/ directory")
    loaded.model.to(device).eval()
    log.info("loaded %s (%s parameters%s)", path, f"{loaded.params_total:,}",
             f", adapter on {loaded.base_path}" if loaded.base_path else "")
    return loaded
