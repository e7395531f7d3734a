"""Prompts on one slice: points and boxes, undo / redo / clear, a slice without prompts; each re-runs the decoder."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr
import numpy as np

from app.segment.events import QUIET, Events, event_data, guard, on, view_outputs
from app.segment.inputs import as_number, check_xy, check_z
from app.segment.session import CLASS_CHOICES, MODES, PromptItem, Session
from usam.errors import PromptError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

TIMINGS_KEPT = 200   # per session: the bench reads them


def model_prompts(items: tuple[PromptItem, ...]) -> Any:
    """Session prompts -> usam.prompts.SlicePrompts in slice pixels (None if empty); the library converts."""
    from usam.prompts import SlicePrompts

    pts = [p for p in items if p.kind == "point"]
    boxes = [p for p in items if p.kind == "box"][-1:]  # one box per slice: the latest
    if not pts and not boxes:
        return None
    return SlicePrompts(points=[[p.x, p.y] for p in pts], point_labels=[p.label for p in pts],
                        point_classes=[p.cls for p in pts], boxes=[list(b.box) for b in boxes],
                        box_classes=[0] * len(boxes))  # union box, as U-SAM/B


def predict_slice(s: Session, z: int, prompts: Any, n_prompts: int) -> np.ndarray:
    """Run the predictor on slice z (prompts: SlicePrompts or None); records the timing shown in the page."""
    t0 = time.perf_counter()
    res = s.predictor.predict(z, prompts)
    s.last_timing = {"z": z, "decoder_ms": float(res.decoder_ms), "encoder_ms": float(res.encoder_ms),
                     "cached": bool(res.cached), "predict_ms": (time.perf_counter() - t0) * 1000.0,
                     "prompts": n_prompts}
    s.timings.append(s.last_timing)
    del s.timings[:-TIMINGS_KEPT]
    return np.asarray(res.labels, dtype=np.uint8)


def _check_prompt_count(s: Session, z: int, kept: tuple[PromptItem, ...]) -> None:
    """At most s.max_points prompts on one slice (each one re-runs the decoder and adds an undo state)."""
    if len(kept) >= s.max_points:
        raise PromptError(f"slice {z} already has {len(kept)} prompts (at most {s.max_points}): "
                          "undo or clear some first")


def _commit_prompts(s: Session, z: int, items: tuple[PromptItem, ...]) -> None:
    """Predict slice z with these prompts and make the result its current, locked state."""
    s.commit(z, items, predict_slice(s, z, model_prompts(items), len(items)), locked=True)


def add_point(s: Session, x: float, y: float, positive: bool = True, cls: int = 1, z: int | None = None) -> None:
    """A positive / negative point of a class on a slice; the slice is re-predicted and locked."""
    z = check_z(s, z)
    x, y = check_xy(s, x, y)
    if int(cls) not in (1, 2):
        raise PromptError("the point class must be 1 (normal rectum) or 2 (tumor)")
    item = PromptItem("point", x, y, 1 if positive else 0, int(cls))
    _check_prompt_count(s, z, s.prompts(z))
    _commit_prompts(s, z, s.prompts(z) + (item,))
    s.z, s.cross_xy = z, (int(round(x)), int(round(y)))
    s.actions.append({"op": "point", "z": z, **item.to_dict()})


def add_box(s: Session, x0: float, y0: float, x1: float, y1: float, z: int | None = None) -> None:
    """A box on a slice (replaces that slice's previous box); re-predicted and locked."""
    z = check_z(s, z)
    x0, y0 = check_xy(s, x0, y0)
    x1, y1 = check_xy(s, x1, y1)
    if abs(x1 - x0) < 1 or abs(y1 - y0) < 1:
        raise PromptError("the box is too small: drag across the structure")
    item = PromptItem.from_dict({"kind": "box", "box": [x0, y0, x1, y1]})
    kept = tuple(p for p in s.prompts(z) if p.kind != "box")
    _check_prompt_count(s, z, kept)
    _commit_prompts(s, z, kept + (item,))
    s.z, s.cross_xy = z, (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
    s.actions.append({"op": "box", "z": z, **item.to_dict()})


def _step(s: Session, z: int | None, op: str) -> bool:
    """Undo ('undo') or redo ('redo') one action on a slice; False when there is nothing to step to."""
    z = check_z(s, z)
    h = s.histories.get(z)
    snap = (h.undo() if op == "undo" else h.redo()) if h else None
    if snap is None:
        return False
    s.restore(z, snap)
    s.z = z
    s.actions.append({"op": op, "z": z})
    return True


def undo(s: Session, z: int | None = None) -> bool:
    """Step back one action on a slice; False when there is nothing to undo."""
    return _step(s, z, "undo")


def redo(s: Session, z: int | None = None) -> bool:
    """Step forward one action on a slice; False when there is nothing to redo."""
    return _step(s, z, "redo")


def clear_slice(s: Session, z: int | None = None) -> None:
    """Remove a slice's prompts and mask (undoable); the slice is unlocked again."""
    z = check_z(s, z)
    s.commit(z, (), np.zeros(s.slice_shape, np.uint8), locked=False)
    s.z = z
    s.actions.append({"op": "clear", "z": z})


def segment_slice(s: Session, z: int | None = None) -> None:
    """Segment one slice without prompts (undoable; replaces its prompts)."""
    z = check_z(s, z)
    s.commit(z, (), predict_slice(s, z, None, 0), locked=False)
    s.z = z
    s.actions.append({"op": "segment_slice", "z": z})


def _api_z(z: Any) -> Any:
    """An API client's slice: -1 (or none) means the current slice."""
    return None if z is None or as_number(z, "the slice index") < 0 else z


class PromptEvents(Events):
    """Events of the viewer's prompts and the slice buttons."""

    @guard
    def add_point(self, s: Session | None, x: float, y: float, z: float, mode_name: str, cls_name: str,
                  evt: gr.EventData = None):
        """A point prompt: a click in the browser (event data), or x, y, z (-1 = current slice),
        mode ('Negative point' = negative) and class ('Normal rectum' | 'Tumor') from an API client."""
        t0 = time.perf_counter()
        s = self.ensure(s)
        data = event_data(evt)
        if data:
            x, y, zz = data["x"], data["y"], data.get("z")
            positive, c = bool(data.get("label", 1)), int(data.get("cls", s.cls))
        else:
            zz = _api_z(z)
            positive, c = mode_name != MODES[1], CLASS_CHOICES.get(cls_name, s.cls)
        try:
            add_point(s, x, y, positive, c, z=zz)
        finally:
            self._ack(s, data)
        return self.view(s, t0)

    @guard
    def add_box(self, s: Session | None, x0: float, y0: float, x1: float, y1: float, z: float,
                evt: gr.EventData = None):
        """A box prompt, xyxy in slice pixels: a drag in the browser (event data) or from an API client."""
        t0 = time.perf_counter()
        s = self.ensure(s)
        data = event_data(evt)
        if data:
            x0, y0, x1, y1, zz = data["x0"], data["y0"], data["x1"], data["y1"], data.get("z")
        else:
            zz = _api_z(z)
        try:
            add_box(s, x0, y0, x1, y1, z=zz)
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
        return self._slice_op(s, undo, "undo")

    @guard
    def redo(self, s: Session | None):
        """Redo the next action on the current slice."""
        return self._slice_op(s, redo, "redo")

    @guard
    def clear_slice(self, s: Session | None):
        """Clear the prompts and the mask of the current slice (undoable)."""
        return self._slice_op(s, clear_slice, "clear")

    @guard
    def segment_slice(self, s: Session | None):
        """Segment the current slice without prompts (undoable)."""
        return self._slice_op(s, segment_slice, "segment")


def wire(ui: "SegmentUI", ev: PromptEvents) -> None:
    """The viewer's point and box events (browser event data, or the hidden API inputs) and the slice buttons."""
    view = view_outputs(ui)
    on(ui, ui.viewer.point, ev.add_point, [ui.state, ui.api_x, ui.api_y, ui.api_z, ui.mode, ui.cls], view,
       "add_point", gpu=True, trigger_mode="multiple", **QUIET)
    on(ui, ui.viewer.box, ev.add_box, [ui.state, ui.api_x, ui.api_y, ui.api_x1, ui.api_y1, ui.api_z], view,
       "add_box", gpu=True, trigger_mode="multiple", **QUIET)
    on(ui, ui.undo_btn.click, ev.undo, [ui.state], view, "undo", **QUIET)
    on(ui, ui.redo_btn.click, ev.redo, [ui.state], view, "redo", **QUIET)
    on(ui, ui.clear_btn.click, ev.clear_slice, [ui.state], view, "clear_slice", **QUIET)
    on(ui, ui.auto_btn.click, ev.segment_slice, [ui.state], view, "segment_slice", gpu=True, **QUIET)
