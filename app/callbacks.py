"""The Gradio event callbacks: thin adapters from component values to app.handlers.

Each method returns exactly the outputs wired in app/main.py (VIEW / LOAD tuples below).
They are plain methods, so tests and `python -m app.bench` call them without a browser.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np

from app import handlers as H
from app import measure, ood
from app.context import AppContext
from app.render import CUSTOM_PRESET, preset_for
from app.state import CLASS_CHOICES, MODES, Session
from usam.errors import UsamError

log = logging.getLogger("usam.app")

BATCH_HINT = "Corrected (prompted) slices are locked: batch runs keep them."


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


def user_message(exc: BaseException) -> str:
    """A UsamError's text as the page shows it: without server paths (the log keeps the original)."""
    from usam.volumes import scrub

    text = scrub(str(exc)) or "The action was refused."
    if text != str(exc).strip():
        log.info("message shown without paths: %s", exc)
    return text


def header_html(ctx: AppContext) -> str:
    """Title, active weights and the demo-weights warning."""
    info = ctx.weights_info()
    note = f'<div class="usam-note" id="usam-weights-note">⚠ {info.note}</div>' if info.note else ""
    return (
        '<div id="usam-header"><div><h1>U-SAM Studio</h1><div class="sub">Rectal cancer segmentation in CT · '
        'U-SAM (SAM ViT encoder + U-shaped adapter) · <span style="color:rgb(230,40,40)">■</span> normal rectum '
        '<span style="color:rgb(40,110,255)">■</span> tumor</div></div>'
        f'<div class="usam-badge" id="usam-weights">Weights: <b>{info.label}</b> · device {ctx.device} · '
        f'sha256 <code>{info.sha256[:10]}</code></div></div>{note}'
    )


def reference_text(s: Session) -> str:
    """Which reference the agreement metrics compare with."""
    if s.reference is None:
        return "No reference label map: upload one (same grid as the volume) to see Dice / IoU / NSD."
    return f"Reference: **{s.reference_name}**. NSD tolerance 2.0 mm."


def _event_data(evt: Any) -> dict:
    """The browser's event payload ({} for API calls, which pass values as inputs)."""
    data = getattr(evt, "_data", None)
    return data if isinstance(data, dict) else {}


