"""Tests of utils.eval, one file per module."""
