"""What the stages hand each other: the model, its tokenizer and its files, and what every stage does with a model.

model      presets -> LlamaConfig / LlamaForCausalLM; exact parameter counts without allocating
ablations  no norm, post-norm, NoPE: LumiLlamaForCausalLM (model_type lumi_llama) and its registration
loading    any model directory (HF model, or PEFT adapter + its base) for evaluation and serving
export     Hugging Face-format model directories (best/, final/, merged/) with tokenizer files
tokenizer  SentencePiece BPE or byte-level BPE training, the HF fast tokenizer export, loading, sha256
templates  chat templates (ChatML, instruct, chat) shared by every stage
shards     binary token shards with a checked header (stage 01 writes them, stage 02 reads them)
generation sampling and streaming, shared by pretraining samples, evaluation and serving
documents  what the scorer reads: a multiple-choice item, a rolling-perplexity document (no torch)
scoring    lm-evaluation-harness's log-likelihood scoring and multiple-choice metrics
perplexity lm-evaluation-harness's rolling log-likelihood perplexity (word, byte, bits per byte)
metrics    metrics.jsonl, TensorBoard/W&B, loss.png, FLOPs per token, device peaks, MFU
memory     training memory per preset and batch, from what autograd keeps
"""
