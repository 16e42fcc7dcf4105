"""Text cleaning: repair mojibake (ftfy), Unicode NFC, strip control characters, URLs and fenced code,
normalise whitespace. Pure functions of (text, options) so they run in worker processes unchanged."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import ftfy

# C0/C1 control characters except tab and newline (carriage returns are normalised to newlines first).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_URL_RE = re.compile(r"(?:https?|ftp)://\S+|www\.[^\s/]+\.\S+", re.IGNORECASE)
_FENCED_CODE_RE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_SPACES_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_SPACE_AROUND_NEWLINE_RE = re.compile(r" *\n *")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleaningOptions:
    fix_unicode: bool = True
    remove_urls: bool = True
    remove_code_blocks: bool = True


def clean_text(text: str, options: CleaningOptions) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if options.fix_unicode:
        text = ftfy.fix_text(text, normalization="NFC")
    else:
        text = unicodedata.normalize("NFC", text)
    text = _CONTROL_RE.sub("", text)
    if options.remove_code_blocks:
        text = _FENCED_CODE_RE.sub("", text)
    if options.remove_urls:
        text = _URL_RE.sub("", text)
    return normalize_whitespace(text)


def normalize_whitespace(text: str) -> str:
    """Runs of spaces/tabs become one space, lines lose edge spaces, at most one blank line in a row."""
    text = _SPACES_RE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE_RE.sub("\n", text)
    return _MANY_NEWLINES_RE.sub("\n\n", text).strip()


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Split at line boundaries (then spaces, then hard) into pieces of at most max_chars.

    Books and long web pages are split rather than dropped: they are the best pretraining text.
    """
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in _bounded_lines(text, max_chars):
        if size + len(line) + 1 > max_chars and current:
            pieces.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        pieces.append("\n".join(current))
    return [p.strip() for p in pieces if p.strip()]


def _bounded_lines(text: str, max_chars: int) -> list[str]:
    lines: list[str] = []
    for line in text.split("\n"):
        while len(line) > max_chars:
            cut = line.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            lines.append(line[:cut])
            line = line[cut:].lstrip()
        lines.append(line)
    return lines
