"""Untrusted values of the study checked once each: whole numbers (ids, slice numbers, classes),
the experience group and years of experience. The service's modules and the trusted operations
(study.ops) use the same functions, so a value is refused with the same message everywhere."""
from __future__ import annotations

import math
from typing import Any

from study.errors import InvalidInput

GROUPS = (1, 2, 3)
MAX_YEARS = 80


def as_int(v: Any, what: str) -> int:
    """A whole number given as int, float or text ("Bad {what} number." otherwise; no booleans)."""
    if isinstance(v, bool):
        raise InvalidInput(f"Bad {what} number.")
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):      # OverflowError: an int beyond float
        raise InvalidInput(f"Bad {what} number.") from None
    if not math.isfinite(f) or f != int(f) or abs(f) > 2**31:
        raise InvalidInput(f"Bad {what} number.")
    return int(f)


def check_group(v: Any) -> int:
    """The experience group 1, 2 or 3."""
    g = as_int(v, "group")
    if g not in GROUPS:
        raise InvalidInput("Experience group is 1, 2 or 3.")
    return g


def optional_group(v: Any) -> int | None:
    """The experience group of a form where it may be left empty (None, "" or 0: not set yet)."""
    return None if v in (None, "", 0) else check_group(v)


def check_years(v: Any) -> float | None:
    """Years of experience: empty (None) or a number between 0 and 80."""
    if v in ("", None):
        return None
    try:
        years = float(v)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput("Years of experience must be a number.") from None
    if not math.isfinite(years):
        raise InvalidInput("Years of experience must be a number.")
    if not 0 <= years <= MAX_YEARS:
        raise InvalidInput(f"Years of experience must be between 0 and {MAX_YEARS}.")
    return years
