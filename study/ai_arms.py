"""The AI arms: the reader's prompts checked against the slice and converted for usam, run as steps
of one interactive session per assignment (usam.interactive: a click feeds the slice's previous
output back, so it corrects it), and every prompt and model output recorded."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sqlalchemy.orm import Session

from study import reading
from study.cases import CaseCache
from study.errors import Conflict, InvalidInput, PermissionDenied
from study.inputs import as_int
from study.models import ActivityEvent, Case, Clinician, ModelOutput, PromptEvent
from study.scoring import encode_mask

SessionFactory = Callable[[Any], Any]   # volume -> usam.interactive.InteractiveSession
AI_ARMS = ("usam_p", "usam_b", "ai_edit")
MAX_PROMPT_MS = 3_600_000


def to_prompts(pts: list, boxes: list):
    """Slice-pixel prompt tuples -> usam SlicePrompts (the library converts to its frame).

    The study's boxes end one past their last pixel (x0 < x1 <= w); SlicePrompts' corners are
    the first and last pixel, hence the - 1."""
    from usam.prompts import SlicePrompts

    return SlicePrompts(points=[[p[0], p[1]] for p in pts], point_labels=[int(p[3]) for p in pts],
                        point_classes=[p[2] for p in pts],
                        boxes=[[b[0], b[1], max(b[0], b[2] - 1), max(b[1], b[3] - 1)] for b in boxes[:1]],
                        box_classes=[b[4] for b in boxes[:1]])


def _prompt_ms(v: Any) -> float | None:
    """A prompt's acquisition time in ms (None: not measured)."""
    if v is None:
        return None
    ms = float(v)
    if not (np.isfinite(ms) and 0 <= ms <= MAX_PROMPT_MS):
        raise InvalidInput("Bad prompt time.")
    return ms


def check_prompts(points: list, box, h: int, w: int, arm: str) -> tuple[list, list]:
    """Validate prompt tuples against the slice size (out-of-range coordinates are refused)."""
    pts, boxes = [], []
    if len(points) > 64:
        raise InvalidInput("Too many points.")
    for p in points:
        if not isinstance(p, (list, tuple)) or len(p) < 3:
            raise InvalidInput("A point is (x, y, class[, positive, acquisition_ms]).")
        x, y = float(p[0]), float(p[1])
        cls = as_int(p[2], "class")
        pos = bool(p[3]) if len(p) > 3 else True
        ms = float(p[4]) if len(p) > 4 and p[4] is not None else None
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w and 0 <= y < h) or cls not in (0, 1, 2):
            raise InvalidInput("Point outside the slice or bad class.")
        pts.append((x, y, cls, pos, _prompt_ms(ms)))
    if box is not None and len(box):
        if len(box) < 4:
            raise InvalidInput("A box is (x0, y0, x1, y1[, class, acquisition_ms]).")
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        cls = as_int(box[4], "class") if len(box) > 4 else 0
        ms = float(box[5]) if len(box) > 5 and box[5] is not None else None
        if not all(np.isfinite(v) for v in (x0, y0, x1, y1)) or not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise InvalidInput("Box outside the slice or empty.")
        boxes.append((x0, y0, x1, y1, cls, _prompt_ms(ms)))
    if arm == "usam_p" and boxes:
        raise InvalidInput("This arm uses point prompts only.")
    if arm == "usam_b" and pts:
        raise InvalidInput("This arm uses box prompts only.")
    return pts, boxes


