"""Tests of utils.sessions.runner, one file per module."""
