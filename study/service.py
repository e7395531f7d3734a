"""The study API the UI calls. Every method takes the caller's session token first and checks
role and ownership inside (Gradio exposes each event as an endpoint, so the UI cannot be the
guard). Readers never receive ground truth, scores or other readers' work.

This is the authorisation layer: it resolves the token, checks the role and opens the
transactions; the work itself is in study.accounts, study.reading, study.submitting,
study.ai_arms and study.admin (each on an open session)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from study import accounts, admin, ai_arms, reading, submitting
from study.ai_arms import SessionFactory
from study.auth import resolve_token
from study.cases import CACHE, CaseCache
from study.db import Database, get_database
from study.errors import Conflict, PermissionDenied
from study.models import Clinician, utcnow
from study.reading import CaseView, SliceView

__all__ = ["CaseView", "SessionFactory", "SliceView", "StudyService"]


class StudyService:
    """Observer-study API bound to one database (and an optional interactive-session factory for the AI arms)."""

    def __init__(self, db: Database | None = None, cache: CaseCache | None = None,
                 session_factory: SessionFactory | None = None, model_name: str = "",
                 checkpoint_hash: str = "", clock: Callable[[], Any] = utcnow):
        self.db = db or get_database()
        self.clock = clock          # server UTC time; the simulator passes a scripted clock
        self.cache = cache or CACHE
        self.session_factory = session_factory
        self.model_name = model_name
        self.checkpoint_hash = checkpoint_hash
        self._sessions = ai_arms.Sessions()

    # ---------------------------------------------------------------- accounts
    def register(self, study_code: str, login: str, password: str, name: str = "", group: int | None = None,
                 years: float | None = None, specialty: str = "", address: str = "") -> dict:
        """Create a reader account with the study's registration code (group may be set later)."""
        return accounts.register(self.db, study_code, login, password, name, group, years, specialty, address)

    def login(self, login: str, password: str, address: str = "") -> str:
        """Token for a correct login/password (throttled; see study.accounts.login)."""
        return accounts.login(self.db, login, password, address)

    def logout(self, token: str) -> None:
        """End a session (the token stops working)."""
        with self.db.session() as s:
            accounts.logout(s, token)

    def me(self, token: str) -> dict:
        """The caller's own account (no hash)."""
        with self.db.session() as s:
            return accounts.me(resolve_token(s, token))

    def _user(self, s: Session, token: str, role: str | None = None) -> Clinician:
        """The caller behind the token, refused unless they hold `role` (admin / reader)."""
        u = resolve_token(s, token)
        if role == "admin" and u.role != "admin":
            raise PermissionDenied("Only the study administrator can do this.")
        if role == "reader" and u.role != "reader":
            raise PermissionDenied("Only registered readers annotate.")
        return u

    def _reader(self, s: Session, token: str) -> Clinician:
        return self._user(s, token, "reader")

    # ---------------------------------------------------------------- reader: work list and slices
    def next_case(self, token: str) -> CaseView | None:
        """The reader's current case (the open one, else the next pending), or None when done."""
        with self.db.session() as s:
            return reading.next_case(s, self._reader(s, token))

    def progress(self, token: str) -> dict:
        """The reader's own counts: done and total cases."""
        with self.db.session() as s:
            return reading.progress(s, self._reader(s, token))

    def open_case(self, token: str, assignment_id: int) -> CaseView:
        """Start (or resume) annotating the current case: records the 'open' event."""
        with self.db.session() as s:
            return reading.open_case(s, self._reader(s, token), assignment_id, self.clock)

    def get_slice(self, token: str, assignment_id: int, z: int) -> SliceView:
        """HU slice z of the reader's current case and the reader's own saved mask."""
        with self.db.session() as s:
            z, mask, source, paths = reading.stored_slice(s, self._reader(s, token), assignment_id, z)
        lc = self.cache.get(*paths)             # the volume is read outside the transaction
        return SliceView(z, np.asarray(lc.volume.array[z], dtype=np.float32), mask, source)

    def save_slice(self, token: str, assignment_id: int, z: int, mask: np.ndarray, source: str = "manual") -> dict:
        """Store the reader's label map of slice z (0/1/2, slice shape); overwrites their draft.

        An absent mask (None) is refused: it never erases a stored slice (an empty slice is an
        explicit all-zero map, source 'empty')."""
        reading.check_save(mask, source)
        for attempt in range(2):
            try:
                with self.db.session() as s:
                    return reading.save_slice(s, self._reader(s, token), assignment_id, z, mask, source, self.clock)
            except IntegrityError:      # two tabs saving the same new slice at once: retry as update
                if attempt:
                    raise

    def slice_states(self, token: str, assignment_id: int) -> dict[int, tuple[str, bool]]:
        """{z: (source, has labels)} of the reader's stored slices of their current case."""
        with self.db.session() as s:
            return reading.states(s, reading.owned(s, self._reader(s, token), assignment_id).id)

    def interpolate(self, token: str, assignment_id: int) -> dict:
        """Fill the untouched slices between the reader's saved slices by shape-based interpolation.

        Filled slices are stored with source 'interpolated' (kept across sessions, shown as such)
        until the reader saves each one; a case with unconfirmed interpolated slices cannot be
        submitted. Slices the reader saved are never changed."""
        with self.db.session() as s:
            plan = reading.plan_interpolation(s, self._reader(s, token), assignment_id)
        filled = reading.fill(plan)             # outside any transaction
        if not filled:
            return {"interpolated": [], "gaps": 0}
        with self.db.session() as s:
            return reading.store_interpolated(s, self._reader(s, token), plan, filled, self.clock)

    def heartbeat(self, token: str, assignment_id: int, visible: bool = True, had_input: bool = True,
                  z: int | None = None) -> dict:
        """Activity from the page: visible and with input -> active; hidden or idle -> inactive."""
        with self.db.session() as s:
            return reading.heartbeat(s, self._reader(s, token), assignment_id, visible, had_input, z, self.clock)

    # ---------------------------------------------------------------- AI arms
    def predict_slice(self, token: str, assignment_id: int, z: int, points: list | None = None,
                      box: list | None = None) -> np.ndarray:
        """Run U-SAM on slice z with the reader's prompts (AI arms); stores prompts, output, time.

        points: [(x, y, cls 1|2, positive bool, acquisition_ms)], box: (x0, y0, x1, y1, cls, ms);
        slice pixel coordinates. The output is saved as the slice's mask (source 'model')."""
        with self.db.session() as s:
            call = ai_arms.check_call(s, self._reader(s, token), assignment_id, z, points, box)
        prompts = ai_arms.to_prompts(call.pts, call.boxes)
        t0 = time.perf_counter()    # outside any transaction; a first call also encodes the volume
        session = self._sessions.get(call.aid, call.case, self.session_factory, self.cache)
        result = ai_arms.run_prompts(session, call.z, prompts if (call.pts or call.boxes) else None)
        ms = (time.perf_counter() - t0) * 1000.0
        labels = np.asarray(result.labels, dtype=np.uint8)
        with self.db.session() as s:
            ai_arms.record(s, call, labels, ms, self.model_name, self.checkpoint_hash, self.clock())
        self.save_slice(token, assignment_id, call.z, labels, source="model")
        return labels

    # ---------------------------------------------------------------- submission
    def submit(self, token: str, assignment_id: int) -> dict:
        """Lock the annotation: assemble start..end, score against the locked GT, store timing.

        The reader gets no scores back (they must not learn the ground truth). Scoring runs
        outside any transaction (study.submitting); a save from another tab in between: read
        and score again. Two submits of one case at once store one submission; the other gets
        Conflict."""
        for attempt in range(3):
            try:
                with self.db.session() as s:
                    draft = submitting.read_draft(s, self._reader(s, token), assignment_id)
                pred, scores = submitting.score(self.cache, draft)   # before any write: errors change nothing
                with self.db.session() as s:
                    return submitting.store(s, self._reader(s, token), assignment_id, draft, pred, scores,
                                            self.clock)
            except submitting.SlicesChanged:
                if attempt == 2:
                    raise Conflict("The slices kept changing while the case was submitted; submit again.") from None
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- admin
    def create_study(self, token: str, name: str, **settings) -> dict:
        """New study (admin): settings as ops.create_study (k, group_sizes, arms, seed, ...)."""
        with self.db.session() as s:
            return admin.create_study(s, self._user(s, token, "admin"), name, **settings)

    def import_cases(self, token: str, study_id: int, folder: str) -> int:
        """Add a folder of cases to a study and save its assignment plan (admin)."""
        with self.db.session() as s:
            return admin.import_cases(s, self._user(s, token, "admin"), study_id, folder)

    def set_group(self, token: str, clinician_id: int, group: int) -> dict:
        """Set a reader's experience group (admin); claims their slot if they had none."""
        with self.db.session() as s:
            return admin.set_group(s, self._user(s, token, "admin"), clinician_id, group)

    def drop_reader(self, token: str, clinician_id: int) -> dict:
        """Drop a reader (admin): their unfinished cases go to active readers of their group."""
        with self.db.session() as s:
            return admin.drop_reader(s, self._user(s, token, "admin"), clinician_id)

    def reopen(self, token: str, assignment_id: int) -> dict:
        """Let a reader revise a submitted case (admin); the next submission is a new revision row."""
        with self.db.session() as s:
            return admin.reopen(s, self._user(s, token, "admin"), assignment_id)

    def close_registration(self, token: str, study_id: int | None = None) -> dict:
        """Hand the cases of never-claimed reader slots to the registered readers (admin)."""
        with self.db.session() as s:
            return admin.close_registration(s, self._user(s, token, "admin"), study_id)

    def readers(self, token: str, study_id: int | None = None) -> list[dict]:
        """Reader list with progress (admin)."""
        with self.db.session() as s:
            self._user(s, token, "admin")
            return admin.readers(s, study_id)

    def study_info(self, token: str, study_id: int | None = None) -> dict:
        """Settings of a study incl. its registration code (admin)."""
        with self.db.session() as s:
            self._user(s, token, "admin")
            return admin.study_info(s, study_id)

    def report(self, token: str, study_id: int | None = None):
        """Table 3, per-case and reader-level views and figures (admin)."""
        with self.db.session() as s:
            self._user(s, token, "admin")
            return admin.report(s, study_id)

    def run_models(self, token: str, study_id: int | None = None,
                   progress: Callable[[str], None] | None = None) -> int:
        """Run and score the U-SAM variants on every case (admin; needs the model); progress(text)
        after each case x variant run."""
        from study.model_runs import run_model_variants

        with self.db.session() as s:
            sid = admin.start_model_runs(s, self._user(s, token, "admin"), study_id)
        if self.session_factory is None:
            raise Conflict("No U-SAM model is configured on this server.")
        return run_model_variants(self.db, sid, self.session_factory, cache=self.cache, progress=progress)

    def export_csv(self, token: str, path: str | Path, study_id: int | None = None) -> Path:
        """Long-format CSV of every scored annotation (admin)."""
        with self.db.session() as s:
            return admin.export_csv(s, self._user(s, token, "admin"), path, study_id)
