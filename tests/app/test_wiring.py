"""Every event method of the Segment and Results tabs is wired to an endpoint (app/segment/*: `wire`)."""
from __future__ import annotations

import inspect

from app.segment.layout import SegmentEvents


def test_every_guarded_event_method_has_an_endpoint(fake_ctx):
    from app.main import build_app

    demo = build_app(fake_ctx)
    wired = {fn.fn.__name__ for fn in demo.fns.values()
             if fn.api_name and isinstance(getattr(fn.fn, "__self__", None), SegmentEvents)}
    guarded = {name for name, f in inspect.getmembers(SegmentEvents, inspect.isfunction) if hasattr(f, "__wrapped__")}
    assert len(guarded) >= 20
    assert guarded <= wired, sorted(guarded - wired)
    # the page's upload button is the one unguarded event (it turns a refusal into one message)
    assert "load_volume_page" in wired
