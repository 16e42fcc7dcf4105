"""What every stage script shares: logging setup, flag parsing into a config, and error-to-exit-code mapping."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from utils.core.config import add_dataclass_flags, load_config
from utils.core.errors import LumiError

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("lumi")


def setup_logging(level: int = logging.INFO) -> None:
    """INFO on the main process; under torchrun/accelerate launch the other ranks log warnings only."""
    if os.environ.get("RANK", "0") != "0":
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)


def make_parser(cls: type, description: str | None, help_texts: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of `cls`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # a typo must not silently match another flag
    add_dataclass_flags(parser, cls, help_texts)
    return parser


def parse_config(cls: type[T], description: str | None, argv: list[str] | None = None,
                 help_texts: dict[str, str] | None = None) -> T:
    """Parse `--config_path FILE` plus one flag per field of `cls`, then merge defaults < file < flags."""
    parser = make_parser(cls, description, help_texts)
    parser.add_argument("--config_path", type=Path, default=None, help="JSON config file (CLI flags override it)")
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config_path")
    return load_config(cls, config_path, args)


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores into the new flag's destination and says, once, to use the new one."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=f"deprecated spelling of {replacement}", **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        log.warning("%s is deprecated and will be removed: use %s", option_string, self.replacement)
        setattr(namespace, self.dest, values)


def run_main(main: Callable[[], Any]) -> int:
    """Run a stage, turning expected failures into one clear log line and a non-zero exit code."""
    setup_logging()
    try:
        main()
    except LumiError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0
