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
# Runs of spaces (a single space is already what it becomes, and rewriting each one cost a third of the cleaning).
_SPACES_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}|[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_AROUND_NEWLINE_RE = re.compile(r" *\n *")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleaningOptions:
    fix_unicode: bool = True
    remove_urls: bool = True
    remove_code_blocks: bool = True


def clean_text(text: str, options: CleaningOptions) -> str:
    # Each step is skipped when a substring test shows it cannot match: on short documents the regex scans
    # cost as much as ftfy, and most documents hold no URL, fence or run of blank lines.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if options.fix_unicode and _ftfy_may_change(text):
        text = ftfy.fix_text(text, normalization="NFC")
    elif not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if not text.isprintable():
        text = _CONTROL_RE.sub("", text)
    if options.remove_code_blocks and ("```" in text or "~~~" in text):
        text = _FENCED_CODE_RE.sub("", text)
    if options.remove_urls and ("://" in text or "www." in text.lower()):
        text = _URL_RE.sub("", text)
    return normalize_whitespace(text)


def _ftfy_may_change(text: str) -> bool:
    """False only for text ftfy leaves as it is, up to the control characters stripped next: ASCII (no mojibake,
    ligatures or wide forms) without HTML entities or terminal escapes."""
    return not text.isascii() or "&" in text or "\x1b" in text


def normalize_whitespace(text: str) -> str:
    """Runs of spaces/tabs become one space, lines lose edge spaces, at most one blank line in a row."""
    text = _SPACES_RE.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _SPACE_AROUND_NEWLINE_RE.sub("\n", text)
    if "\n\n\n" in text:
        text = _MANY_NEWLINES_RE.sub("\n\n", text)
    return text.strip()


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
