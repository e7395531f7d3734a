"""A reader's work on an open session: their queue and current case, opening it, its slices,
saving a slice, slice states, interpolation between saved slices and activity heartbeats.

The caller (study.service) has checked the token and the reader role; every function here
checks ownership of the assignment itself (others' work answers "No such assignment.")."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sqlalchemy import case as sql_case
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from study.audit import audit
from study.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from study.inputs import as_int
from study.masks import INTERPOLATED as INTERP
from study.models import ActivityEvent, AnnotationSession, Assignment, Case, Clinician, SliceMask, Study
from study.scoring import check_labels, decode_mask, encode_mask

Clock = Callable[[], Any]
MASK_SOURCES = ("manual", "model", "copy", "empty")


@dataclass
class CaseView:
    """What a reader may know about their current case (no ground truth, no case file names)."""
    assignment_id: int
    arm: str
    label: str                 # "Case 3 of 7"
    start: int
    end: int
    height: int
    width: int
    spacing: list[float]
    saved: list[int] = field(default_factory=list)   # slices saved so far
    resume_z: int = 0
    done: int = 0
    total: int = 0


@dataclass
class SliceView:
    """One slice for the reader: HU image and their own saved mask (None if never saved)."""
    z: int
    image: np.ndarray
    mask: np.ndarray | None
    source: str | None = None


# ---------------------------------------------------------------- the work list
def queue(s: Session, user: Clinician) -> list[Assignment]:
    """The reader's assignments in working order: arms in the study's order, re-assigned ones last."""
    study = s.get(Study, user.study_id)
    arms = list(study.arms) if study else ["manual"]
    rows = list(s.scalars(select(Assignment).where(Assignment.clinician_id == user.id,
                                                   Assignment.status != "reassigned")))
    return sorted(rows, key=lambda a: (a.reassigned_from is not None,
                                       arms.index(a.arm) if a.arm in arms else 99, a.order, a.id))


def current(s: Session, user: Clinician) -> Assignment | None:
    """The open assignment, else the next pending one, else None (all submitted)."""
    rows = queue(s, user)
    for a in rows:
        if a.status == "open":
            return a
    for a in rows:
        if a.status == "pending":
            return a
    return None


def owned(s: Session, user: Clinician, assignment_id: Any, current_only: bool = True) -> Assignment:
    """The reader's own unsubmitted assignment (by default: only their current one)."""
    a = s.get(Assignment, as_int(assignment_id, "assignment"))
    if a is None or a.clinician_id != user.id or a.status == "reassigned":
        raise NotFound("No such assignment.")   # same answer for others' work: nothing leaks
    if a.status == "submitted":
        raise Conflict("This case is already submitted.")
    if current_only and a.status != "open":   # an open assignment is the current one by construction
        cur = current(s, user)
        if cur is None or cur.id != a.id:
            raise PermissionDenied("Only your next assigned case can be opened.")
    return a


def take(s: Session, a: Assignment, status: str | None = None) -> None:
    """Claim assignment `a` for a write in this transaction if it is still pending or open.

    One conditional UPDATE (pending -> open, or -> `status`): on PostgreSQL it row-locks the
    assignment until commit, so the saves and the submit of one assignment are serialised;
    on SQLite it takes the database write lock. Either way the status is checked on the
    latest committed row, not on what this transaction read before: a save never lands on
    a case submitted (or re-assigned) in the meantime, and a case is submitted once."""
    new = status if status is not None else sql_case((Assignment.status == "pending", "open"),
                                                     else_=Assignment.status)
    n = s.execute(update(Assignment).where(Assignment.id == a.id, Assignment.status.in_(("pending", "open")))
                  .values(status=new).execution_options(synchronize_session=False)).rowcount
    if n != 1:
        now = s.scalar(select(Assignment.status).where(Assignment.id == a.id))
        if now == "submitted":
            raise Conflict("This case is already submitted.")
        raise NotFound("No such assignment.")
    s.expire(a, ["status"])


def latest_session(s: Session, aid: int, with_slice: bool = False) -> AnnotationSession | None:
    """The newest annotation session of an assignment (with_slice: the newest that noted a slice)."""
    q = select(AnnotationSession).where(AnnotationSession.assignment_id == aid)
    if with_slice:
        q = q.where(AnnotationSession.last_z.is_not(None))
    return s.scalar(q.order_by(AnnotationSession.id.desc()).limit(1))


def _note_slice(s: Session, aid: int, z: int) -> int | None:
    """Remember slice z as where the reader is (resume point); the session's id, None if none."""
    sess = latest_session(s, aid)
    if sess is not None:
        sess.last_z = z
    return sess.id if sess is not None else None


