"""Tests of utils.data, one file per module."""
