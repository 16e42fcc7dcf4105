"""ServeConfig: the defaults stage 06 starts with and the values it refuses before anything loads."""

from __future__ import annotations

import pytest

from utils.core.errors import ConfigError
from utils.serve.config import ServeConfig

LOOPBACK = "127.0.0.1"


def test_binds_loopback_by_default() -> None:
    assert ServeConfig().host == LOOPBACK
    with pytest.raises(ConfigError, match="unknown prompt template"):
        ServeConfig(template="fancy")
    with pytest.raises(ValueError, match="temperature"):
        ServeConfig(temperature=3.0)