class Callbacks:
    """All event callbacks of the segmentation and results tabs, bound to one AppContext."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # --- shared outputs -------------------------------------------------------------------------
    def ensure(self, s: Session | None) -> Session:
        """API clients may skip init_session: start on the first demo case."""
        return s if isinstance(s, Session) else H.load_demo(self.ctx, 0)

    def view(self, s: Session, t0: float | None = None) -> tuple:
        """VIEW outputs: state, viewer payload, slider, slice status, timing line."""
        payload = H.viewer_payload(s)
        server_ms = None if t0 is None else (time.perf_counter() - t0) * 1000.0
        if server_ms is not None and s.last_timing:
            s.last_timing["server_ms"] = server_ms
        return (s, payload, gr.update(value=s.z, maximum=max(s.nz - 1, 1)), H.slice_status(s),
                H.timing_text(s, server_ms))

    def loaded(self, s: Session) -> tuple:
        """LOAD outputs: VIEW + volume info, range defaults, header, reference text, then everything
        derived from the previous volume reset (LOAD_RESET: demo choice, results, downloads,
        agreement table, replay message, batch line, notice) and the load status line."""
        demo = s.name if (s.name in H.DEMO_CASES and not s.is_upload) else None
        return self.view(s) + (H.volume_summary(s), gr.update(value=0, maximum=s.nz - 1),
                               gr.update(value=s.nz - 1, maximum=s.nz - 1), header_html(self.ctx),
                               reference_text(s),
                               gr.update(value=demo), [], None, None, None, [], "", BATCH_HINT, "",
                               f"Loaded **{H._md(s.name)}**.")

    # set by app.main.build_app: the Blocks (its upload set) and the number of LOAD outputs
    blocks: Any = None
    load_len: int = 0

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

    def _upload_path(self, path: Any) -> str:
        """The upload a load event received; with the app running, only a file uploaded to it."""
        if not path:
            raise gr.Error("No file received.", title="Not done", print_exception=False)
        if self.blocks is not None and not self.owns_upload(path):
            log.warning("load refused for a path that was not uploaded: %s", path)
            raise gr.Error("This file was not uploaded to this page: upload it again.", title="Not done",
                           print_exception=False)
        return str(path)

    @staticmethod
    def _carry_display(new: Session, old: Session | None) -> None:
        """Keep the user's display settings across volumes; free the old session's files."""
        if isinstance(old, Session):
            new.window, new.opacity, new.visible, new.mode, new.cls = old.window, old.opacity, old.visible, old.mode, old.cls
            old.close()

    # --- loading ------------------------------------------------------------------------------
    @guard
    def init_session(self, s: Session | None):
        """Start (or resume) the session on the first demo case."""
        return self.loaded(s if isinstance(s, Session) else H.load_demo(self.ctx, 0))

    @guard
    def load_demo_case(self, s: Session | None, name: str):
        """Load a demo phantom case by name."""
        new = H.load_demo(self.ctx, name)
        self._carry_display(new, s)
        return self.loaded(new)

    @guard
    def load_volume(self, s: Session | None, path: str | None):
        """Load an uploaded NIfTI / zipped DICOM / NRRD; a bad file leaves the previous volume."""
        path = self._upload_path(path)
        new = H.load_file(self.ctx, path, delete_after=self.owns_upload(path))
        self._carry_display(new, s)
        return self.loaded(new)

    def load_volume_page(self, s: Session | None, path: str | None):
        """The page's upload button: load_volume, but a refused file gives ONE message (the load status
        line and a warning toast) and leaves every other output as it was (no error on each output)."""
        try:
            return self.load_volume(s, path)
        except gr.Error as exc:
            msg = str(getattr(exc, "message", exc))
            gr.Warning(msg, title="Not loaded")
            return tuple(gr.skip() for _ in range(max(self.load_len - 1, 0))) + (f"⚠ **Not loaded:** {msg}",)

    # --- navigation ----------------------------------------------------------------------------
    @guard
    def set_slice(self, s: Session | None, z: float):
        """Show axial slice z."""
        s = self.ensure(s)
        H.set_slice(s, z)
        return self.view(s)

    @guard
    def go_to_slice(self, s: Session | None, z: float, evt: gr.EventData = None):
        """Viewer keyboard / wheel navigation (event data {z}); API clients pass z."""
        s = self.ensure(s)
        H.set_slice(s, _event_data(evt).get("z", z))
        return self.view(s)

    # --- prompts -------------------------------------------------------------------------------
    @guard
    def add_point(self, s: Session | None, x: float, y: float, z: float, mode_name: str, cls_name: str,
                  evt: gr.EventData = None):
        """A point prompt: a click in the browser (event data), or x, y, z (-1 = current slice),
        mode ('Negative point' = negative) and class ('Normal rectum' | 'Tumor') from an API client."""
        t0 = time.perf_counter()
        s = self.ensure(s)
        data = _event_data(evt)
        if data:
            x, y, zz = data["x"], data["y"], data.get("z")
            positive, c = bool(data.get("label", 1)), int(data.get("cls", s.cls))
        else:
            zz = None if z is None or H.as_number(z, "the slice index") < 0 else z
            positive, c = mode_name != MODES[1], CLASS_CHOICES.get(cls_name, s.cls)
        try:
            H.add_point(s, x, y, positive, c, z=zz)
        finally:
            self._ack(s, data)
        return self.view(s, t0)

    @guard
    def add_box(self, s: Session | None, x0: float, y0: float, x1: float, y1: float, z: float,
                evt: gr.EventData = None):
        """A box prompt, xyxy in slice pixels: a drag in the browser (event data) or from an API client."""
        t0 = time.perf_counter()
        s = self.ensure(s)
        data = _event_data(evt)
        if data:
            x0, y0, x1, y1, zz = data["x0"], data["y0"], data["x1"], data["y1"], data.get("z")
        else:
            zz = None if z is None or H.as_number(z, "the slice index") < 0 else z
        try:
            H.add_box(s, x0, y0, x1, y1, z=zz)
        finally:
            self._ack(s, data)
        return self.view(s, t0)

    @staticmethod
    def _ack(s: Session, data: dict) -> None:
        """Remember the browser's prompt sequence number so it can drop its provisional marks."""
        if "seq" in data:
            s.ack = max(s.ack, int(data["seq"]))

    def _slice_op(self, s: Session | None, op: Callable[[Session], Any], verb: str) -> tuple:
        t0 = time.perf_counter()
        s = self.ensure(s)
        if op(s) is False:
            gr.Info(f"Nothing to {verb} on slice {s.z}.")
        return self.view(s, t0)

    @guard
    def undo(self, s: Session | None):
        """Undo the last action on the current slice."""
        return self._slice_op(s, H.undo, "undo")

    @guard
    def redo(self, s: Session | None):
        """Redo the next action on the current slice."""
        return self._slice_op(s, H.redo, "redo")

    @guard
    def clear_slice(self, s: Session | None):
        """Clear the prompts and the mask of the current slice (undoable)."""
        return self._slice_op(s, H.clear_slice, "clear")

    @guard
    def segment_slice(self, s: Session | None):
        """Segment the current slice without prompts (undoable)."""
        return self._slice_op(s, H.segment_slice, "segment")

    # --- whole volume ----------------------------------------------------------------------------
    @staticmethod
    def _progress_fn(progress: Any) -> Callable[[float, str], None] | None:
        if progress is None:
            return None
        return lambda frac, text: progress(frac, desc=text)

    @guard
    def segment_volume(self, s: Session | None, start: float, end: float, progress=gr.Progress()):
        """U-SAM without prompts over slices start..end; corrected (locked) slices are kept."""
        s = self.ensure(s)
        r = H.segment_volume(s, start, end, progress=self._progress_fn(progress))
        msg = (f"Segmented slices {r['start']}–{r['end']}: {r['segmented']} predicted, {r['kept_locked']} "
               f"corrected slices kept, {r['seconds']:.1f} s.")
        self._sample_uncertainty(s, r["start"], r["end"])
        notice = ood.notice_html(self.ood_findings(s), "this whole-volume result")
        return self.view(s) + (msg + ("\n\n" + notice if notice else ""),)

    # --- out-of-distribution notice ----------------------------------------------------------------
    UNCERTAINTY_SLICES = 4  # decoder runs on the most-foreground slices after a whole-volume run

    def _sample_uncertainty(self, s: Session, lo: int, hi: int) -> None:
        """The model's own uncertainty on a few predicted slices of the run (kept on the session)."""
        fg = s.labels[lo:hi + 1].reshape(hi - lo + 1, -1).astype(bool).sum(axis=1)
        zs = [lo + int(i) for i in np.argsort(-fg, kind="stable")[:self.UNCERTAINTY_SLICES] if fg[i] > 0]
        probs = []
        try:
            for z in zs:
                probs.append(np.asarray(s.predictor.predict(z, None).probs))
        except Exception:  # the notice is advice: a failure here must not fail the run
            log.warning("uncertainty sampling failed:\n%s", traceback.format_exc())
        s.__dict__["_ood_model"] = ood.uncertainty_findings(ood.uncertainty_stats(probs))

    def ood_findings(self, s: Session, m: dict | None = None) -> list[ood.Finding]:
        """Why the current results may be unlike the training data: volume, model uncertainty, measurements
        (m: H.results(s) when the caller has it already)."""
        cache = s.__dict__.setdefault("_ood_volume", {})
        if s.volume_hash not in cache:
            cache.clear()
            cache[s.volume_hash] = ood.volume_findings(np.asarray(s.volume.array), s.volume.spacing)
        sp = tuple(float(t) for t in s.volume.spacing)
        return (cache[s.volume_hash] + list(s.__dict__.get("_ood_model", []))
                + ood.measurement_findings(H.results(s) if m is None else m, s.labels, sp))

    @guard
    def propagate_box(self, s: Session | None, start: float, end: float, progress=gr.Progress()):
        """Box-prompt each slice from start towards end with the previous slice's mask box."""
        s = self.ensure(s)
        r = H.propagate_box(s, start, end, progress=self._progress_fn(progress))
        stop = f" Stopped at slice {r['stopped_at']} (previous mask empty)." if r["stopped_at"] is not None else ""
        msg = (f"Propagated a box from slice {r['start']} towards {r['end']}: {r['propagated']} slices in "
               f"{r['seconds']:.1f} s.{stop}")
        return self.view(s) + (msg,)

    # --- display -----------------------------------------------------------------------------------
    @guard
    def set_window_preset(self, s: Session | None, name: str):
        """Display window preset (display only: the model input never changes); "Custom" keeps the window."""
        s = self.ensure(s)
        if name != CUSTOM_PRESET:
            H.set_window_preset(s, name)
        return self.view(s) + (s.window.width, s.window.level)

    @guard
    def set_window(self, s: Session | None, width: float, level: float):
        """Manual display window width / level in HU (display only); the preset it matches, else "Custom"."""
        s = self.ensure(s)
        H.set_window(s, width, level)
        return self.view(s) + (preset_for(s.window),)

    @guard
    def set_display(self, s: Session | None, opacity: float, visible: list[str], mode: str, cls: str):
        """Overlay opacity, visible classes, prompt mode and point class."""
        s = self.ensure(s)
        H.set_display(s, opacity=opacity, visible=visible, mode=mode, cls=cls)
        return self.view(s)

    # --- results and export ----------------------------------------------------------------------
    @guard
    def update_results(self, s: Session | None):
        """Measurements table, per-slice area plot, 3D surface and out-of-distribution notice of the current masks."""
        s = self.ensure(s)
        m = H.results(s)
        sp = tuple(float(t) for t in s.volume.spacing)
        return (s, measure.measurement_rows(m), measure.area_figure(s.labels, sp, s.z),
                measure.surface_figure(s.labels, sp),
                ood.notice_html(self.ood_findings(s, m), "these measurements"))

    @guard
    def export_nifti(self, s: Session | None):
        """Multi-label NIfTI (0 background, 1 normal rectum, 2 tumor) with the input's affine."""
        s = self.ensure(s)
        return s, [str(H.export_nifti(s))]

    @guard
    def export_measurements(self, s: Session | None):
        """Measurements as CSV and JSON."""
        s = self.ensure(s)
        return s, [str(p) for p in H.export_measurements(s, self.ctx)]

    @guard
    def export_session(self, s: Session | None):
        """Session JSON (volume hash, model hash, every prompt, window) that re-creates the masks."""
        s = self.ensure(s)
        return s, [str(H.export_session(s, self.ctx))]

    @guard
    def replay_session(self, s: Session | None, path: str | None):
        """Re-create the masks of a session JSON on the loaded volume."""
        s = self.ensure(s)
        path = self._upload_path(path)
        data = H.read_session_file(path, max_bytes=H._limits(self.ctx).max_session_file_kb << 10)
        new, rep = H.replay_session(self.ctx, data, s)
        new.opacity, new.visible, new.mode, new.cls = s.opacity, s.visible, s.mode, s.cls  # window: the session's
        s.close()
        msg = (f"Replayed {rep['actions']} actions. Masks "
               + ("**identical** to the recorded ones." if rep["labels_match"] else "**differ** from the recorded ones.")
               + ("" if rep["same_model"] else " The session was recorded with other weights."))
        return self.view(new) + (msg,)

    @guard
    def load_reference(self, s: Session | None, path: str | None):
        """Use an uploaded label map as the reference and compute Dice / IoU / NSD."""
        s = self.ensure(s)
        path = self._upload_path(path)
        H.load_reference(s, path, delete_after=self.owns_upload(path),
                         limits=H._limits(self.ctx).volume_limits())
        return s, H.metric_rows(H.reference_metrics(s)), reference_text(s)

    @guard
    def reference_metrics(self, s: Session | None):
        """Dice / IoU / NSD (2 mm tolerance) of the current masks against the reference."""
        s = self.ensure(s)
        return s, H.metric_rows(H.reference_metrics(s)), reference_text(s)
