"""Config precedence and validation: defaults < JSON < CLI; unknown keys and wrong types name key and file."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from utils.core.cli import parse_config
from utils.core.config import load_config, save_resolved_config
from utils.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Example:
    name: str = "default"
    steps: int = 10
    rate: float = 0.5
    enabled: bool = True
    path: str | None = None
    tags: list[str] | None = None


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    return path


def test_precedence_defaults_json_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "from_json", "steps": 20, "_comment": "ignored"})
    config = parse_config(Example, "t", ["--config_path", str(path), "--steps", "30", "--no_enabled"])
    assert (config.name, config.steps, config.rate, config.enabled) == ("from_json", 30, 0.5, False)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"stpes": 3})
    with pytest.raises(ConfigError, match=r"cfg\.json.*unknown key 'stpes'"):
        load_config(Example, path)


@pytest.mark.parametrize("key,value", [("steps", "ten"), ("steps", 1.5), ("steps", True), ("enabled", 1),
                                       ("name", None), ("tags", "a")])
def test_wrong_type_names_key(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(Example, _write(tmp_path, {key: value}))


def test_int_accepted_for_float_and_null_for_optional(tmp_path: Path) -> None:
    config = load_config(Example, _write(tmp_path, {"rate": 1, "path": None, "tags": ["x"]}))
    assert config.rate == 1.0 and isinstance(config.rate, float) and config.tags == ["x"]


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(ConfigError, match="bad.json: invalid JSON at line 1"):
        load_config(Example, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Example, tmp_path / "absent.json")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = Example(name="x", steps=3)
    saved = save_resolved_config(config, tmp_path)
    assert load_config(Example, saved) == config


def test_cli_unknown_key_exits_2_and_names_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x", "vocab_sise": 5})
    result = subprocess.run([sys.executable, "scripts/01_prepare_data.py", "--config_path", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key 'vocab_sise'" in result.stderr and str(path) in result.stderr
