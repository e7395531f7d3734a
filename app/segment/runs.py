"""Whole-volume runs: U-SAM without prompts over a slice range, and a box propagated from slice to slice."""
from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr
import numpy as np

from app import ood
from app.segment.events import Events, guard, on, progress_fn, view_outputs
from app.segment.inputs import as_number
from app.segment.results import ood_findings
from app.segment.session import Session

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

log = logging.getLogger("usam.app")

Progress = Callable[[float, str], Any] | None
BATCH_HINT = ("Corrected (prompted) slices are locked: a range run keeps them, and propagation stops at them "
              "(it never runs through a slice you corrected).")
UNCERTAINTY_SLICES = 4  # decoder runs on the most-foreground slices after a whole-volume run
STOP_REASONS = {"empty": "the previous slice's mask was empty", "locked": "it is a corrected (locked) slice"}


def _report(progress: Progress) -> Callable[[int, int], None] | None:
    """The library's progress(done, total) forwarded to the UI's progress bar (fraction, text)."""
    if progress is None:
        return None
    return lambda done, total: progress(done / max(total, 1), f"slices {done}/{total}")


def _slice_in_volume(v: Any, nz: int, what: str) -> int:
    """A From / To box's value as a slice of the volume (beyond its ends: its ends)."""
    return int(np.clip(int(round(as_number(v, what))), 0, nz - 1))


def segment_volume(s: Session, start: int | None = None, end: int | None = None,
                   progress: Progress = None) -> dict[str, Any]:
    """U-SAM without prompts over a slice range (None: the volume's ends), batched; locked slices are kept."""
    t0 = time.perf_counter()
    r = s.interactive.segment_volume(start, end, progress=_report(progress))
    return {**r, "seconds": time.perf_counter() - t0}


def propagate_box(s: Session, start: int | None = None, end: int | None = None,
                  progress: Progress = None, margin: float = 2.0) -> dict[str, Any]:
    """From the start slice's mask towards `end` (either direction): each next slice is prompted with the
    previous slice's mask box, its logits fed as the mask prompt (usam InteractiveSession.propagate).

    Stops where a mask comes out empty and at a corrected (locked) slice, which is kept as it is."""
    nz = s.nz
    lo = _slice_in_volume(s.z if start is None else start, nz, "the first slice")
    hi = _slice_in_volume(nz - 1 if end is None else end, nz, "the last slice")
    t0 = time.perf_counter()
    r = s.interactive.propagate(lo, hi, margin=margin, progress=_report(progress))
    stop = r["stopped_at"][0] if r["stopped_at"] else None
    return {"start": lo, "end": hi, "propagated": len(r["propagated"]), "slices": list(r["propagated"]),
            "stopped_at": None if stop is None else stop["z"], "stop_reason": None if stop is None else stop["why"],
            "seconds": time.perf_counter() - t0}


def sample_uncertainty(s: Session, lo: int, hi: int) -> None:
    """The model's own uncertainty on a few predicted slices of a run (kept on the session for the notice)."""
    fg = s.labels[lo:hi + 1].reshape(hi - lo + 1, -1).astype(bool).sum(axis=1)
    zs = [lo + int(i) for i in np.argsort(-fg, kind="stable")[:UNCERTAINTY_SLICES] if fg[i] > 0]
    probs = []
    try:
        for z in zs:
            probs.append(np.asarray(s.interactive.predictor.predict(z, None).probs))
    except Exception:  # the notice is advice: a failure here must not fail the run
        log.warning("uncertainty sampling failed:\n%s", traceback.format_exc())
    s.ood_model = ood.uncertainty_findings(ood.uncertainty_stats(probs))


class RunEvents(Events):
    """Events of the Whole volume panel."""

    @guard
    def segment_volume(self, s: Session | None, start: float, end: float, progress=gr.Progress()):
        """U-SAM without prompts over slices start..end; corrected (locked) slices are kept."""
        s = self.ensure(s)
        r = segment_volume(s, start, end, progress=progress_fn(progress))
        msg = (f"Segmented slices {r['start']}–{r['end']}: {r['segmented']} predicted, {r['kept_locked']} "
               f"corrected slices kept, {r['seconds']:.1f} s.")
        sample_uncertainty(s, r["start"], r["end"])
        notice = ood.notice_html(ood_findings(s), "this whole-volume result")
        return self.view(s) + (msg + ("\n\n" + notice if notice else ""),)

    @guard
    def propagate_box(self, s: Session | None, start: float, end: float, progress=gr.Progress()):
        """Box-prompt each slice from start towards end with the previous slice's mask box (and its mask);
        stops at an empty mask and at a corrected (locked) slice."""
        s = self.ensure(s)
        r = propagate_box(s, start, end, progress=progress_fn(progress))
        stop = (f" Stopped at slice {r['stopped_at']}: {STOP_REASONS.get(r['stop_reason'], r['stop_reason'])}."
                if r["stopped_at"] is not None else "")
        msg = (f"Propagated a box from slice {r['start']} towards {r['end']}: {r['propagated']} slices in "
               f"{r['seconds']:.1f} s.{stop}")
        return self.view(s) + (msg,)


def wire(ui: "SegmentUI", ev: RunEvents) -> None:
    """The two run buttons (progress shown on the batch line)."""
    outs = view_outputs(ui) + [ui.batch_info]
    on(ui, ui.vol_btn.click, ev.segment_volume, [ui.state, ui.z0, ui.z1], outs, "segment_volume", gpu=True,
       show_progress_on=[ui.batch_info])
    on(ui, ui.prop_btn.click, ev.propagate_box, [ui.state, ui.z0, ui.z1], outs, "propagate_box", gpu=True,
       show_progress_on=[ui.batch_info])
