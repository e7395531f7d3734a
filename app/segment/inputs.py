"""Checks of the values a UI event or an API client sends (every input is hostile) that the library does
not check itself: numbers of the page's own controls, upload names (slices, pixels, classes: usam.interactive)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from usam.errors import PromptError
from usam.interactive import checks


def as_number(v: Any, what: str) -> float:
    """A finite number from a UI / API value; a clear PromptError otherwise (nothing is changed).

    The page's text fields send numbers as text, which the library's own check refuses: text is parsed
    here, everything else is usam.interactive.checks.number's."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise PromptError(f"{what} must be a number, not {v[:20]!r}") from None
    return checks.number(v, what)


_NAME_CHARS = re.compile(r"[^\w .()+\-]+", re.UNICODE)


def upload_name(path: str | Path) -> str:
    """The name an upload is shown by: its file name only (no folder), printable, at most 80 characters."""
    base = re.split(r"[\\/]", str(path))[-1]
    clean = _NAME_CHARS.sub("_", base).strip(" ._") or "upload"
    return clean if len(clean) <= 80 else clean[:38] + "…" + clean[-38:]


def md(text: str) -> str:
    """Text shown inside Markdown as typed (an upload's name is the visitor's)."""
    return re.sub(r"([\\`*_\[\]#|<>~])", r"\\\1", str(text))
