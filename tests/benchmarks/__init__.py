"""Tests of utils.benchmarks.common, one file per module."""
