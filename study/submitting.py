"""Submitting a case: read the reader's slices, score the assembled volume against the locked
ground truth outside any transaction, then store the submission with its timing once.

The reader gets no scores back (they must not learn the ground truth). The write claims the
assignment (reading.take) and checks that no slice changed since it was read: a save from
another tab in between raises SlicesChanged, and the caller reads and scores again."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from study import reading
from study.audit import audit
from study.auth import as_utc
from study.cases import CaseCache
from study.errors import Conflict
from study.masks import INTERPOLATED as INTERP
from study.models import ActivityEvent, Case, Clinician, ModelOutput, PromptEvent, SliceMask, Study, Submission
from study.scoring import decode_mask, encode_mask, score_case
from study.timing import Event, compute_times, prompt_time


class SlicesChanged(Exception):
    """A slice was saved between reading the masks and writing the submission."""


@dataclass
class Draft:
    """The reader's slices of one case as read for submission, with what scoring needs."""
    aid: int
    masks: dict[int, np.ndarray]
    state: dict[int, int]          # {z: save count} when read
    case_paths: tuple
    start: int
    end: int
    spacing: list[float]
    h: int
    w: int
    tol: float
    idle: float
    case_id: int
    group: int | None
    arm: str
    study_id: int


def read_draft(s: Session, user: Clinician, assignment_id: Any) -> Draft:
    """The reader's slices of their current case; refused while interpolated slices are unconfirmed."""
    a = reading.owned(s, user, assignment_id)
    case = s.get(Case, a.case_id)
    study = s.get(Study, a.study_id)
    rows = list(s.scalars(select(SliceMask).where(SliceMask.assignment_id == a.id)))
    pending = sorted(r.z for r in rows if r.source == INTERP)
    if pending:
        raise Conflict(f"{len(pending)} interpolated slice{'s are' if len(pending) > 1 else ' is'} not "
                       f"confirmed yet (slice {', '.join(map(str, pending[:10]))}"
                       f"{'…' if len(pending) > 10 else ''}): check and save each, then submit.")
    return Draft(a.id, {r.z: decode_mask(r.data, (r.height, r.width)) for r in rows}, {r.z: r.saves for r in rows},
                 (case.volume_path, case.gt_path, case.gt_sha256), case.start_slice, case.end_slice,
                 list(case.spacing), int(case.shape[1]), int(case.shape[2]), study.nsd_tolerance_mm,
                 study.idle_threshold_s, case.id, user.group, a.arm, study.id)


def score(cache: CaseCache, d: Draft) -> tuple[np.ndarray, dict]:
    """(the assembled start..end label volume, its scores against the locked ground truth)."""
    lc = cache.get(*d.case_paths)
    pred = np.zeros((d.end - d.start + 1, d.h, d.w), np.uint8)
    for z, m in d.masks.items():
        pred[z - d.start] = m
    gt = lc.labels[d.start:d.end + 1]
    return pred, score_case(pred, gt, d.spacing, d.tol)


def store(s: Session, user: Clinician, assignment_id: Any, d: Draft, pred: np.ndarray, scores: dict,
          clock: Callable[[], Any]) -> dict:
    """Write the submission (a new revision) with active, wall, prompt and inference times."""
    a = reading.owned(s, user, assignment_id)
    reading.take(s, a, "submitted")       # once: a concurrent submit waits here, then gets Conflict
    if reading.save_counts(s, a.id) != d.state:
        raise SlicesChanged()             # rolls back; read and score again
    now = clock()
    s.add(ActivityEvent(assignment_id=a.id, kind="submit", active=True, t=now))
    s.flush()
    events = [Event(as_utc(e.t), e.kind, e.active) for e in
              s.scalars(select(ActivityEvent).where(ActivityEvent.assignment_id == a.id))]
    times = compute_times(events, d.idle)
    p_s = prompt_time(s.scalars(select(PromptEvent.acquisition_ms).where(PromptEvent.assignment_id == a.id)))
    inf_s = (s.scalar(select(func.sum(ModelOutput.inference_ms)).where(ModelOutput.assignment_id == a.id))
             or 0.0) / 1000.0
    rev = (s.scalar(select(func.max(Submission.revision)).where(Submission.assignment_id == a.id)) or 0) + 1
    n = d.end - d.start + 1
    sub = Submission(study_id=d.study_id, assignment_id=a.id, clinician_id=user.id, case_id=d.case_id,
                     group=d.group, arm=d.arm, revision=rev, data=encode_mask(pred), shape=list(pred.shape),
                     active_s=times.active_s, wall_s=times.wall_s, prompt_s=p_s, inference_s=inf_s,
                     scores=scores, gt_sha256=d.case_paths[2], submitted_at=now)
    s.add(sub)
    s.flush()
    audit(s, user.id, "submit", f"assignment:{a.id}", submission=sub.id, revision=rev,
          slices_saved=len(d.masks), slices=n)
    return {"submitted": True, "revision": rev, "slices_saved": len(d.masks), "slices": n}
