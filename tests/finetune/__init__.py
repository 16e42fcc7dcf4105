"""Tests of utils.finetune.common, one file per module."""
