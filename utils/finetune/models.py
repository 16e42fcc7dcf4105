"""Models and adapters of stages 03 and 04: loading (a tokenizer first, an adapter checked against the base it was
trained on), the LoRA settings, the context length, and the exports: adapter/ and merged/ with their origin."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.core.artifacts import atomic_directory, read_json, write_meta
from utils.core.errors import ConfigError, DataError
from utils.finetune.config import FinetuneConfig
from utils.lm.export import TOKENIZER_EXTRA_FILES, export_hf_model
from utils.lm.loading import ADAPTER_CONFIG, MODEL_CONFIG, from_pretrained, has_tokenizer, load_tokenizer_from

log = logging.getLogger(__name__)

WEIGHT_SUFFIX = ".safetensors"


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """Identity of a model directory's weights (sha256 over its safetensors files) and shape, recorded in every
    adapter so that loading it onto another base is caught instead of silently producing a different model."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob(f"*{WEIGHT_SUFFIX}")):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    shape = read_json(model_dir / MODEL_CONFIG)
    return {"path": str(model_dir.resolve()), "weights_sha256": digest.hexdigest(),
            **{key: shape.get(key) for key in ("hidden_size", "num_hidden_layers", "vocab_size")}}


def check_adapter_base(adapter_dir: Path, base_dir: Path) -> None:
    """The base an adapter names must be the one it was trained on (weights and shape)."""
    meta = adapter_dir / "meta.json"
    recorded = read_json(meta).get("base_fingerprint") if meta.is_file() else None
    if not recorded:
        log.warning("%s records no base fingerprint (not made by Lumi): trusting %s", adapter_dir, base_dir)
        return
    current = model_fingerprint(base_dir)
    if current["weights_sha256"] != recorded["weights_sha256"]:
        shape = ", ".join(f"{k} {recorded.get(k)} vs {current.get(k)}" for k in ("hidden_size", "num_hidden_layers",
                                                                                 "vocab_size"))
        raise DataError(f"adapter {adapter_dir} was trained on base {recorded['path']} (weights "
                        f"{recorded['weights_sha256'][:12]}), but its base_model_name_or_path points at {base_dir} "
                        f"(weights {current['weights_sha256'][:12]}; {shape}). Point base_model_name_or_path in "
                        f"{adapter_dir / ADAPTER_CONFIG} at the original base model, or retrain the adapter.")


