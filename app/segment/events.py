"""What every Segment / Results event shares: errors shown as messages, the session guard, the VIEW outputs.

Each feature module (loading, prompts, runs, display, results, replay) holds its logic as plain
functions on a Session, its event methods in one class based on `Events`, and a `wire(ui, ev)`
that registers those events on the components app/segment/layout.py builds.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from app.context import AppContext
from app.segment.opening import load_demo
from app.segment.payload import slice_status, timing_text, viewer_payload
from app.segment.session import Session
from usam.errors import UsamError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

log = logging.getLogger("usam.app")

QUIET = dict(show_progress="hidden")   # events that answer within a frame show no progress overlay


def user_message(exc: BaseException) -> str:
    """A UsamError's text as the page shows it: without server paths (the log keeps the original)."""
    from usam.volumes import scrub

    text = scrub(str(exc)) or "The action was refused."
    if text != str(exc).strip():
        log.info("message shown without paths: %s", exc)
    return text


def guard(fn: Callable) -> Callable:
    """User errors -> a clear message in the page; previous state and outputs stay unchanged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        sess = next((a for a in args if isinstance(a, Session)), None)
        try:
            if sess is None:
                return fn(*args, **kwargs)
            with sess.lock:  # events of one session never interleave (clicks may arrive in bursts)
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UsamError as exc:
            raise gr.Error(user_message(exc), title="Not done", print_exception=False) from exc
        except Exception as exc:  # a bug: keep the page alive and the state unchanged; the log gets the detail
            ref = uuid.uuid4().hex[:8]
            log.error("handler %s failed (ref %s):\n%s", fn.__name__, ref, traceback.format_exc())
            raise gr.Error(f"Internal error: this action failed and nothing was changed (reference {ref}; "
                           "the server log has the details).", title="Internal error",
                           print_exception=False) from exc

    return wrapper


def event_data(evt: Any) -> dict:
    """The browser's event payload ({} for API calls, which pass values as inputs)."""
    data = getattr(evt, "_data", None)
    return data if isinstance(data, dict) else {}


def progress_fn(progress: Any) -> Callable[[float, str], None] | None:
    """gr.Progress as the (fraction, text) callback the run functions report to."""
    if progress is None:
        return None
    return lambda frac, text: progress(frac, desc=text)


def view_outputs(ui: "SegmentUI") -> list:
    """The VIEW outputs, in the order Events.view returns them."""
    return [ui.state, ui.viewer, ui.slider, ui.status, ui.timing]


def on(ui: "SegmentUI", event: Callable, fn: Callable, inputs: list, outputs: list, name: str,
       gpu: bool = False, **kw: Any) -> Any:
    """Register one event with an explicit api_name (docs/API.md); GPU work wrapped for ZeroGPU."""
    return event(ui.ctx.gpu(fn) if gpu else fn, inputs, outputs, api_name=name, **kw)


class Events:
    """Base of the event classes: the context, the session every event works on, the VIEW outputs."""

    # set by app.segment.layout.wire_all: the Blocks (its upload set) and the number of LOAD outputs
    blocks: Any = None
    load_len: int = 0

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def ensure(self, s: Session | None) -> Session:
        """API clients may skip init_session: start on the first demo case."""
        return s if isinstance(s, Session) else load_demo(self.ctx, 0)

    def view(self, s: Session, t0: float | None = None) -> tuple:
        """VIEW outputs: state, viewer payload, slider, slice status, timing line."""
        payload = viewer_payload(s)
        server_ms = None if t0 is None else (time.perf_counter() - t0) * 1000.0
        if server_ms is not None and s.last_timing:
            s.last_timing["server_ms"] = server_ms
        return (s, payload, gr.update(value=s.z, maximum=max(s.nz - 1, 1)), slice_status(s),
                timing_text(s, server_ms))

    def owns_upload(self, path: str | Path) -> bool:
        """Whether `path` is a file uploaded to this server (Gradio's upload route), which the handler
        may delete after reading it. A path of anything else (another session's export in the cache,
        a file the server made) is never deleted (issue 13 §6)."""
        blocks = self.blocks
        if blocks is None:
            return False
        # Gradio records every file its /upload route stored (content-addressed: <sha256>/<name>);
        # files the app hands out (exports) are cached elsewhere and never enter this set
        uploads = getattr(blocks, "upload_file_set", set())
        return os.path.abspath(str(path)) in uploads or str(path) in uploads

    def upload_path(self, path: Any) -> str:
        """The upload an event received; with the app running, only a file uploaded to it."""
        if not path:
            raise gr.Error("No file received.", title="Not done", print_exception=False)
        if self.blocks is not None and not self.owns_upload(path):
            log.warning("load refused for a path that was not uploaded: %s", path)
            raise gr.Error("This file was not uploaded to this page: upload it again.", title="Not done",
                           print_exception=False)
        return str(path)
