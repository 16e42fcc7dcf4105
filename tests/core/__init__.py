"""Tests of utils.core, one file per module."""