def case_z(case: Case, z: Any) -> int:
    """Slice number z, refused outside the case's annotated range."""
    z = as_int(z, "slice")
    if not case.start_slice <= z <= case.end_slice:
        raise InvalidInput(f"Slice {z} is outside this case's range {case.start_slice}..{case.end_slice}.")
    return z


def view(s: Session, a: Assignment, rows: list[Assignment]) -> CaseView:
    """The reader's view of assignment `a` within their queue `rows`."""
    case = s.get(Case, a.case_id)
    saved = sorted(s.scalars(select(SliceMask.z).where(SliceMask.assignment_id == a.id)))
    last = latest_session(s, a.id, with_slice=True)
    resume = last.last_z if last is not None else case.start_slice
    idx = [q.id for q in rows].index(a.id)
    return CaseView(a.id, a.arm, f"Case {idx + 1} of {len(rows)}", case.start_slice, case.end_slice,
                    int(case.shape[1]), int(case.shape[2]), list(case.spacing), saved, int(resume),
                    sum(q.status == "submitted" for q in rows), len(rows))


def next_case(s: Session, user: Clinician) -> CaseView | None:
    """The reader's current case, or None when all are submitted."""
    if user.group is None:
        raise Conflict("Your experience group is not set yet; ask the study administrator.")
    rows = queue(s, user)
    a = current(s, user)
    return None if a is None else view(s, a, rows)


def progress(s: Session, user: Clinician) -> dict:
    """The reader's own counts: done and total cases."""
    rows = queue(s, user)
    return {"done": sum(a.status == "submitted" for a in rows), "total": len(rows)}


def open_case(s: Session, user: Clinician, assignment_id: Any, clock: Clock) -> CaseView:
    """Start (or resume) the current case: a new annotation session and the 'open' event."""
    a = owned(s, user, assignment_id)
    a.status = "open"
    sess = AnnotationSession(assignment_id=a.id, clinician_id=user.id, opened_at=clock())
    s.add(sess)
    s.flush()
    s.add(ActivityEvent(assignment_id=a.id, session_id=sess.id, kind="open", active=True, t=clock()))
    audit(s, user.id, "open_case", f"assignment:{a.id}")
    last = latest_session(s, a.id, with_slice=True)    # the new session has noted no slice yet
    sess.last_z = last.last_z if last is not None else None
    return view(s, a, queue(s, user))


# ---------------------------------------------------------------- slices
def _slice_row(s: Session, aid: int, z: int) -> SliceMask | None:
    """The stored mask row of slice z of an assignment, None if never saved."""
    return s.scalar(select(SliceMask).where(SliceMask.assignment_id == aid, SliceMask.z == z))


def stored_slice(s: Session, user: Clinician, assignment_id: Any, z: Any) -> tuple[int, np.ndarray | None,
                                                                                  str | None, tuple]:
    """(z, the reader's saved mask or None, its source, the case's (volume, labels, hash) paths)."""
    a = owned(s, user, assignment_id)
    case = s.get(Case, a.case_id)
    z = case_z(case, z)
    row = _slice_row(s, a.id, z)
    mask = decode_mask(row.data, (row.height, row.width)) if row else None
    return z, mask, (row.source if row else None), (case.volume_path, case.gt_path, case.gt_sha256)


def check_save(mask: Any, source: str) -> None:
    """Refuse an unknown source or an absent mask (None never erases a stored slice)."""
    if source not in MASK_SOURCES:
        raise InvalidInput("Unknown mask source.")
    if mask is None:
        raise InvalidInput("No mask was received: nothing was saved.")


def save_slice(s: Session, user: Clinician, assignment_id: Any, z: Any, mask: np.ndarray, source: str,
               clock: Clock) -> dict:
    """Store the reader's label map of slice z (0/1/2, slice shape), overwriting their draft."""
    a = owned(s, user, assignment_id)
    case = s.get(Case, a.case_id)
    z = case_z(case, z)
    labels = check_labels(mask, (case.shape[1], case.shape[2]))
    take(s, a)            # still open, and the slice row below is read after the lock
    row = _slice_row(s, a.id, z)
    if row is None:
        s.add(SliceMask(assignment_id=a.id, z=z, data=encode_mask(labels), height=labels.shape[0],
                        width=labels.shape[1], source=source))
    else:
        row.data, row.source, row.saves, row.saved_at = encode_mask(labels), source, row.saves + 1, clock()
    sid = _note_slice(s, a.id, z)
    s.add(ActivityEvent(assignment_id=a.id, session_id=sid, kind="save", active=True, z=z, t=clock()))
    audit(s, user.id, "save_slice", f"assignment:{a.id}", z=z, source=source,
          pixels={"normal": int((labels == 1).sum()), "tumor": int((labels == 2).sum())})
    return {"z": z, "saved": True}


