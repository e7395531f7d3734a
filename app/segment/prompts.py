"""Prompts on one slice through the session's InteractiveSession: points and boxes, undo / redo / clear,
a slice without prompts, the prompt rules. Every prompt feeds the slice's previous mask back to the
decoder (each click corrects the output); clear starts the slice afresh."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from app.segment.events import QUIET, Events, event_data, guard, on, view_outputs
from app.segment.inputs import as_number
from app.segment.session import CLASS_CHOICES, MODES, RULE_CHOICES, Session
from usam.errors import PromptError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

TIMINGS_KEPT = 200   # per session: the bench reads them


def _slice(s: Session, z: Any) -> Any:
    """The slice an action applies to: the current one when none is given (the library checks it)."""
    return s.z if z is None else z


def _timed(s: Session, call: Callable[[], Any]) -> Any:
    """Run one model call of the interactive session; its timing becomes the line the page shows."""
    t0 = time.perf_counter()
    res = call()
    s.last_timing = {"z": res.z, "decoder_ms": float(res.decoder_ms), "encoder_ms": float(res.encoder_ms),
                     "cached": bool(res.cached), "predict_ms": (time.perf_counter() - t0) * 1000.0,
                     "prompts": len(res.prompts)}
    s.timings.append(s.last_timing)
    del s.timings[:-TIMINGS_KEPT]
    s.z = res.z
    return res


def add_point(s: Session, x: float, y: float, positive: bool = True, cls: int = 1, z: int | None = None) -> Any:
    """A positive / negative point of a class on a slice: re-predicted with its previous mask, locked."""
    res = _timed(s, lambda: s.interactive.add_point(_slice(s, z), x, y, cls, positive=positive))
    s.cross_xy = (int(round(float(x))), int(round(float(y))))
    return res


def add_box(s: Session, x0: float, y0: float, x1: float, y1: float, z: int | None = None) -> Any:
    """A box (all foreground, class 0) on a slice, replacing its previous box; re-predicted, locked."""
    res = _timed(s, lambda: s.interactive.add_box(_slice(s, z), x0, y0, x1, y1, cls=0))
    s.cross_xy = (int(round((float(x0) + float(x1)) / 2)), int(round((float(y0) + float(y1)) / 2)))
    return res


def undo(s: Session, z: int | None = None) -> bool:
    """Step back one action on a slice; False when there is nothing to undo."""
    res = s.interactive.undo(_slice(s, z))
    s.z = res.z
    return res.changed


def redo(s: Session, z: int | None = None) -> bool:
    """Step forward one action on a slice; False when there is nothing to redo."""
    res = s.interactive.redo(_slice(s, z))
    s.z = res.z
    return res.changed


def clear_slice(s: Session, z: int | None = None) -> None:
    """Remove a slice's prompts, mask and previous mask (undoable): its next prompt starts afresh."""
    s.z = s.interactive.clear(_slice(s, z)).z


def segment_slice(s: Session, z: int | None = None) -> None:
    """Segment one slice without prompts and without its previous mask (undoable; replaces its prompts)."""
    _timed(s, lambda: s.interactive.segment(_slice(s, z)))


def set_prompt_rules(s: Session, rules: str) -> None:
    """Prompt rules for the next prompts: 'none' (the network alone), 'box' or 'all' (or their page labels).

    Post-processing, named: the page shows it while it is on; recorded in the session file."""
    name = RULE_CHOICES.get(rules, rules) if isinstance(rules, str) else rules
    if name not in RULE_CHOICES.values():
        raise PromptError(f"unknown prompt rules {str(rules)[:40]!r}; choose from {', '.join(RULE_CHOICES.values())}")
    if name == s.rules:
        return
    s.interactive.set_rules(name)   # logged by the library: the session file replays it


def rules_label(s: Session) -> str:
    """The page's label of the session's prompt rules."""
    return next((k for k, v in RULE_CHOICES.items() if v == s.rules), s.rules)


def _api_z(z: Any) -> Any:
    """An API client's slice: -1 (or none) means the current slice."""
    return None if z is None or as_number(z, "the slice index") < 0 else z


class PromptEvents(Events):
    """Events of the viewer's prompts, the slice buttons and the prompt rules."""

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
            positive, c = data.get("label", 1) in (1, True), data.get("cls", s.cls)
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
            s.ack = max(s.ack, int(as_number(data["seq"], "the prompt sequence number")))

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

    @guard
    def set_prompt_rules(self, s: Session | None, rules: str):
        """Prompt rules (post-processing) for the next prompts: off (the network alone), box or all."""
        s = self.ensure(s)
        set_prompt_rules(s, rules)
        return self.view(s)


def wire(ui: "SegmentUI", ev: PromptEvents) -> None:
    """The viewer's point and box events (browser event data, or the hidden API inputs), the slice buttons
    and the prompt rules."""
    view = view_outputs(ui)
    on(ui, ui.viewer.point, ev.add_point, [ui.state, ui.api_x, ui.api_y, ui.api_z, ui.mode, ui.cls], view,
       "add_point", gpu=True, trigger_mode="multiple", **QUIET)
    on(ui, ui.viewer.box, ev.add_box, [ui.state, ui.api_x, ui.api_y, ui.api_x1, ui.api_y1, ui.api_z], view,
       "add_box", gpu=True, trigger_mode="multiple", **QUIET)
    on(ui, ui.undo_btn.click, ev.undo, [ui.state], view, "undo", **QUIET)
    on(ui, ui.redo_btn.click, ev.redo, [ui.state], view, "redo", **QUIET)
    on(ui, ui.clear_btn.click, ev.clear_slice, [ui.state], view, "clear_slice", **QUIET)
    on(ui, ui.auto_btn.click, ev.segment_slice, [ui.state], view, "segment_slice", gpu=True, **QUIET)
    on(ui, ui.rules.input, ev.set_prompt_rules, [ui.state, ui.rules], view, "set_prompt_rules", **QUIET)
