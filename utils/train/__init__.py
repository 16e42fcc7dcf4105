"""Stage 02: pretraining, its loop, loss, checkpoints and windows."""
