"""Errors a user can act on. Each carries the exit code the CLI returns and a message naming the fix."""

from __future__ import annotations


class LumiError(Exception):
    """An expected failure caused by input or environment; the CLI prints the message, not a traceback."""

    exit_code = 1


class ConfigError(LumiError):
    """Unknown key, wrong type or invalid value in a config file or on the command line."""

    exit_code = 2


class DataError(LumiError):
    """Missing, empty or malformed input data."""

    exit_code = 1


class CheckpointError(LumiError):
    """Missing, incomplete, corrupt or incompatible checkpoint."""
