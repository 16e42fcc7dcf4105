"""Tests of utils.train, one file per module."""
