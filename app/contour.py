"""The study's contouring handlers: slice navigation, saves, copy, interpolation and submit.

The page (app/contour_js.py) holds the label map at the slice's own size and sends it as
mask text (study.masks); API clients pass the same text and the case's assignment id as
inputs. Rules kept here (each with a test in tests/security/test_study_integrity.py):
  - an absent mask (None / "") saves nothing: stored work is never erased by a missing value;
  - a mask is decoded only after the session is checked, and only at the case's slice size;
  - every call names the case (assignment id) it was made for; a call for another case than
    the one open in this session (a stale tab, a double-clicked submit) changes nothing.
StudyTab (app/study_tab.py) inherits these methods; `self.svc` is the StudyService.
"""
from __future__ import annotations

import time
from typing import Any

import gradio as gr
import numpy as np

from app.render import DEFAULT_PRESET, WINDOW_PRESETS, Window, apply_window, png_data_url
from study.masks import decode_labels, encode_labels, slice_strip

ARM_TEXT = {"manual": "Manual annotation", "usam_p": "U-SAM/P: click 3 points per class per slice, then Run U-SAM",
            "usam_b": "U-SAM/B: click two opposite box corners, then Run U-SAM",
            "ai_edit": "AI-assisted edit: Run U-SAM, then correct its output"}
PROMPT_ARMS = ("usam_p", "usam_b")   # arms whose readers click prompts on the prompt image
MAX_MASK_TEXT = 8_000_000      # characters; a 512^2 slice needs at most ~3.7 M (RLE) or 350 k (base64)


def _not_done(msg: str) -> gr.Error:
    return gr.Error(msg, title="Not done", print_exception=False)


def grey(hu: np.ndarray, preset: str | None) -> np.ndarray:
    """Windowed slice (h, w) uint8 through a preset (display only; unknown presets: default)."""
    w, l = WINDOW_PRESETS.get(preset if isinstance(preset, str) and preset else DEFAULT_PRESET,
                              WINDOW_PRESETS[DEFAULT_PRESET])
    return apply_window(hu, Window(w, l))


def event_data(evt: Any) -> dict:
    """The page's event payload ({} for API calls, which pass values as inputs)."""
    data = getattr(evt, "_data", None)
    return data if isinstance(data, dict) else {}


def page_values(mask: Any, aid: Any, evt: Any) -> tuple[Any, Any, dict]:
    """(mask text, assignment id, event data): the page's event data wins over the API inputs."""
    d = event_data(evt)
    if d:
        return d.get("mask"), d.get("aid"), d
    return mask, aid, {}


def same_case(cur: dict, aid: Any) -> None:
    """Refuse a call made for another case than the one open in this session."""
    if aid is None or aid == "":
        raise _not_done("The call does not name the case (assignment id): nothing was changed.")
    try:
        ok = float(aid) == float(cur["aid"]) and not isinstance(aid, bool)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise _not_done("This page showed another case than the one now open: nothing was changed. "
                        "The current case is shown now.")


def payload(cur: dict, sv, preset: str | None, states: dict, mode: str = "replace",
            mask: np.ndarray | None = None) -> dict:
    """The contour canvas value: slice image, the stored (or draft) mask as text, the slice strip."""
    lab = sv.mask if mask is None else mask
    return {"aid": cur["aid"], "z": int(sv.z), "start": cur["start"], "end": cur["end"], "h": cur["h"],
            "w": cur["w"], "sx": cur.get("sx", 1.0), "sy": cur.get("sy", 1.0),
            "slice": png_data_url(grey(sv.image, preset)),
            "mask": encode_labels(lab) if lab is not None else None,
            "source": sv.source if mask is None else "draft", "mask_mode": mode,
            "strip": slice_strip(states, cur["start"], cur["end"]), "arm": cur["arm"], "label": cur["label"]}


