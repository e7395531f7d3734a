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
from app.segment.inputs import as_number, range_numbers
from app.segment.prompts import predict_slice
from app.segment.results import ood_findings
from app.segment.session import Session, clamp_range
from usam.errors import PromptError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

log = logging.getLogger("usam.app")

Progress = Callable[[float, str], Any] | None
BATCH_HINT = "Corrected (prompted) slices are locked: batch runs keep them."
UNCERTAINTY_SLICES = 4  # decoder runs on the most-foreground slices after a whole-volume run


def _report(progress: Progress, done: int, total: int, what: str) -> None:
    """Forward progress (fraction, text) to the UI's progress bar when there is one."""
    if progress is not None:
        progress(done / max(total, 1), f"{what} {done}/{total}")


def segment_volume(s: Session, start: int | None = None, end: int | None = None,
                   progress: Progress = None, batch_size: int = 8) -> dict[str, Any]:
    """U-SAM without prompts over a slice range; locked (corrected) slices are kept."""
    lo, hi = clamp_range(*range_numbers(start, end), s.nz)
    if hi < lo:
        lo, hi = hi, lo
    todo = [z for z in range(lo, hi + 1) if not s.locked(z)]
    t0 = time.perf_counter()
    if todo:
        # batched encoder over the unlocked slices; progress after each batch
        out = s.predictor.predict_volume(todo, batch_size=batch_size,
                                         progress=lambda done, total: _report(progress, done, total, "slices"))
        for z in todo:
            s.overwrite_unlocked(z, out[z])
    s.actions.append({"op": "segment_volume", "start": lo, "end": hi})
    return {"start": lo, "end": hi, "segmented": len(todo), "kept_locked": (hi - lo + 1) - len(todo),
            "seconds": time.perf_counter() - t0}


def propagate_box(s: Session, start: int | None = None, end: int | None = None,
                  progress: Progress = None, margin: float = 2.0) -> dict[str, Any]:
    """From the start slice's mask, box-prompt each next slice with the previous slice's mask box.

    Runs towards `end` (either direction); stops where the previous mask is empty; locked
    slices are kept and their masks seed the next slice.
    """
    from usam.prompts import slice_box_from_mask

    margin = as_number(margin, "the propagation margin")
    lo, hi = clamp_range(*range_numbers(start, end), s.nz)
    if not s.labels[lo].any():
        raise PromptError(f"slice {lo} has no mask to propagate from: segment or prompt it first")
    step = 1 if hi >= lo else -1
    zs = list(range(lo + step, hi + step, step))
    done, stopped_at = 0, None
    t0 = time.perf_counter()
    for i, z in enumerate(zs):
        prev = s.labels[z - step]
        if not prev.any():
            stopped_at = z
            break
        if not s.locked(z):
            s.overwrite_unlocked(z, predict_slice(s, z, slice_box_from_mask(prev, margin=margin), 1))
            done += 1
        _report(progress, i + 1, len(zs), "slices")
    s.actions.append({"op": "propagate", "start": lo, "end": hi, "margin": margin})
    return {"start": lo, "end": hi, "propagated": done, "stopped_at": stopped_at,
            "seconds": time.perf_counter() - t0}


def sample_uncertainty(s: Session, lo: int, hi: int) -> None:
    """The model's own uncertainty on a few predicted slices of a run (kept on the session for the notice)."""
    fg = s.labels[lo:hi + 1].reshape(hi - lo + 1, -1).astype(bool).sum(axis=1)
    zs = [lo + int(i) for i in np.argsort(-fg, kind="stable")[:UNCERTAINTY_SLICES] if fg[i] > 0]
    probs = []
    try:
        for z in zs:
            probs.append(np.asarray(s.predictor.predict(z, None).probs))
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
        """Box-prompt each slice from start towards end with the previous slice's mask box."""
        s = self.ensure(s)
        r = propagate_box(s, start, end, progress=progress_fn(progress))
        stop = f" Stopped at slice {r['stopped_at']} (previous mask empty)." if r["stopped_at"] is not None else ""
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
