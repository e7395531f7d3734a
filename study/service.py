"""The study API the UI calls. Every method takes the caller's session token first and checks
role and ownership inside (Gradio exposes each event as an endpoint, so the UI cannot be the
guard). Readers never receive ground truth, scores or other readers' work."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy import case as sql_case
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from study import ops
from study import throttle
from study.auth import as_utc, check_credentials, current_browser, open_session, resolve_token, revoke
from study.cases import CACHE, CaseCache
from study.db import Database, get_database
from study.errors import AuthError, Conflict, InvalidInput, NotFound, PermissionDenied, RateLimited
from study.logins import normalize_login
from study.models import (ActivityEvent, AnnotationSession, Assignment, Case, Clinician, LoginAttempt,
                          ModelOutput, PromptEvent, SliceMask, Study, Submission, utcnow)
from study.masks import INTERPOLATED as INTERP
from study.scoring import check_labels, decode_mask, encode_mask, score_case
from study.timing import Event, compute_times, prompt_time

PredictorFactory = Callable[[Any], Any]   # volume -> object with .predict(z, prompts) -> SliceResult


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


class StudyService:
    """Observer-study API bound to one database (and optional predictor factory for AI arms)."""

    def __init__(self, db: Database | None = None, cache: CaseCache | None = None,
                 predictor_factory: PredictorFactory | None = None, model_name: str = "",
                 checkpoint_hash: str = "", clock: Callable[[], Any] = utcnow):
        self.db = db or get_database()
        self.clock = clock          # server UTC time; the simulator passes a scripted clock
        self.cache = cache or CACHE
        self.predictor_factory = predictor_factory
        self.model_name = model_name
        self.checkpoint_hash = checkpoint_hash
        self._predictors: OrderedDict[int, Any] = OrderedDict()
        self._plock = threading.Lock()

    # ---------------------------------------------------------------- auth
    def register(self, study_code: str, login: str, password: str, name: str = "", group: int | None = None,
                 years: float | None = None, specialty: str = "", address: str = "") -> dict:
        """Create a reader account with the study's registration code (group may be set later)."""
        if not all(isinstance(v, str) for v in (study_code, login, password, name or "", specialty or "")):
            raise InvalidInput("Study code, login, password, name and specialty are text.")
        if years in ("", None):
            years = None
        else:
            try:
                years = float(years)
            except (TypeError, ValueError, OverflowError):
                raise InvalidInput("Years of experience must be a number.") from None
            if not np.isfinite(years):
                raise InvalidInput("Years of experience must be a number.")
        with self.db.session() as s:
            study = s.scalar(select(Study).where(Study.code == (study_code or "").strip()))
        if study is None:
            self._failed_attempt("register:" + normalize_login(login)[:50], address)
            raise AuthError("Unknown study code.")
        group = None if group in (None, "", 0) else _as_int(group, "group")
        try:
            with self.db.session() as s:
                study = s.get(Study, study.id)
                user = ops.add_clinician(s, login, password, "reader", name, group, years, specialty, study)
                return {"id": user.id, "login": user.login, "group": user.group}
        except IntegrityError:   # the same login registered at the same moment by someone else
            raise Conflict(f"The login {normalize_login(login)[:64]!r} is taken.") from None

    def _failed_attempt(self, login: str, address: str) -> None:
        """Charge a failure that needs no password check (an unknown study code) to the throttle."""
        refusal = self._reserve(login, address)
        if refusal is not None:
            raise RateLimited(refusal.message())

    def _reserve(self, login: str, address: str):
        """Charge one attempt before the password is checked (committed at once, so parallel
        guesses see it); a throttle.Refusal, written to the audit log, when it must wait."""
        address = (address or "")[:64]
        for _ in range(8):
            try:
                with self.db.session() as s:
                    refusal = throttle.reserve(s, login, address, limits=self.db.settings.login)
                    if refusal is not None:
                        ops.audit(s, None, "login_throttled", login[:128], address=address, scope=refusal.scope,
                                  wait_s=round(refusal.wait_s, 1))
                    return refusal
            except throttle.Raced:
                continue
        return throttle.Refusal("login", 1.0)      # kept losing races: a flood of parallel guesses

    def login(self, login: str, password: str, address: str = "") -> str:
        """Token for a correct login/password. Throttled per (login, address) with back-off and
        per address (study.throttle); an unknown login costs the same argon2 time as a known one."""
        if not isinstance(login, str) or not isinstance(password, str) or len(login) > 256:
            raise AuthError("Wrong login or password.")
        if current_browser() == "":
            raise AuthError("Your browser did not send this site's session cookie. Allow cookies for this "
                            "site (or open the app in its own tab, not inside another page) and reload.")
        canon = normalize_login(login)[:128]
        address = (address or "")[:64]
        refusal = self._reserve(canon, address)
        if refusal is not None:
            raise RateLimited(refusal.message())
        with self.db.session() as s:
            user = check_credentials(s, login, password)
            s.add(LoginAttempt(login=canon[:64], address=address, success=user is not None, t=utcnow()))
            if user is None:
                ops.audit(s, None, "login_failed", canon[:64], address=address)
            else:
                throttle.settle_success(s, canon, address)
        if user is None:
            raise AuthError("Wrong login or password.")
        with self.db.session() as s:
            user = s.get(Clinician, user.id)
            if user.status == "dropped":
                raise AuthError("This account was closed by the study administrator.")
            token = open_session(s, user, ttl=self.db.settings.session_ttl)
            ops.audit(s, user.id, "login", f"clinician:{user.id}", address=address)
            return token

    def logout(self, token: str) -> None:
        """End a session (the token stops working)."""
        with self.db.session() as s:
            revoke(s, token)

    def me(self, token: str) -> dict:
        """The caller's own account (no hash)."""
        with self.db.session() as s:
            u = resolve_token(s, token)
            return {"id": u.id, "login": u.login, "name": u.name, "role": u.role, "group": u.group,
                    "study_id": u.study_id, "status": u.status}

    def _user(self, s: Session, token: str, role: str | None = None) -> Clinician:
        u = resolve_token(s, token)
        if role == "admin" and u.role != "admin":
            raise PermissionDenied("Only the study administrator can do this.")
        if role == "reader" and u.role != "reader":
            raise PermissionDenied("Only registered readers annotate.")
        return u

    # ---------------------------------------------------------------- reader: work list
    def _queue(self, s: Session, user: Clinician) -> list[Assignment]:
        study = s.get(Study, user.study_id)
        arms = list(study.arms) if study else ["manual"]
        rows = list(s.scalars(select(Assignment).where(Assignment.clinician_id == user.id,
                                                       Assignment.status != "reassigned")))
        return sorted(rows, key=lambda a: (a.reassigned_from is not None,
                                           arms.index(a.arm) if a.arm in arms else 99, a.order, a.id))

    def _current(self, s: Session, user: Clinician) -> Assignment | None:
        queue = self._queue(s, user)
        for a in queue:
            if a.status == "open":
                return a
        for a in queue:
            if a.status == "pending":
                return a
        return None

    def _owned(self, s: Session, user: Clinician, assignment_id: Any, current: bool = True) -> Assignment:
        aid = _as_int(assignment_id, "assignment")
        a = s.get(Assignment, aid)
        if a is None or a.clinician_id != user.id or a.status == "reassigned":
            raise NotFound("No such assignment.")   # same answer for others' work: nothing leaks
        if a.status == "submitted":
            raise Conflict("This case is already submitted.")
        if current and a.status != "open":   # an open assignment is the current one by construction
            cur = self._current(s, user)
            if cur is None or cur.id != a.id:
                raise PermissionDenied("Only your next assigned case can be opened.")
        return a

    @staticmethod
    def _take(s: Session, a: Assignment, status: str | None = None) -> None:
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

    def next_case(self, token: str) -> CaseView | None:
        """The reader's current case (the open one, else the next pending), or None when done."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            if user.group is None:
                raise Conflict("Your experience group is not set yet; ask the study administrator.")
            queue = self._queue(s, user)
            a = self._current(s, user)
            if a is None:
                return None
            return self._view(s, a, queue)

    def progress(self, token: str) -> dict:
        """The reader's own counts: done and total cases."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            queue = self._queue(s, user)
            return {"done": sum(a.status == "submitted" for a in queue), "total": len(queue)}

    def _view(self, s: Session, a: Assignment, queue: list[Assignment]) -> CaseView:
        case = s.get(Case, a.case_id)
        saved = sorted(s.scalars(select(SliceMask.z).where(SliceMask.assignment_id == a.id)))
        last = s.scalar(select(AnnotationSession.last_z).where(AnnotationSession.assignment_id == a.id,
                                                               AnnotationSession.last_z.is_not(None))
                        .order_by(AnnotationSession.id.desc()).limit(1))
        resume = last if last is not None else case.start_slice
        idx = [q.id for q in queue].index(a.id)
        return CaseView(a.id, a.arm, f"Case {idx + 1} of {len(queue)}", case.start_slice, case.end_slice,
                        int(case.shape[1]), int(case.shape[2]), list(case.spacing), saved, int(resume),
                        sum(q.status == "submitted" for q in queue), len(queue))

    def open_case(self, token: str, assignment_id: int) -> CaseView:
        """Start (or resume) annotating the current case: records the 'open' event."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            a.status = "open"
            sess = AnnotationSession(assignment_id=a.id, clinician_id=user.id, opened_at=self.clock())
            s.add(sess)
            s.flush()
            s.add(ActivityEvent(assignment_id=a.id, session_id=sess.id, kind="open", active=True, t=self.clock()))
            ops.audit(s, user.id, "open_case", f"assignment:{a.id}")
            last = s.scalar(select(AnnotationSession.last_z).where(
                AnnotationSession.assignment_id == a.id, AnnotationSession.last_z.is_not(None))
                .order_by(AnnotationSession.id.desc()).limit(1))
            sess.last_z = last
            return self._view(s, a, self._queue(s, user))

    def _case_z(self, case: Case, z: Any) -> int:
        z = _as_int(z, "slice")
        if not case.start_slice <= z <= case.end_slice:
            raise InvalidInput(f"Slice {z} is outside this case's range {case.start_slice}..{case.end_slice}.")
        return z

    def get_slice(self, token: str, assignment_id: int, z: int) -> SliceView:
        """HU slice z of the reader's current case and the reader's own saved mask."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            case = s.get(Case, a.case_id)
            z = self._case_z(case, z)
            row = s.scalar(select(SliceMask).where(SliceMask.assignment_id == a.id, SliceMask.z == z))
            mask = decode_mask(row.data, (row.height, row.width)) if row else None
            source = row.source if row else None
            paths = (case.volume_path, case.gt_path, case.gt_sha256)
        lc = self.cache.get(*paths)
        return SliceView(z, np.asarray(lc.volume.array[z], dtype=np.float32), mask, source)

    def save_slice(self, token: str, assignment_id: int, z: int, mask: np.ndarray, source: str = "manual") -> dict:
        """Store the reader's label map of slice z (0/1/2, slice shape); overwrites their draft.

        An absent mask (None) is refused: it never erases a stored slice (an empty slice is an
        explicit all-zero map, source 'empty')."""
        if source not in ("manual", "model", "copy", "empty"):
            raise InvalidInput("Unknown mask source.")
        if mask is None:
            raise InvalidInput("No mask was received: nothing was saved.")
        for attempt in range(2):
            try:
                with self.db.session() as s:
                    user = self._user(s, token, "reader")
                    a = self._owned(s, user, assignment_id)
                    case = s.get(Case, a.case_id)
                    z = self._case_z(case, z)
                    labels = check_labels(mask, (case.shape[1], case.shape[2]))
                    self._take(s, a)            # still open, and the slice row below is read after the lock
                    row = s.scalar(select(SliceMask).where(SliceMask.assignment_id == a.id, SliceMask.z == z))
                    if row is None:
                        s.add(SliceMask(assignment_id=a.id, z=z, data=encode_mask(labels), height=labels.shape[0],
                                        width=labels.shape[1], source=source))
                    else:
                        row.data, row.source, row.saves, row.saved_at = encode_mask(labels), source, row.saves + 1, self.clock()
                    sess = s.scalar(select(AnnotationSession).where(AnnotationSession.assignment_id == a.id)
                                    .order_by(AnnotationSession.id.desc()).limit(1))
                    if sess is not None:
                        sess.last_z = z
                    s.add(ActivityEvent(assignment_id=a.id, session_id=sess.id if sess else None, kind="save",
                                        active=True, z=z, t=self.clock()))
                    ops.audit(s, user.id, "save_slice", f"assignment:{a.id}", z=z, source=source,
                              pixels={"normal": int((labels == 1).sum()), "tumor": int((labels == 2).sum())})
                    return {"z": z, "saved": True}
            except IntegrityError:      # two tabs saving the same new slice at once: retry as update
                if attempt:
                    raise

    def slice_states(self, token: str, assignment_id: int) -> dict[int, tuple[str, bool]]:
        """{z: (source, has labels)} of the reader's stored slices of their current case."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            return self._states(s, a.id)

    @staticmethod
    def _states(s: Session, aid: int) -> dict[int, tuple[str, bool]]:
        rows = s.execute(select(SliceMask.z, SliceMask.source, SliceMask.data, SliceMask.height, SliceMask.width)
                         .where(SliceMask.assignment_id == aid)).all()
        return {z: (src, src != "empty" and bool(decode_mask(d, (h, w)).any())) for z, src, d, h, w in rows}

    def interpolate(self, token: str, assignment_id: int) -> dict:
        """Fill the untouched slices between the reader's saved slices by shape-based interpolation.

        Filled slices are stored with source 'interpolated' (kept across sessions, shown as such)
        until the reader saves each one; a case with unconfirmed interpolated slices cannot be
        submitted. Slices the reader saved are never changed."""
        from study.masks import interpolate_labels, plan_interpolation

        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            case = s.get(Case, a.case_id)
            states = self._states(s, a.id)
            plan = plan_interpolation(states, case.start_slice, case.end_slice)
            need = {z for za, zb, _ in plan for z in (za, zb)}
            rows = {r.z: r for r in s.scalars(select(SliceMask).where(SliceMask.assignment_id == a.id,
                                                                    SliceMask.z.in_(need)))} if need else {}
            anchors = {z: decode_mask(r.data, (r.height, r.width)) for z, r in rows.items()}
            anchor_saves = {z: r.saves for z, r in rows.items()}
            aid = a.id
        filled = {}
        for za, zb, zs in plan:
            for z in zs:
                filled[z] = interpolate_labels(anchors[za], anchors[zb], (z - za) / (zb - za))
        if not filled:
            return {"interpolated": [], "gaps": 0}
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, aid)
            self._take(s, a)
            # read again after the lock: a slice saved meanwhile by the reader is theirs, kept
            now = {z: src for z, src in s.execute(select(SliceMask.z, SliceMask.source)
                                                  .where(SliceMask.assignment_id == a.id)).all()}
            saves = dict(s.execute(select(SliceMask.z, SliceMask.saves).where(SliceMask.assignment_id == a.id,
                                                                              SliceMask.z.in_(need))).all())
            if saves != anchor_saves:
                raise Conflict("A slice changed while interpolating: press Interpolate again.")
            done = []
            for z, lab in sorted(filled.items()):
                if z in now and now[z] != INTERP:
                    continue
                row = s.scalar(select(SliceMask).where(SliceMask.assignment_id == a.id, SliceMask.z == z))
                if row is None:
                    s.add(SliceMask(assignment_id=a.id, z=z, data=encode_mask(lab), height=lab.shape[0],
                                    width=lab.shape[1], source=INTERP))
                else:
                    row.data, row.saves, row.saved_at = encode_mask(lab), row.saves + 1, self.clock()
                done.append(z)
            s.add(ActivityEvent(assignment_id=a.id, kind="input", active=True, t=self.clock()))
            ops.audit(s, user.id, "interpolate", f"assignment:{a.id}", slices=done)
            return {"interpolated": done, "gaps": len(plan)}

    def heartbeat(self, token: str, assignment_id: int, visible: bool = True, had_input: bool = True,
                  z: int | None = None) -> dict:
        """Activity from the page: visible and with input -> active; hidden or idle -> inactive."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            kind = "hidden" if not visible else ("input" if had_input else "heartbeat")
            zz = None
            if z is not None:
                zz = self._case_z(s.get(Case, a.case_id), z)
            s.add(ActivityEvent(assignment_id=a.id, kind=kind, active=bool(visible and had_input), z=zz,
                                  t=self.clock()))
            if zz is not None:
                sess = s.scalar(select(AnnotationSession).where(AnnotationSession.assignment_id == a.id)
                                .order_by(AnnotationSession.id.desc()).limit(1))
                if sess is not None:
                    sess.last_z = zz
            return {"ok": True}

    # ---------------------------------------------------------------- AI arms
    def _predictor(self, case: Case):
        if self.predictor_factory is None:
            raise Conflict("No U-SAM model is configured on this server for the AI arms.")
        with self._plock:
            if case.id in self._predictors:
                self._predictors.move_to_end(case.id)
                return self._predictors[case.id]
        lc = self.cache.get(case.volume_path, case.gt_path, case.gt_sha256)
        pred = self.predictor_factory(lc.volume)
        with self._plock:
            self._predictors[case.id] = pred
            while len(self._predictors) > 2:
                self._predictors.popitem(last=False)
        return pred

    def predict_slice(self, token: str, assignment_id: int, z: int, points: list | None = None,
                      box: list | None = None) -> np.ndarray:
        """Run U-SAM on slice z with the reader's prompts (AI arms); stores prompts, output, time.

        points: [(x, y, cls 1|2, positive bool, acquisition_ms)], box: (x0, y0, x1, y1, cls, ms);
        slice pixel coordinates. The output is saved as the slice's mask (source 'model')."""
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            if a.arm not in ("usam_p", "usam_b", "ai_edit"):
                raise PermissionDenied("This case is annotated by hand (no model in this arm).")
            case = s.get(Case, a.case_id)
            z = self._case_z(case, z)
            h, w = int(case.shape[1]), int(case.shape[2])
            pts, boxes = _check_prompts(points or [], box, h, w, a.arm)
        prompts = _to_prompts(pts, boxes)
        t0 = time.perf_counter()
        result = self._predictor(case).predict(z, prompts if (pts or boxes) else None)
        ms = (time.perf_counter() - t0) * 1000.0
        labels = np.asarray(result.labels, dtype=np.uint8)
        with self.db.session() as s:
            for p in pts:
                s.add(PromptEvent(assignment_id=a.id, z=z, kind="point", cls=p[2], x=p[0], y=p[1], positive=p[3],
                                  acquisition_ms=p[4], model=self.model_name, checkpoint_hash=self.checkpoint_hash))
            for b in boxes:
                s.add(PromptEvent(assignment_id=a.id, z=z, kind="box", cls=b[4], x=b[0], y=b[1], x2=b[2], y2=b[3],
                                  acquisition_ms=b[5], model=self.model_name, checkpoint_hash=self.checkpoint_hash))
            s.add(ModelOutput(assignment_id=a.id, case_id=case.id, z=z, arm=a.arm, data=encode_mask(labels),
                              height=h, width=w, inference_ms=ms, model=self.model_name,
                              checkpoint_hash=self.checkpoint_hash))
            s.add(ActivityEvent(assignment_id=a.id, kind="prompt", active=True, z=z, t=self.clock()))
        self.save_slice(token, assignment_id, z, labels, source="model")
        return labels

    # ---------------------------------------------------------------- submission
    def submit(self, token: str, assignment_id: int) -> dict:
        """Lock the annotation: assemble start..end, score against the locked GT, store timing.

        The reader gets no scores back (they must not learn the ground truth). Scoring runs
        outside any transaction; the write then claims the assignment (see _take) and checks
        that no slice changed since it was read (a save from another tab in between: read and
        score again). Two submits of one case at once store one submission; the other gets
        Conflict."""
        for attempt in range(3):
            try:
                return self._submit_once(token, assignment_id)
            except _SlicesChanged:
                if attempt == 2:
                    raise Conflict("The slices kept changing while the case was submitted; submit again.") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _slice_state(s: Session, aid: int) -> dict[int, int]:
        """{z: save count} of an assignment's slices: any save changes it."""
        return dict(s.execute(select(SliceMask.z, SliceMask.saves).where(SliceMask.assignment_id == aid)).all())

    def _submit_once(self, token: str, assignment_id: int) -> dict:
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            case = s.get(Case, a.case_id)
            study = s.get(Study, a.study_id)
            rows = list(s.scalars(select(SliceMask).where(SliceMask.assignment_id == a.id)))
            pending = sorted(r.z for r in rows if r.source == INTERP)
            if pending:
                raise Conflict(f"{len(pending)} interpolated slice{'s are' if len(pending) > 1 else ' is'} not "
                               f"confirmed yet (slice {', '.join(map(str, pending[:10]))}"
                               f"{'…' if len(pending) > 10 else ''}): check and save each, then submit.")
            masks = {r.z: decode_mask(r.data, (r.height, r.width)) for r in rows}
            state = {r.z: r.saves for r in rows}
            info = dict(case_paths=(case.volume_path, case.gt_path, case.gt_sha256), start=case.start_slice,
                        end=case.end_slice, spacing=list(case.spacing), h=int(case.shape[1]), w=int(case.shape[2]),
                        tol=study.nsd_tolerance_mm, idle=study.idle_threshold_s, case_id=case.id, aid=a.id,
                        group=user.group, arm=a.arm, study_id=study.id)
        lc = self.cache.get(*info["case_paths"])
        n = info["end"] - info["start"] + 1
        pred = np.zeros((n, info["h"], info["w"]), np.uint8)
        for z, m in masks.items():
            pred[z - info["start"]] = m
        gt = lc.labels[info["start"]:info["end"] + 1]
        scores = score_case(pred, gt, info["spacing"], info["tol"])   # before any write: errors change nothing
        with self.db.session() as s:
            user = self._user(s, token, "reader")
            a = self._owned(s, user, assignment_id)
            self._take(s, a, "submitted")       # once: a concurrent submit waits here, then gets Conflict
            if self._slice_state(s, a.id) != state:
                raise _SlicesChanged()          # rolls back; read and score again
            now = self.clock()
            s.add(ActivityEvent(assignment_id=a.id, kind="submit", active=True, t=now))
            s.flush()
            events = [Event(as_utc(e.t), e.kind, e.active) for e in
                      s.scalars(select(ActivityEvent).where(ActivityEvent.assignment_id == a.id))]
            times = compute_times(events, info["idle"])
            p_s = prompt_time(s.scalars(select(PromptEvent.acquisition_ms).where(PromptEvent.assignment_id == a.id)))
            inf_s = (s.scalar(select(func.sum(ModelOutput.inference_ms)).where(ModelOutput.assignment_id == a.id))
                     or 0.0) / 1000.0
            rev = (s.scalar(select(func.max(Submission.revision)).where(Submission.assignment_id == a.id)) or 0) + 1
            sub = Submission(study_id=info["study_id"], assignment_id=a.id, clinician_id=user.id,
                             case_id=info["case_id"], group=info["group"], arm=info["arm"], revision=rev,
                             data=encode_mask(pred), shape=list(pred.shape), active_s=times.active_s,
                             wall_s=times.wall_s, prompt_s=p_s, inference_s=inf_s, scores=scores,
                             gt_sha256=info["case_paths"][2], submitted_at=now)
            s.add(sub)
            s.flush()
            ops.audit(s, user.id, "submit", f"assignment:{a.id}", submission=sub.id, revision=rev,
                      slices_saved=len(masks), slices=n)
            return {"submitted": True, "revision": rev, "slices_saved": len(masks), "slices": n}

    # ---------------------------------------------------------------- admin
    def create_study(self, token: str, name: str, **settings) -> dict:
        """New study (admin): settings as ops.create_study (k, group_sizes, arms, seed, ...)."""
        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            try:
                st = ops.create_study(s, name, actor_id=admin.id, **settings)
            except (TypeError, ValueError, OverflowError):
                raise InvalidInput("Bad study settings (numbers expected for k, group sizes, seed, thresholds).") \
                    from None
            return {"id": st.id, "code": st.code}

    def import_cases(self, token: str, study_id: int, folder: str) -> int:
        """Add a folder of cases to a study and save its assignment plan (admin)."""
        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            st = ops.get_study(s, _as_int(study_id, "study"))
            return len(ops.import_cases(s, st, folder, actor_id=admin.id))

    def set_group(self, token: str, clinician_id: int, group: int) -> dict:
        """Set a reader's experience group (admin); claims their slot if they had none."""
        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            u = s.get(Clinician, _as_int(clinician_id, "clinician"))
            if u is None or u.role != "reader":
                raise NotFound("No such reader.")
            g = _as_int(group, "group")
            if g not in (1, 2, 3):
                raise InvalidInput("Experience group is 1, 2 or 3.")
            held = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.clinician_id == u.id))
            if held and u.group != g:
                raise Conflict("This reader already holds assignments in another group; drop and re-register.")
            u.group = g
            ops.audit(s, admin.id, "set_group", f"clinician:{u.id}", group=g)
            if not held and u.study_id:
                ops.claim_slot(s, s.get(Study, u.study_id), u)
            return {"id": u.id, "group": g}

    def drop_reader(self, token: str, clinician_id: int) -> dict:
        """Drop a reader (admin): their unfinished cases go to active readers of their group."""
        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            u = s.get(Clinician, _as_int(clinician_id, "clinician"))
            if u is None or u.role != "reader" or u.study_id is None:
                raise NotFound("No such reader.")
            m = ops.drop_reader(s, s.get(Study, u.study_id), u, admin.id)
            return {"reassigned": sum(v is not None for v in m.values()),
                    "unplaced": sum(v is None for v in m.values())}

    def reopen(self, token: str, assignment_id: int) -> dict:
        """Let a reader revise a submitted case (admin); the next submission is a new revision row."""
        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            a = s.get(Assignment, _as_int(assignment_id, "assignment"))
            if a is None or a.status != "submitted":
                raise NotFound("No submitted assignment with this id.")
            if s.scalar(select(func.count()).select_from(Assignment).where(
                    Assignment.clinician_id == a.clinician_id, Assignment.status == "open")):
                raise Conflict("The reader has another case open; re-open after they submit it.")
            a.status = "open"
            ops.audit(s, admin.id, "reopen", f"assignment:{a.id}")
            return {"id": a.id, "status": a.status}

    def close_registration(self, token: str, study_id: int | None = None) -> dict:
        """Hand the cases of never-claimed reader slots to the registered readers (admin)."""
        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            st = ops.get_study(s, study_id)
            placed, unplaced = ops.reassign_unclaimed(s, st, admin.id)
            return {"reassigned": placed, "unplaced": unplaced}

    def readers(self, token: str, study_id: int | None = None) -> list[dict]:
        """Reader list with progress (admin)."""
        with self.db.session() as s:
            self._user(s, token, "admin")
            st = ops.get_study(s, study_id)
            out = []
            for u in s.scalars(select(Clinician).where(Clinician.study_id == st.id).order_by(Clinician.id)):
                rows = list(s.scalars(select(Assignment).where(Assignment.clinician_id == u.id,
                                                               Assignment.status != "reassigned")))
                out.append({"id": u.id, "login": u.login, "name": u.name, "group": u.group, "status": u.status,
                            "years": u.years_experience, "specialty": u.specialty,
                            "done": sum(a.status == "submitted" for a in rows), "assigned": len(rows),
                            "simulated": u.simulated})
            return out

    def study_info(self, token: str, study_id: int | None = None) -> dict:
        """Settings of a study incl. its registration code (admin)."""
        with self.db.session() as s:
            self._user(s, token, "admin")
            st = ops.get_study(s, study_id)
            return {"id": st.id, "name": st.name, "code": st.code, "k": st.k, "arms": st.arms,
                    "group_sizes": st.group_sizes, "seed": st.seed, "idle_threshold_s": st.idle_threshold_s,
                    "nsd_tolerance_mm": st.nsd_tolerance_mm, "is_demo": st.is_demo,
                    "cases": len(ops.study_cases(s, st.id))}

    def report(self, token: str, study_id: int | None = None):
        """Table 3, per-case and reader-level views and figures (admin)."""
        from study.report import build_report

        with self.db.session() as s:
            self._user(s, token, "admin")
            return build_report(s, ops.get_study(s, study_id))

    def run_models(self, token: str, study_id: int | None = None,
                   progress: Callable[[str], None] | None = None) -> int:
        """Run and score the U-SAM variants on every case (admin; needs the model); progress(text)
        after each case x variant run."""
        from study.model_runs import run_model_variants

        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            sid = ops.get_study(s, study_id).id
            ops.audit(s, admin.id, "run_models", f"study:{sid}")
        if self.predictor_factory is None:
            raise Conflict("No U-SAM model is configured on this server.")
        return run_model_variants(self.db, sid, self.predictor_factory, cache=self.cache, progress=progress)

    def export_csv(self, token: str, path: str | Path, study_id: int | None = None) -> Path:
        """Long-format CSV of every scored annotation (admin)."""
        from study.export import export_long_csv

        with self.db.session() as s:
            admin = self._user(s, token, "admin")
            st = ops.get_study(s, study_id)
            ops.audit(s, admin.id, "export_csv", f"study:{st.id}")
            return export_long_csv(s, st, Path(path))


