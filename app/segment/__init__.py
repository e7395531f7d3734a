"""The Segment and Results & export tabs, one module a feature (logic on a Session, its events, its wiring).

session    the per-session display state; the interactive work is its usam InteractiveSession
inputs     checks of hostile UI / API values the library does not check (numbers, upload names)
opening    demo cases, memory budgets, a fresh Session with its InteractiveSession
payload    what the viewer draws (slice, overlay, prompts, thumbnails) and the status lines
events     what every event shares: the guard (errors -> messages), the Events base, VIEW outputs
loading    demo choice and uploads, the volume summary, the LOAD outputs
prompts    points, boxes, undo / redo / clear, a slice without prompts, the prompt rules
runs       whole-volume runs: range segmentation, box propagation, the uncertainty sample
display    slice navigation, HU window, opacity, visible classes, prompt mode
results    measurements, exports, the reference and its agreement, out-of-distribution notices
replay     the session file: export and replay
layout     the two tabs' components, SegmentEvents (all event classes) and wire_all

The plain functions below are the package's API (the bench and the tests call them).
"""
from app.segment.display import (checked_window, navigate, set_display, set_slice, set_window,
                                 set_window_preset)
from app.segment.inputs import as_number, md, upload_name
from app.segment.loading import load_file, volume_summary
from app.segment.opening import DEMO_CASES, demo_case, live_session_bytes, load_demo, start_session
from app.segment.payload import slice_status, timing_text, viewer_payload
from app.segment.prompts import add_box, add_point, clear_slice, redo, segment_slice, set_prompt_rules, undo
from app.segment.replay import (SESSION_FORMAT, apply_action, export_session, read_session_file, replay_session,
                                session_dict)
from app.segment.results import (export_measurements, export_nifti, load_reference, measurements, metric_rows,
                                 reference_metrics)
from app.segment.runs import propagate_box, segment_volume
from app.segment.session import CLASS_CHOICES, MODES, RULE_CHOICES, Session

__all__ = [
    "CLASS_CHOICES", "DEMO_CASES", "MODES", "RULE_CHOICES", "SESSION_FORMAT", "Session", "add_box", "add_point",
    "apply_action", "as_number", "checked_window", "clear_slice", "demo_case", "export_measurements",
    "export_nifti", "export_session", "live_session_bytes", "load_demo", "load_file", "load_reference", "md",
    "measurements", "metric_rows", "navigate", "propagate_box", "read_session_file", "redo", "reference_metrics",
    "replay_session", "segment_slice", "segment_volume", "session_dict", "set_display", "set_prompt_rules",
    "set_slice", "set_window", "set_window_preset", "slice_status", "start_session", "timing_text", "undo",
    "upload_name", "viewer_payload", "volume_summary",
]
