"""Checks of the values an interactive call receives (every input is hostile): a clear PromptError, nothing changed."""
from __future__ import annotations

import math
from typing import Any

from usam.errors import PromptError


def number(v: Any, what: str) -> float:
    """A finite number (bools and containers are refused)."""
    if v is None or isinstance(v, (bool, str, bytes, list, tuple, dict)):
        raise PromptError(f"{what} must be a number")
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"{what} must be a number, not {str(v)[:20]!r}") from None
    if not math.isfinite(f):
        raise PromptError(f"{what} must be a finite number")
    return f


def slice_index(z: Any, nz: int) -> int:
    """A whole slice index inside the volume."""
    f = number(z, "the slice index")
    if f != int(f):
        raise PromptError(f"the slice index must be a whole number, not {f}")
    if not 0 <= int(f) < nz:
        raise PromptError(f"slice {int(f)} is outside the volume (0..{nz - 1})")
    return int(f)


def point(x: Any, y: Any, shape_hw: tuple[int, int]) -> tuple[float, float]:
    """A pixel position (x = column, y = row) on a slice of shape (h, w): -0.5 <= x < w, -0.5 <= y < h."""
    h, w = shape_hw
    x, y = number(x, "x"), number(y, "y")
    if not (-0.5 <= x < w and -0.5 <= y < h):
        raise PromptError(f"the point ({x:.1f}, {y:.1f}) is outside the {w} x {h} slice")
    return x, y


def box(x0: Any, y0: Any, x1: Any, y1: Any, shape_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """A dragged box, corners in any order, that overlaps the slice and spans at least one pixel each way."""
    h, w = shape_hw
    xs = sorted((number(x0, "x0"), number(x1, "x1")))
    ys = sorted((number(y0, "y0"), number(y1, "y1")))
    if xs[1] < -0.5 or xs[0] >= w or ys[1] < -0.5 or ys[0] >= h:
        raise PromptError(f"the box lies outside the {w} x {h} slice")
    if xs[1] - xs[0] < 1 or ys[1] - ys[0] < 1:
        raise PromptError("the box is too small: drag across the structure")
    return xs[0], ys[0], xs[1], ys[1]


def klass(cls: Any, allowed: tuple[int, ...], what: str) -> int:
    """A class number among `allowed`."""
    f = number(cls, what)
    if f not in allowed:
        raise PromptError(f"{what} must be one of {', '.join(map(str, allowed))}, not {cls!r}")
    return int(f)


def slice_range(start: Any, end: Any, nz: int) -> tuple[int, int]:
    """First and last slice of a range (None: the volume's ends), clipped to the volume, in order."""
    lo = 0 if start is None else int(round(number(start, "the first slice")))
    hi = nz - 1 if end is None else int(round(number(end, "the last slice")))
    lo, hi = max(0, min(lo, nz - 1)), max(0, min(hi, nz - 1))
    return min(lo, hi), max(lo, hi)