class ContourHandlers:
    """Annotation handlers of the study tab (mixed into StudyTab; plain methods for tests)."""

    svc: Any

    # -- case and slice views -------------------------------------------------------------------
    def _blank(self) -> tuple:
        return ("", 0, None, None, "")

    def _load_current(self, token: str, preset: str) -> tuple[dict | None, tuple]:
        """Open (resume) the reader's current case at its last slice."""
        cv = self.svc.next_case(token)
        if cv is None:
            p = self.svc.progress(token)
            return None, (f"All {p['total']} assigned cases are submitted. Thank you!",
                          0, None, None, "")
        cv = self.svc.open_case(token, cv.assignment_id)
        sp = list(cv.spacing) + [1.0, 1.0, 1.0]
        cur = {"aid": cv.assignment_id, "start": cv.start, "end": cv.end, "z": cv.resume_z, "arm": cv.arm,
               "h": cv.height, "w": cv.width, "label": cv.label, "points": [], "box": [], "shown": time.time(),
               "sy": float(sp[1]), "sx": float(sp[2])}
        return cur, self._show(token, cur, preset)

    def _info(self, cur: dict, states: dict, note: str = "") -> str:
        n = cur["end"] - cur["start"] + 1
        strip = slice_strip(states, cur["start"], cur["end"])
        text = (f"**{cur['label']}** · slices {cur['start']}–{cur['end']} ({n}) · now at slice **{cur['z']}** "
                f"({cur['z'] - cur['start'] + 1}/{n}) · {ARM_TEXT.get(cur['arm'], cur['arm'])} · "
                f"{strip.count('saved')} slices saved, {strip.count('nothing')} with nothing, "
                f"{strip.count('interpolated')} interpolated to confirm, {strip.count('untouched')} untouched")
        return text + (f"\n\n{note}" if note else "")

    def _show(self, token: str, cur: dict, preset: str, mode: str = "replace", mask: np.ndarray | None = None,
              note: str = "") -> tuple:
        """CASE outputs: info, slice number, contour payload, prompt image, prompt text."""
        sv = self.svc.get_slice(token, cur["aid"], cur["z"])
        states = self.svc.slice_states(token, cur["aid"])
        if mode == "replace":                     # a new slice shown: its prompts start afresh
            cur["shown"] = time.time()
            cur["points"], cur["box"] = [], []
        # the prompt image only in the arms that click prompts (its PNG costs every Save & next)
        prompt = (np.repeat(grey(sv.image, preset)[..., None], 3, axis=2)
                  if cur.get("arm") in PROMPT_ARMS else None)
        return (self._info(cur, states, note), cur["z"], payload(cur, sv, preset, states, mode, mask),
                prompt, self._prompt_text(cur))

    def _need(self, cur) -> dict:
        if not isinstance(cur, dict) or "aid" not in cur:
            raise _not_done("No case is open: log in first.")
        return cur

    def _prompt_text(self, cur: dict) -> str:
        return ""

    def _check(self, token: str, cur: Any, aid: Any) -> dict:
        """The open case of an authorised session, and the call names that case (in this order:
        a stranger learns nothing about cases, and nothing is decoded for them)."""
        cur = self._need(cur)
        self.svc.me(token)
        same_case(cur, aid)
        return cur

    def _save_text(self, token: str, cur: dict, mask: Any) -> bool:
        """Save the page's mask of the current slice; an absent mask saves nothing (False).

        Called after _check: the session is authorised and the case is the open one."""
        if mask is None or (isinstance(mask, str) and not mask.strip()):
            return False
        if not isinstance(mask, str) or len(mask) > MAX_MASK_TEXT:
            raise _not_done("The mask could not be read: nothing was saved.")
        labels = decode_labels(mask, (cur["h"], cur["w"]))
        self.svc.save_slice(token, cur["aid"], cur["z"], labels, "manual" if labels.any() else "empty")
        return True

    # -- navigation -----------------------------------------------------------------------------
    def goto(self, token, cur, mask, aid, z, preset, evt: gr.EventData = None):
        """Save the current slice (when a mask is sent), then show slice z."""
        cur = self._need(cur)
        mask, aid, d = page_values(mask, aid, evt)
        if d:
            z = d.get("target", z)
        z = _slice_number(z)                     # checked before anything is saved
        cur = self._check(token, cur, aid)
        self._save_text(token, cur, mask)
        cur["z"] = int(min(max(z, cur["start"]), cur["end"]))
        # navigation is input activity, and the server remembers the slice for resuming
        self.svc.heartbeat(token, cur["aid"], True, True, cur["z"])
        return (cur,) + self._show(token, cur, preset)

    def next_slice(self, token, cur, mask, aid, preset, evt: gr.EventData = None):
        """Save & next."""
        cur = self._need(cur)
        return self.goto(token, cur, mask, aid, cur["z"] + 1, preset, _Moved(evt, cur["z"] + 1))

    def previous_slice(self, token, cur, mask, aid, preset, evt: gr.EventData = None):
        """Save & previous."""
        cur = self._need(cur)
        return self.goto(token, cur, mask, aid, cur["z"] - 1, preset, _Moved(evt, cur["z"] - 1))

    def nothing(self, token, cur, aid, preset, evt: gr.EventData = None):
        """Store "nothing on this slice" (an empty mask) and move on."""
        cur = self._need(cur)
        _, aid, _ = page_values(None, aid, evt)
        cur = self._check(token, cur, aid)
        self.svc.save_slice(token, cur["aid"], cur["z"], np.zeros((cur["h"], cur["w"]), np.uint8), "empty")
        if cur["z"] < cur["end"]:
            cur["z"] += 1
            self.svc.heartbeat(token, cur["aid"], True, True, cur["z"])
        return (cur,) + self._show(token, cur, preset)

    def copy_previous(self, token, cur, aid, preset, evt: gr.EventData = None):
        """The reader's saved mask of the previous slice as this slice's draft (saved when moving on)."""
        cur = self._need(cur)
        _, aid, _ = page_values(None, aid, evt)
        cur = self._check(token, cur, aid)
        if cur["z"] <= cur["start"]:
            raise _not_done("This is the first slice of the range.")
        prev = self.svc.get_slice(token, cur["aid"], cur["z"] - 1).mask
        if prev is None:
            raise _not_done("The previous slice has no saved mask to copy.")
        return (cur,) + self._show(token, cur, preset, mode="draft", mask=prev,
                                   note=f"Copied from slice {cur['z'] - 1}: edit, then Save & next.")

    def interpolate(self, token, cur, mask, aid, preset, evt: gr.EventData = None):
        """Save this slice (when sent), then fill untouched slices between saved ones (shape-based)."""
        cur = self._need(cur)
        mask, aid, _ = page_values(mask, aid, evt)
        cur = self._check(token, cur, aid)
        self._save_text(token, cur, mask)
        res = self.svc.interpolate(token, cur["aid"])
        zs = res["interpolated"]
        note = (f"Interpolated {len(zs)} slice{'s' if len(zs) != 1 else ''} ({_ranges(zs)}): each is marked "
                f"interpolated until you check it and press Save & next." if zs else
                "Nothing to interpolate: save two slices with a gap of untouched slices between them first.")
        return (cur,) + self._show(token, cur, preset, note=note)

    def rewindow(self, token, cur, preset):
        """New window preset: the same slice and the reader's unsaved strokes on a re-windowed image."""
        cur = self._need(cur)
        return self._show(token, cur, preset, mode="keep")[2:4]

    def submit(self, token, cur, mask, aid, preset, evt: gr.EventData = None):
        """Save the current slice (when sent), submit the case the page names, open the next one."""
        cur = self._need(cur)
        mask, aid, _ = page_values(mask, aid, evt)
        cur = self._check(token, cur, aid)
        self._save_text(token, cur, mask)
        res = self.svc.submit(token, cur["aid"])
        cur2, outs = self._load_current(token, preset)
        msg = f"Case submitted ({res['slices_saved']} of {res['slices']} slices annotated)."
        return (cur2, msg) + outs


class _Moved:
    """Event data of a one-slice move with its target filled in (the page sends none)."""

    def __init__(self, evt: Any, target: int):
        d = dict(event_data(evt))
        if d:
            d["target"] = target
        self._data = d


def _ranges(zs: list[int]) -> str:
    """'3–5, 8' for [3, 4, 5, 8]."""
    out, run = [], []
    for z in sorted(zs):
        if run and z != run[-1] + 1:
            out.append(run)
            run = []
        run.append(z)
    if run:
        out.append(run)
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in out)


def _slice_number(z: Any) -> int:
    """A slice number from the page / API: a finite number (clamped to the case range later)."""
    try:
        v = float(z)
    except (TypeError, ValueError, OverflowError):
        raise _not_done("The slice number must be a number.") from None
    if not np.isfinite(v) or isinstance(z, bool):
        raise _not_done("The slice number must be a number.")
    return int(max(min(v, 2**31), -2**31))
