"""Typed configuration: dataclass defaults < JSON file < CLI flags.

Every stage owns one dataclass. `load_config` merges a JSON file and parsed CLI flags into it and
validates every key and type, so a typo in a config file is an error that names the key and the file
(exit code 2) instead of a silently ignored setting. Keys that start with "_" are comments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from utils.core.errors import ConfigError

T = TypeVar("T")

RESOLVED_CONFIG_NAME = "config.resolved.json"
COMMENT_PREFIX = "_"


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    name = getattr(inner, "__name__", str(inner))
    if typing.get_origin(inner) is list:
        name = f"list[{_type_name(typing.get_args(inner)[0])}]"
    return f"{name} or null" if optional else name


def _check_value(key: str, value: Any, tp: Any, source: str) -> Any:
    """Validate one value against its annotated type; ints are accepted where floats are expected."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: key '{key}' may not be null (expected {_type_name(tp)})")
    if typing.get_origin(inner) is list:
        (item_tp,) = typing.get_args(inner)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_tp, source) for i, v in enumerate(value)]
    if typing.get_origin(inner) is typing.Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ConfigError(f"{source}: key '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    ok = (
        (inner is bool and isinstance(value, bool))
        or (inner is int and isinstance(value, int) and not isinstance(value, bool))
        or (inner is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (inner is str and isinstance(value, str))
        or (inner is dict and isinstance(value, dict))
    )
    if not ok:
        raise ConfigError(
            f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return float(value) if inner is float else value


def validate_mapping(cls: type[T], values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check that every key is a field of `cls` and has the field's type; return the cleaned mapping."""
    types_ = _field_types(cls)
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith(COMMENT_PREFIX):
            continue
        if key not in types_:
            known = ", ".join(sorted(types_))
            raise ConfigError(f"{source}: unknown key '{key}'. Known keys: {known}")
        cleaned[key] = _check_value(key, value, types_[key], source)
    return cleaned


def read_json_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a JSON object, got {type(data).__name__}")
    return data


def merge_config(cls: type[T], layers: list[tuple[dict[str, Any], str]]) -> T:
    """Build `cls` from its defaults and then each (values, source name) layer in order, validating each."""
    values: dict[str, Any] = {}
    for layer, source in layers:
        values.update(validate_mapping(cls, layer, source))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def load_config(cls: type[T], json_path: Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build `cls` from its defaults, then the JSON file, then explicit overrides (CLI flags)."""
    layers = [(read_json_config(json_path), str(json_path))] if json_path is not None else []
    return merge_config(cls, layers + [(overrides or {}, "command line")])


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str] | None = None) -> None:
    """Add one `--field` flag per dataclass field; booleans get `--field` / `--no_field`.

    Flags default to None (argparse.SUPPRESS) so that only flags the user typed override the JSON file.
    """
    help_texts = help_texts or {}
    for field in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(_field_types(cls)[field.name])
        default = field.default if field.default is not dataclasses.MISSING else "(computed)"
        help_text = f"{help_texts.get(field.name, '')} (default: {default})".strip()
        if tp is bool:
            parser.add_argument(f"--{field.name}", dest=field.name, action="store_true",
                                default=argparse.SUPPRESS, help=help_text)
            parser.add_argument(f"--no_{field.name}", dest=field.name, action="store_false",
                                default=argparse.SUPPRESS, help=f"disable --{field.name}")
        elif typing.get_origin(tp) is list:
            item = typing.get_args(tp)[0]
            parser.add_argument(f"--{field.name}", nargs="+", type=item, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(tp) is typing.Literal:
            parser.add_argument(f"--{field.name}", choices=typing.get_args(tp), default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=tp, default=argparse.SUPPRESS, help=help_text)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_resolved_config(config: Any, directory: Path, name: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the fully resolved config beside an artifact so a run can be reproduced from it alone."""
    path = directory / name
    path.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
