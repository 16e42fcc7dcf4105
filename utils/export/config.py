"""Stage 07 settings: every field is a --flag of scripts/07_export.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass
class ExportConfig:
    model_path: str = "checkpoints/pretrain/tiny/final"  # a final/, best/ or merged/ directory, or a PEFT adapter
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    output: str | None = None  # default: <model_path>-<outtype>.gguf beside the model directory
    name: str | None = None  # the model's name in the file and in Ollama; default: derived from the path

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        model = Path(self.model_path).resolve()
        return model.with_name(f"{model.name}-{self.outtype}.gguf")

    def model_name(self) -> str:
        """'tiny-final' for checkpoints/pretrain/tiny/final: the run's name and the directory's."""
        if self.name:
            return self.name
        model = Path(self.model_path).resolve()
        return f"{model.parent.name}-{model.name}" if model.parent.name else model.name