class _SlicesChanged(Exception):
    """A slice was saved between reading the masks and writing the submission."""


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise InvalidInput(f"Bad {what} number.")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidInput(f"Bad {what} number.") from None
    if not np.isfinite(f) or f != int(f) or abs(f) > 2**31:
        raise InvalidInput(f"Bad {what} number.")
    return int(f)


def _to_prompts(pts: list, boxes: list):
    """Slice-pixel prompt tuples -> usam SlicePrompts (the library converts to its frame).

    The study's boxes end one past their last pixel (x0 < x1 <= w); SlicePrompts' corners are
    the first and last pixel, hence the - 1."""
    from usam.prompts import SlicePrompts

    return SlicePrompts(points=[[p[0], p[1]] for p in pts], point_labels=[int(p[3]) for p in pts],
                        point_classes=[p[2] for p in pts],
                        boxes=[[b[0], b[1], max(b[0], b[2] - 1), max(b[1], b[3] - 1)] for b in boxes[:1]],
                        box_classes=[b[4] for b in boxes[:1]])


def _check_prompts(points: list, box, h: int, w: int, arm: str) -> tuple[list, list]:
    """Validate prompt tuples against the slice size (out-of-range coordinates are refused)."""
    pts, boxes = [], []
    if len(points) > 64:
        raise InvalidInput("Too many points.")
    for p in points:
        if not isinstance(p, (list, tuple)) or len(p) < 3:
            raise InvalidInput("A point is (x, y, class[, positive, acquisition_ms]).")
        x, y = float(p[0]), float(p[1])
        cls = _as_int(p[2], "class")
        pos = bool(p[3]) if len(p) > 3 else True
        ms = float(p[4]) if len(p) > 4 and p[4] is not None else None
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w and 0 <= y < h) or cls not in (0, 1, 2):
            raise InvalidInput("Point outside the slice or bad class.")
        if ms is not None and not (np.isfinite(ms) and 0 <= ms <= 3_600_000):
            raise InvalidInput("Bad prompt time.")
        pts.append((x, y, cls, pos, ms))
    if box is not None and len(box):
        if len(box) < 4:
            raise InvalidInput("A box is (x0, y0, x1, y1[, class, acquisition_ms]).")
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        cls = _as_int(box[4], "class") if len(box) > 4 else 0
        ms = float(box[5]) if len(box) > 5 and box[5] is not None else None
        if not all(np.isfinite(v) for v in (x0, y0, x1, y1)) or not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise InvalidInput("Box outside the slice or empty.")
        if ms is not None and not (np.isfinite(ms) and 0 <= ms <= 3_600_000):
            raise InvalidInput("Bad prompt time.")
        boxes.append((x0, y0, x1, y1, cls, ms))
    if arm == "usam_p" and boxes:
        raise InvalidInput("This arm uses point prompts only.")
    if arm == "usam_b" and pts:
        raise InvalidInput("This arm uses box prompts only.")
    return pts, boxes
