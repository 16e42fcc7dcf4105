"""Tests of utils.serve, one file per module."""
