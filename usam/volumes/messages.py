"""Text of user-facing volume errors: sizes in MiB, library messages without server paths."""
from __future__ import annotations

import re

_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"(),;]+){2,}[\\/]?")


def scrub(text: str) -> str:
    """A library's message without the server paths it may name (they are not the user's business)."""
    return _PATHLIKE.sub("<file>", str(text)).strip()


def mib(n: float) -> str:
    """A byte count as whole MiB, for messages."""
    return f"{n / 2**20:.0f} MiB"
