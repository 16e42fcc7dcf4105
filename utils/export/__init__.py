"""Stage 07: export a trained model for other runtimes.

config      ExportConfig: model directory, output type (f32, f16, bf16, q8_0), output path
layout      what llama.cpp can run: the checks that refuse anything else, and HF -> llama.cpp tensor names/layout
vocab       the SentencePiece vocabulary as GGUF tokens, scores and token types
writer      the GGUF file (gguf's GGUFWriter), the Ollama Modelfile beside it, and the export run
"""