def adapter_base_dir(adapter_dir: Path) -> Path:
    base = read_json(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path")
    base_dir = Path(base) if base else Path()
    if not base_dir.is_absolute() and not base_dir.exists():
        base_dir = (adapter_dir / str(base)).resolve()
    if not base or not (base_dir / MODEL_CONFIG).is_file():
        raise DataError(f"the base model of adapter {adapter_dir} ({base}) is not a model directory: edit "
                        f"base_model_name_or_path in {adapter_dir / ADAPTER_CONFIG} to point at it")
    return base_dir


@dataclass
class TrainingModel:
    model: Any  # a PreTrainedModel, or a PeftModel whose adapter keeps training (adapter input)
    tokenizer: Any
    tokenizer_dir: Path  # where export_hf_model copies the tokenizer from
    base_dir: Path  # the full model directory the weights start from
    adapter_dir: Path | None = None  # set when --model_path is an adapter

    @property
    def context(self) -> int:
        return int(self.model.config.max_position_embeddings)


def load_training_model(model_path: str, full: bool) -> TrainingModel:
    """Tokenizer first (a directory without one fails before any weights load), then the model in float32.
    An adapter directory is checked against its base, then merged (full fine-tuning) or trained further."""
    path = Path(model_path)
    if not path.is_dir():
        raise DataError(f"model directory not found: {path}; pass a pretraining final/, an SFT merged/ or adapter/")
    is_adapter = (path / ADAPTER_CONFIG).is_file()
    if not is_adapter and not (path / MODEL_CONFIG).is_file():
        raise DataError(f"{path} is neither a model directory ({MODEL_CONFIG}) nor a PEFT adapter ({ADAPTER_CONFIG})")
    base_dir = adapter_base_dir(path) if is_adapter else path
    tokenizer_dir = path if has_tokenizer(path) or not is_adapter else base_dir
    tokenizer = load_tokenizer_from(tokenizer_dir)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("the tokenizer of %s has no chat template; the merged model will carry none", tokenizer_dir)
    if is_adapter:
        check_adapter_base(path, base_dir)
    model = from_pretrained(base_dir, torch.float32)
    if is_adapter:
        model = _attach_adapter(model, path, trainable=not full)
    log.info("loaded %s (%s parameters%s)", path, f"{sum(p.numel() for p in model.parameters()):,}",
             f", adapter on {base_dir}" if is_adapter else "")
    return TrainingModel(model, tokenizer, tokenizer_dir, base_dir, path if is_adapter else None)


def _attach_adapter(model: Any, adapter_dir: Path, trainable: bool) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    except RuntimeError as exc:  # PEFT reports a base of another shape as a state-dict size mismatch
        raise DataError(f"adapter {adapter_dir} does not fit its base model ({str(exc).splitlines()[0][:200]}): "
                        f"point base_model_name_or_path at the model it was trained on") from exc
    return peft_model if trainable else peft_model.merge_and_unload()


def lora_config(config: FinetuneConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=list(config.lora_target_modules))


def peft_config_for(config: FinetuneConfig, loaded: TrainingModel) -> Any:
    """A new LoRA adapter, or None: full fine-tuning, or an input adapter that keeps training."""
    if config.full:
        return None
    if loaded.adapter_dir is not None:
        log.info("training the adapter of %s further (its own LoRA settings apply)", loaded.adapter_dir)
        return None
    return lora_config(config)


def resolve_max_length(config: FinetuneConfig, loaded: TrainingModel) -> int:
    if config.max_length is not None and config.max_length > loaded.context:
        raise ConfigError(f"--max_length {config.max_length} exceeds the context of {config.model_path} "
                          f"({loaded.context} positions); lower --max_length")
    return config.max_length or loaded.context


# ---------------------------------------------------------------- outputs


def unwrap_trained(trainer: Any) -> Any:
    """The trained model without the mixed-precision wrapper, so exports and measurements run in float32."""
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def save_adapter(model: Any, loaded: TrainingModel, adapter_dir: Path, meta: dict[str, Any]) -> Path:
    """adapter/: the PEFT weights, the tokenizer, and meta.json with the base fingerprint; base_model_name_or_path
    is the absolute base directory so utils.lm.loading.load_model and PEFT's Auto classes find it from anywhere."""
    with atomic_directory(adapter_dir) as tmp:
        model.save_pretrained(tmp, selected_adapters=["default"])
        config_path = tmp / ADAPTER_CONFIG
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = str(loaded.base_dir.resolve())
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        loaded.tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_EXTRA_FILES:
            if (loaded.tokenizer_dir / name).is_file():
                shutil.copy2(loaded.tokenizer_dir / name, tmp / name)
        write_meta(tmp, **meta, base_fingerprint=model_fingerprint(loaded.base_dir))
    return adapter_dir


def export_outputs(model: Any, loaded: TrainingModel, run_dir: Path, resolved: dict[str, Any],
                   meta: dict[str, Any]) -> Path:
    """Write adapter/ (LoRA runs) and merged/ (what stages 05 and 06 load); returns merged/."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        save_adapter(model, loaded, run_dir / "adapter", meta)
        model = model.merge_and_unload()
    merged = export_hf_model(model, loaded.tokenizer_dir, run_dir / "merged", resolved, meta)
    log.info("wrote %s", ", ".join(str(run_dir / n) for n in ("adapter", "merged") if (run_dir / n).is_dir()))
    return merged


def base_meta(stage: str, config: FinetuneConfig, loaded: TrainingModel) -> dict[str, Any]:
    """What merged/ and adapter/ record about their origin; the dataset of the base model travels along so that
    evaluation finds the demo multiple-choice set of the corpus the model was pretrained on."""
    base = read_json(loaded.base_dir / "meta.json") if (loaded.base_dir / "meta.json").is_file() else {}
    return {"stage": stage, "base_model": str(Path(config.model_path)), "dataset": base.get("dataset"),
            "finetune_dataset": config.dataset_path, "template": config.prompt_template,
            "method": "full" if config.full else "lora", "tokenizer_sha256": base.get("tokenizer_sha256")}