def states(s: Session, aid: int) -> dict[int, tuple[str, bool]]:
    """{z: (source, has labels)} of an assignment's stored slices."""
    rows = s.execute(select(SliceMask.z, SliceMask.source, SliceMask.data, SliceMask.height, SliceMask.width)
                     .where(SliceMask.assignment_id == aid)).all()
    return {z: (src, src != "empty" and bool(decode_mask(d, (h, w)).any())) for z, src, d, h, w in rows}


def save_counts(s: Session, aid: int, zs: set[int] | None = None) -> dict[int, int]:
    """{z: save count} of an assignment's slices (all, or those in zs): any save changes it."""
    q = select(SliceMask.z, SliceMask.saves).where(SliceMask.assignment_id == aid)
    if zs is not None:
        q = q.where(SliceMask.z.in_(zs))
    return dict(s.execute(q).all())


# ---------------------------------------------------------------- interpolation
@dataclass
class InterpolationPlan:
    """What an interpolation reads in its first transaction (the fill runs outside any)."""
    aid: int
    gaps: list                      # [(za, zb, [z between])]
    anchors: dict[int, np.ndarray]  # saved label maps at the gaps' ends
    anchor_saves: dict[int, int]    # their save counts, checked again before the write


def plan_interpolation(s: Session, user: Clinician, assignment_id: Any) -> InterpolationPlan:
    """The gaps between the reader's saved slices and the label maps at their ends."""
    from study.masks import plan_interpolation as gaps_of

    a = owned(s, user, assignment_id)
    case = s.get(Case, a.case_id)
    gaps = gaps_of(states(s, a.id), case.start_slice, case.end_slice)
    need = {z for za, zb, _ in gaps for z in (za, zb)}
    rows = {r.z: r for r in s.scalars(select(SliceMask).where(SliceMask.assignment_id == a.id,
                                                            SliceMask.z.in_(need)))} if need else {}
    return InterpolationPlan(a.id, gaps, {z: decode_mask(r.data, (r.height, r.width)) for z, r in rows.items()},
                             {z: r.saves for z, r in rows.items()})


def fill(plan: InterpolationPlan) -> dict[int, np.ndarray]:
    """{z: interpolated label map} of every slice inside the plan's gaps."""
    from study.masks import interpolate_labels

    out = {}
    for za, zb, zs in plan.gaps:
        for z in zs:
            out[z] = interpolate_labels(plan.anchors[za], plan.anchors[zb], (z - za) / (zb - za))
    return out


def store_interpolated(s: Session, user: Clinician, plan: InterpolationPlan, filled: dict[int, np.ndarray],
                       clock: Clock) -> dict:
    """Write the filled slices as 'interpolated', never over a slice the reader saved meanwhile."""
    a = owned(s, user, plan.aid)
    take(s, a)
    # read again after the lock: a slice saved meanwhile by the reader is theirs, kept
    now = {z: src for z, src in s.execute(select(SliceMask.z, SliceMask.source)
                                          .where(SliceMask.assignment_id == a.id)).all()}
    if save_counts(s, a.id, set(plan.anchors)) != plan.anchor_saves:
        raise Conflict("A slice changed while interpolating: press Interpolate again.")
    done = []
    for z, lab in sorted(filled.items()):
        if z in now and now[z] != INTERP:
            continue
        row = _slice_row(s, a.id, z)
        if row is None:
            s.add(SliceMask(assignment_id=a.id, z=z, data=encode_mask(lab), height=lab.shape[0],
                            width=lab.shape[1], source=INTERP))
        else:
            row.data, row.saves, row.saved_at = encode_mask(lab), row.saves + 1, clock()
        done.append(z)
    s.add(ActivityEvent(assignment_id=a.id, kind="input", active=True, t=clock()))
    audit(s, user.id, "interpolate", f"assignment:{a.id}", slices=done)
    return {"interpolated": done, "gaps": len(plan.gaps)}


# ---------------------------------------------------------------- activity
def heartbeat(s: Session, user: Clinician, assignment_id: Any, visible: bool, had_input: bool, z: Any,
              clock: Clock) -> dict:
    """Activity from the page: visible and with input -> active; hidden or idle -> inactive."""
    a = owned(s, user, assignment_id)
    kind = "hidden" if not visible else ("input" if had_input else "heartbeat")
    zz = None if z is None else case_z(s.get(Case, a.case_id), z)
    s.add(ActivityEvent(assignment_id=a.id, kind=kind, active=bool(visible and had_input), z=zz, t=clock()))
    if zz is not None:
        _note_slice(s, a.id, zz)
    return {"ok": True}
