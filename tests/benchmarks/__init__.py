"""Tests of utils.benchmarks, one file per module."""
