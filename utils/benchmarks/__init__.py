"""make bench-* and make gpu-check."""
