"""Stage 02 (scripts/02_pretrain.py): pretraining from a preset on stage 01's shards.

pretrain    PretrainConfig, the model from a preset, evaluation and samples during training, pretrain()
loop        the training loop: Accelerate, accumulation, clipping, schedule, telemetry, checkpoints, loud failures
optimizers  AdamW, or torch.optim.Muon for hidden matrices with AdamW for the rest (one Optimizer)
loss        the output projection and cross-entropy fused, gradients computed in the forward pass
checkpoint  full-state checkpoints (atomic, checksummed), auto-resume, verification
windows     shards -> fixed-length training windows; sample order as a pure function of (seed, epoch)
"""
