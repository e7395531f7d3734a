"""Active and wall time from scripted event sequences (pure) and through the service clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import select

from study.models import Submission
from study.simulate import SimClock
from study.timing import Event, compute_times, prompt_time


def ev(t, kind="save", active=True):
    return Event(t, kind, active)


def test_continuous_work():
    t = compute_times([ev(0, "open"), ev(30), ev(70), ev(100, "submit")], 120)
    assert (t.active_s, t.wall_s, t.idle_gaps) == (100, 100, 0)


def test_gap_longer_than_threshold_counts_zero():
    # 0 -> 50 active, 50 -> 400 (350 s away) excluded, 400 -> 460 active
    t = compute_times([ev(0, "open"), ev(50), ev(400), ev(460, "submit")], 120)
    assert (t.active_s, t.wall_s, t.idle_gaps) == (110, 460, 1)


def test_gap_equal_to_threshold_counts():
    assert compute_times([ev(0), ev(120)], 120).active_s == 120


def test_hidden_page_stops_the_clock_until_next_activity():
    seq = [ev(0, "open"), ev(40, "hidden", False), ev(100, "visible"), ev(130, "submit")]
    t = compute_times(seq, 120)
    assert t.active_s == 40 + 30 and t.wall_s == 130


def test_idle_heartbeats_do_not_count_after_them():
    # heartbeat at 30 with input counts; at 60 without input ends the stretch; 60->90 not counted
    seq = [ev(0, "open"), ev(30, "input"), ev(60, "heartbeat", False), ev(90, "heartbeat", False), ev(95, "save")]
    assert compute_times(seq, 120).active_s == 60


def test_browser_closed_and_resumed_next_day():
    seq = [ev(0, "open"), ev(60), ev(120), ev(86400, "open"), ev(86430), ev(86500, "submit")]
    t = compute_times(seq, 120)
    assert t.active_s == 120 + 100 and t.wall_s == 86500 and t.idle_gaps == 1


def test_unsorted_input_and_datetimes():
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    seq = [ev(base + timedelta(seconds=s)) for s in (90, 0, 30)]
    assert compute_times(seq, 60).active_s == 90


def test_threshold_is_configurable():
    seq = [ev(0), ev(100), ev(130)]
    assert compute_times(seq, 60).active_s == 30
    assert compute_times(seq, 120).active_s == 130


def test_empty_and_prompt_time():
    assert compute_times([], 120).active_s == 0
    assert prompt_time([1500, None, 500]) == 2.0


def test_service_times_from_scripted_clock(study_env):
    """open, 2 saves, hidden 10 min, back, submit: active and wall time stored at submission."""
    svc, admin, code, sid = study_env
    clock = SimClock(datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc))
    svc.clock = clock
    svc.register(code, "timer", "reader-pass-1", group=1)
    tok = svc.login("timer", "reader-pass-1")
    cv = svc.open_case(tok, svc.next_case(tok).assignment_id)
    mask = np.zeros((cv.height, cv.width), np.uint8)
    clock.advance(45)
    svc.save_slice(tok, cv.assignment_id, cv.start, mask)            # +45 active
    clock.advance(60)
    svc.heartbeat(tok, cv.assignment_id, visible=True, had_input=True)  # +60
    clock.advance(15)
    svc.heartbeat(tok, cv.assignment_id, visible=False, had_input=False)  # +15, then hidden
    clock.advance(600)
    svc.heartbeat(tok, cv.assignment_id, visible=True, had_input=True)  # hidden stretch excluded
    clock.advance(30)
    svc.save_slice(tok, cv.assignment_id, cv.start + 1, mask)        # +30
    clock.advance(200)                                               # idle > 120 s: excluded
    svc.submit(tok, cv.assignment_id)
    with svc.db.session() as s:
        sub = s.scalar(select(Submission))
        assert sub.active_s == pytest.approx(45 + 60 + 15 + 30)
        assert sub.wall_s == pytest.approx(45 + 60 + 15 + 600 + 30 + 200)
