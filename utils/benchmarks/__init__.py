"""make bench-* and make gpu-check: measured figures, and PASS/FAIL against named targets.

common           what every benchmark shares: TargetCheck/TargetMissed, machine_info, tables and figures,
                 emit_report, run_in_fresh_process and the peak-RSS helper
data             make bench-data: stage 01 throughput per stage and end to end, memory and recall at 1x and Nx, MinHash
data_scale       make bench-data's corpus: distinct short documents with planted near-duplicates; tree memory sampler
train            make bench-train: stage 02 tokens/s, MFU and memory of our step beside the reference; checkpoint saves
recipe           make bench-recipe: the optimizers, ablations and recipe experiments on mirror prose, Muon's targets
reference_llama  the plain-PyTorch LLaMA training step (TrainReference) that make bench-train compares ours against
serve            make bench-serve: stage 06 batch-1 TTFT and decode tok/s; 64 concurrent streams (200/429, memory)
export           make bench-export: GGUF export time and size per type; llama.cpp's decode tok/s beside ours
web              make bench-serve's chat page row: Send to first rendered token in headless Chromium (Selenium)
finetune         make bench-finetune: LoRA vs full SFT, steps/s, tokens/s and peak memory
gpu_check        make gpu-check: the sizes, the plan of rows, the run (one process) and its report
gpu_rows         make gpu-check's rows: their Context and sizes; the environment, data and pretraining checks
gpu_stage_rows   make gpu-check's rows of stages 03-06: SFT, DPO, evaluation, the API under load, flash-attn
"""
