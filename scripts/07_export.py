#!/usr/bin/env python
"""Stage 07: export a model directory to one GGUF file for llama.cpp and Ollama, with a Modelfile beside it.

    python scripts/07_export.py --model_path checkpoints/pretrain/tiny/final                  # f16
    python scripts/07_export.py --model_path checkpoints/sft/tiny/merged --outtype q8_0
    python scripts/07_export.py --model_path checkpoints/sft/tiny/adapter --output tiny-chat.gguf  # merged first

Writes <model_path>-<outtype>.gguf beside the model directory (or --output) and <same name>.Modelfile. Then:
    llama-cli -m <file>.gguf -cnv                    # llama.cpp
    ollama create <name> -f <file>.Modelfile && ollama run <name>
Refused, with the reason: ablated models (lumi_llama), byte-level BPE tokenizers, q8_0 when a matrix width is not a
multiple of 32.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import parse_config, run_main  # noqa: E402
from utils.export.config import ExportConfig  # noqa: E402
from utils.export.writer import export_gguf  # noqa: E402

HELP = {
    "model_path": "a final/, best/ or merged/ model directory, or a PEFT adapter directory (merged into its base)",
    "outtype": "matrix type: f32 (exact), f16, bf16, or q8_0 (8-bit blocks; about half of f16's size)",
    "output": "the .gguf path; default <model_path>-<outtype>.gguf beside the model directory",
    "name": "the model's name in the file; default <run>-<directory>, e.g. tiny-final",
}


def main() -> None:
    export_gguf(parse_config(ExportConfig, __doc__, help_texts=HELP))


if __name__ == "__main__":
    sys.exit(run_main(main))
