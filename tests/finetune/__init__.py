"""Tests of utils.finetune, one file per module."""
