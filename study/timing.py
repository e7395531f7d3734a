"""Active and wall time of an annotation from its server-side event log. Pure functions."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

DEFAULT_IDLE_S = 120.0

# Event kinds that show the clinician at work. 'hidden' (page not visible) and an idle heartbeat
# (no input since the previous one) are recorded with active=False and end the active stretch.
ACTIVE_KINDS = {"open", "save", "prompt", "submit", "visible", "input", "heartbeat"}


@dataclass(frozen=True)
class Event:
    """One server-recorded event: time in seconds (or a datetime), kind, active flag."""
    t: float
    kind: str
    active: bool = True


@dataclass(frozen=True)
class Times:
    """Active time (idle gaps excluded) and wall time (first event to submission), seconds."""
    active_s: float
    wall_s: float
    idle_gaps: int


def _seconds(t: float | datetime) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def compute_times(events: Iterable[Event], idle_threshold_s: float = DEFAULT_IDLE_S) -> Times:
    """Active and wall time of one annotation.

    The interval between consecutive events counts as active when it starts at an active event
    and is at most idle_threshold_s long; a longer gap (coffee, closed browser) counts as zero,
    not as the threshold, so time away never inflates the result. An interval that starts at an
    inactive event (page hidden, heartbeat without input) does not count. Wall time is last
    minus first event."""
    evs = sorted(events, key=lambda e: _seconds(e.t))
    if not evs:
        return Times(0.0, 0.0, 0)
    active, gaps = 0.0, 0
    for a, b in zip(evs, evs[1:]):
        dt = _seconds(b.t) - _seconds(a.t)
        if not a.active:
            continue
        if dt > idle_threshold_s:
            gaps += 1
            continue
        active += dt
    return Times(active, _seconds(evs[-1].t) - _seconds(evs[0].t), gaps)


def prompt_time(acquisition_ms: Iterable[float | None]) -> float:
    """Total prompt acquisition time in seconds (clicks and box drags as measured per prompt)."""
    return sum(float(x) for x in acquisition_ms if x is not None) / 1000.0
