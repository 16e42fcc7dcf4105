"""Lumi library: one module per concern; the numbered scripts in scripts/ are thin wrappers."""
