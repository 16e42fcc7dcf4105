"""The precision choice every training stage makes: bf16 only where it is fast, fp16 needs CUDA."""

from __future__ import annotations

import pytest

import utils.core.environment as environment
from utils.core.errors import ConfigError


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch, native_bf16: bool,
                                                         expected: str) -> None:
    monkeypatch.setattr(environment, "cpu_bf16_native", lambda: native_bf16)
    assert environment.resolve_precision("auto", "cpu") == expected
    assert environment.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: honoured


def test_fp16_on_cpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        environment.resolve_precision("fp16", "cpu")