class Sessions:
    """One interactive session per assignment (a reader's case), the `keep` most recently used kept
    (thread-safe). An evicted session is rebuilt on the next call: its slices then start afresh."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._items: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, assignment_id: int, case: Case, factory: SessionFactory | None, cache: CaseCache) -> Any:
        """The assignment's session, built by `factory` from the case's volume in `cache` on first use
        (outside the lock: building it may load the model)."""
        if factory is None:
            raise Conflict("No U-SAM model is configured on this server for the AI arms.")
        with self._lock:
            if assignment_id in self._items:
                self._items.move_to_end(assignment_id)
                return self._items[assignment_id]
        lc = cache.get(case.volume_path, case.gt_path, case.gt_sha256)
        session = factory(lc.volume)
        with self._lock:
            self._items[assignment_id] = session
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return session


def _point_keys(points, labels, classes) -> list[tuple]:
    return [(round(float(x), 4), round(float(y), 4), int(lab), int(c)) for (x, y), lab, c in zip(points, labels, classes)]


def run_prompts(session: Any, z: int, prompts: Any) -> Any:
    """The reader's prompts of slice z (the page sends all of them each time) as one session step.

    When they extend what the session holds for the slice (one more click, a new or moved box), only
    the new prompts are added and the slice's previous output is fed back (the click corrects it);
    when a prompt was taken away the slice starts again from the prompts alone; none: no prompt."""
    from usam.prompts import SlicePrompts

    if prompts is None or prompts.is_empty:
        return session.segment(z)
    held = session.prompts(z)
    held_pts = [(round(p.x, 4), round(p.y, 4), p.label, p.cls) for p in held if p.kind == "point"]
    held_box = [(tuple(round(v, 4) for v in p.box), p.cls) for p in held if p.kind == "box"]
    new_pts = _point_keys(prompts.points, prompts.point_labels, prompts.point_classes)
    new_box = [(tuple(round(float(v), 4) for v in b), int(c)) for b, c in zip(prompts.boxes, prompts.box_classes)]
    if held and new_pts[:len(held_pts)] == held_pts and (new_box == held_box or (new_box and len(held_box) <= 1)):
        n = len(held_pts)
        add = SlicePrompts(points=prompts.points[n:], point_labels=prompts.point_labels[n:],
                           point_classes=prompts.point_classes[n:],
                           boxes=prompts.boxes if new_box != held_box else prompts.boxes[:0],
                           box_classes=prompts.box_classes if new_box != held_box else prompts.box_classes[:0])
        if add.is_empty:
            return session.result(z)
        return session.add_prompts(z, add, use_mask=True)
    session.clear(z)
    return session.add_prompts(z, prompts, use_mask=False)


@dataclass
class PromptCall:
    """A checked request to run the model on one slice of the reader's current case."""
    aid: int
    arm: str
    case: Case
    z: int
    h: int
    w: int
    pts: list
    boxes: list


def check_call(s: Session, user: Clinician, assignment_id: Any, z: Any, points: list | None,
               box: list | None) -> PromptCall:
    """The reader's own current case in an AI arm, slice z in range, prompts inside the slice."""
    a = reading.owned(s, user, assignment_id)
    if a.arm not in AI_ARMS:
        raise PermissionDenied("This case is annotated by hand (no model in this arm).")
    case = s.get(Case, a.case_id)
    z = reading.case_z(case, z)
    h, w = int(case.shape[1]), int(case.shape[2])
    pts, boxes = check_prompts(points or [], box, h, w, a.arm)
    return PromptCall(a.id, a.arm, case, z, h, w, pts, boxes)


def record(s: Session, call: PromptCall, labels: np.ndarray, ms: float, model: str, checkpoint: str,
           t: Any) -> None:
    """Store the prompts, the model output with its inference time, and the 'prompt' activity."""
    for p in call.pts:
        s.add(PromptEvent(assignment_id=call.aid, z=call.z, kind="point", cls=p[2], x=p[0], y=p[1], positive=p[3],
                          acquisition_ms=p[4], model=model, checkpoint_hash=checkpoint))
    for b in call.boxes:
        s.add(PromptEvent(assignment_id=call.aid, z=call.z, kind="box", cls=b[4], x=b[0], y=b[1], x2=b[2],
                          y2=b[3], acquisition_ms=b[5], model=model, checkpoint_hash=checkpoint))
    s.add(ModelOutput(assignment_id=call.aid, case_id=call.case.id, z=call.z, arm=call.arm, data=encode_mask(labels),
                      height=call.h, width=call.w, inference_ms=ms, model=model, checkpoint_hash=checkpoint))
    s.add(ActivityEvent(assignment_id=call.aid, kind="prompt", active=True, z=call.z, t=t))
