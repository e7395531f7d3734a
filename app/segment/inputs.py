"""Checks of the values a UI event or an API client sends (every input is hostile): numbers, slices,
pixels, the names of uploads."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from app.segment.session import Session
from usam.errors import PromptError


def as_number(v: Any, what: str) -> float:
    """A finite number from a UI / API value; a clear PromptError otherwise (nothing is changed)."""
    if v is None or isinstance(v, (list, tuple, dict)):
        raise PromptError(f"{what} must be a number")
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"{what} must be a number, not {str(v)[:20]!r}") from None
    if not math.isfinite(f):
        raise PromptError(f"{what} must be a finite number")
    return f


def range_numbers(start: Any, end: Any) -> tuple[float | None, float | None]:
    """The first and last slice of a range as numbers (None: the volume's end)."""
    return (None if start is None else as_number(start, "the first slice"),
            None if end is None else as_number(end, "the last slice"))


def check_z(s: Session, z: int | float | None) -> int:
    """The slice an action applies to (default: the current one), validated."""
    z = s.z if z is None else int(round(as_number(z, "the slice index")))
    if not 0 <= z < s.nz:
        raise PromptError(f"slice {z} is outside the volume (0..{s.nz - 1})")
    return z


def check_xy(s: Session, x: Any, y: Any) -> tuple[float, float]:
    """A pixel position (x = column, y = row) that must lie on the slice."""
    h, w = s.slice_shape
    x, y = as_number(x, "x"), as_number(y, "y")
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        raise PromptError(f"the point ({x:.1f}, {y:.1f}) is outside the {w} × {h} slice")
    return x, y


_NAME_CHARS = re.compile(r"[^\w .()+\-]+", re.UNICODE)


def upload_name(path: str | Path) -> str:
    """The name an upload is shown by: its file name only (no folder), printable, at most 80 characters."""
    base = re.split(r"[\\/]", str(path))[-1]
    clean = _NAME_CHARS.sub("_", base).strip(" ._") or "upload"
    return clean if len(clean) <= 80 else clean[:38] + "…" + clean[-38:]


def md(text: str) -> str:
    """Text shown inside Markdown as typed (an upload's name is the visitor's)."""
    return re.sub(r"([\\`*_\[\]#|<>~])", r"\\\1", str(text))
