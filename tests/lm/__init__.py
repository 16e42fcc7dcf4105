"""Tests of utils.lm, one file per module."""
