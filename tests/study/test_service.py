"""Service API: authentication, roles and ownership inside every call, isolation, resume,
immutability of submissions, and user errors that change no stored data."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

from study import auth
from study.errors import AuthError, Conflict, InvalidInput, NotFound, PermissionDenied, RateLimited
from study.models import (ActivityEvent, Assignment, AuditLog, AuthSession, Clinician, SliceMask,
                          Submission, utcnow)
from study.service import StudyService
from tests.fakes import FakeSession


def _counts(svc):
    with svc.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in
                     (SliceMask, Submission, Assignment, Clinician))


def _reader(svc, code, login, group=1):
    svc.register(code, login, "reader-pass-1", group=group)
    tok = svc.login(login, "reader-pass-1")
    cv = svc.open_case(tok, svc.next_case(tok).assignment_id)
    return tok, cv


def test_passwords_are_argon2_and_never_stored_in_clear(study_env):
    svc, admin, code, sid = study_env
    svc.register(code, "alice", "correct horse", group=1)
    with svc.db.session() as s:
        u = s.scalar(select(Clinician).where(Clinician.login == "alice"))
        assert u.password_hash.startswith("$argon2id$") and "correct horse" not in u.password_hash
        for row in s.scalars(select(AuditLog)):
            assert "correct horse" not in str(row.detail)
        tokens = list(s.scalars(select(AuthSession.token_hash)))
    tok = svc.login("alice", "correct horse")
    assert tok not in tokens and auth.token_digest(tok) in [*tokens, auth.token_digest(tok)]


def test_wrong_code_password_and_rate_limit(study_env):
    svc, admin, code, sid = study_env
    with pytest.raises(AuthError):
        svc.register("WRONG", "eve", "reader-pass-1", group=1)
    svc.register(code, "bob", "reader-pass-1", group=1)
    from study import throttle

    for _ in range(throttle.FREE_FAILURES):
        with pytest.raises(AuthError, match="Wrong login or password"):
            svc.login("bob", "nope-nope", address="10.0.0.9")
    with pytest.raises(RateLimited):
        svc.login("bob", "reader-pass-1", address="10.0.0.9")   # this address waits (back-off) now
    assert svc.login("bob", "reader-pass-1", address="10.0.0.10")   # the owner elsewhere is not locked out


def test_unauthenticated_and_expired_tokens_are_refused(study_env):
    svc, admin, code, sid = study_env
    tok, cv = _reader(svc, code, "carol")
    for bad in (None, "", "forged-token", "x" * 5000):
        with pytest.raises(AuthError):
            svc.get_slice(bad, cv.assignment_id, cv.start)
        with pytest.raises(AuthError):
            svc.report(bad)
    with svc.db.session() as s:
        row = s.scalar(select(AuthSession).where(AuthSession.token_hash == auth.token_digest(tok)))
        row.expires_at = utcnow() - timedelta(seconds=1)
    with pytest.raises(AuthError, match="expired"):
        svc.next_case(tok)
    tok2 = svc.login("carol", "reader-pass-1")
    svc.logout(tok2)
    with pytest.raises(AuthError):
        svc.next_case(tok2)


def test_reader_cannot_touch_another_readers_work_or_admin_functions(study_env):
    svc, admin, code, sid = study_env
    t1, cv1 = _reader(svc, code, "r1", group=1)
    t2, cv2 = _reader(svc, code, "r2", group=2)
    mask = np.ones((cv1.height, cv1.width), np.uint8)
    svc.save_slice(t1, cv1.assignment_id, cv1.start, mask)
    before = _counts(svc)
    for call in (lambda: svc.get_slice(t2, cv1.assignment_id, cv1.start),
                 lambda: svc.save_slice(t2, cv1.assignment_id, cv1.start, mask),
                 lambda: svc.submit(t2, cv1.assignment_id),
                 lambda: svc.open_case(t2, cv1.assignment_id),
                 lambda: svc.heartbeat(t2, cv1.assignment_id)):
        with pytest.raises(NotFound):                       # same answer as for a missing id
            call()
    for call in (lambda: svc.report(t2), lambda: svc.readers(t2), lambda: svc.drop_reader(t2, 1),
                 lambda: svc.export_csv(t2, "/tmp/x.csv"), lambda: svc.study_info(t2),
                 lambda: svc.set_group(t2, 1, 2), lambda: svc.create_study(t2, "x")):
        with pytest.raises(PermissionDenied):
            call()
    with pytest.raises(PermissionDenied):                   # admins do not annotate
        svc.next_case(admin)
    assert _counts(svc) == before
    # the reader's own view carries no ground truth and no file names
    view = svc.get_slice(t1, cv1.assignment_id, cv1.start)
    assert set(vars(view)) == {"z", "image", "mask", "source"}
    assert np.array_equal(view.mask, mask)
    assert "case" not in cv1.label.lower().replace("case ", "")
    assert not any(k in vars(cv1) for k in ("gt_path", "volume_path", "key"))


def test_only_the_next_case_and_only_its_range(study_env):
    svc, admin, code, sid = study_env
    tok, cv = _reader(svc, code, "dan")
    with svc.db.session() as s:
        others = list(s.scalars(select(Assignment.id).where(Assignment.clinician_id == svc.me(tok)["id"],
                                                            Assignment.id != cv.assignment_id)))
    with pytest.raises(PermissionDenied):
        svc.get_slice(tok, others[0], cv.start)
    before = _counts(svc)
    for z in (cv.start - 1, cv.end + 1, -5, 10**9, "3; drop table", 2.5, float("nan")):
        with pytest.raises(InvalidInput):
            svc.save_slice(tok, cv.assignment_id, z, np.zeros((cv.height, cv.width), np.uint8))
    for bad in (np.zeros((3, 3), np.uint8), np.full((cv.height, cv.width), 3), np.full((cv.height, cv.width), -1),
                np.full((cv.height, cv.width), 0.5)):
        with pytest.raises(InvalidInput):
            svc.save_slice(tok, cv.assignment_id, cv.start, bad)
    assert _counts(svc) == before


def test_resume_where_left_and_submission_is_immutable(study_env):
    svc, admin, code, sid = study_env
    tok, cv = _reader(svc, code, "erin")
    m = np.zeros((cv.height, cv.width), np.uint8)
    m[10:20, 10:20] = 1
    svc.save_slice(tok, cv.assignment_id, cv.start, m)
    svc.save_slice(tok, cv.assignment_id, cv.start + 1, m * 2)
    # "close the browser": a new login resumes on the same case at the last saved slice
    tok2 = svc.login("erin", "reader-pass-1")
    again = svc.open_case(tok2, svc.next_case(tok2).assignment_id)
    assert again.assignment_id == cv.assignment_id
    assert again.resume_z == cv.start + 1 and again.saved == [cv.start, cv.start + 1]
    assert np.array_equal(svc.get_slice(tok2, cv.assignment_id, cv.start).mask, m)
    svc.submit(tok2, cv.assignment_id)
    with pytest.raises(Conflict):
        svc.save_slice(tok2, cv.assignment_id, cv.start, m)
    with pytest.raises(Conflict):
        svc.submit(tok2, cv.assignment_id)
    with pytest.raises(PermissionError):
        with svc.db.session() as s:
            s.scalar(select(Submission)).active_s = 1.0
    with pytest.raises(PermissionError):
        with svc.db.session() as s:
            s.delete(s.scalar(select(AuditLog)))
    assert svc.next_case(tok2).assignment_id != cv.assignment_id
    with svc.db.session() as s:
        actions = [a.action for a in s.scalars(select(AuditLog).order_by(AuditLog.id))]
        assert actions.count("save_slice") == 2 and actions.count("submit") == 1
        kinds = [e.kind for e in s.scalars(select(ActivityEvent).where(
            ActivityEvent.assignment_id == cv.assignment_id).order_by(ActivityEvent.id))]
        assert kinds == ["open", "save", "save", "open", "submit"]


def test_revision_after_admin_reopen_is_a_new_row(study_env):
    from study.models import Assignment as A

    svc, admin, code, sid = study_env
    tok, cv = _reader(svc, code, "fay")
    svc.submit(tok, cv.assignment_id)
    with pytest.raises(PermissionDenied):
        svc.reopen(tok, cv.assignment_id)
    assert svc.reopen(admin, cv.assignment_id)["status"] == "open"
    with pytest.raises(NotFound):
        svc.reopen(admin, cv.assignment_id)    # not submitted any more
    svc.save_slice(tok, cv.assignment_id, cv.start, np.ones((cv.height, cv.width), np.uint8))
    assert svc.submit(tok, cv.assignment_id)["revision"] == 2
    with svc.db.session() as s:
        assert [r.revision for r in s.scalars(select(Submission).order_by(Submission.id))] == [1, 2]
    from study.report import load_records
    with svc.db.session() as s:
        from study.studies import get_study
        recs = load_records(s, get_study(s, sid))
    assert len(recs) == 1 and recs[0]["revision"] == 2


class _FakePredictor:
    def __init__(self, volume):
        self.volume = volume

    def predict(self, z, prompts):
        from types import SimpleNamespace
        lab = np.zeros(self.volume.array.shape[1:], np.uint8)
        if prompts is not None and len(prompts.boxes):
            lab[5:15, 5:15] = 2
        else:
            lab[(self.volume.array[z] > 20)] = 1
        return SimpleNamespace(labels=lab)


def test_ai_arm_stores_prompts_output_and_time(tmp_path, tiny_cohort):
    from study.models import ModelOutput, PromptEvent
    from .conftest import make_study

    svc, admin, code, sid = make_study(tmp_path, tiny_cohort, arms=["usam_b"])
    svc.session_factory = lambda volume: FakeSession(_FakePredictor(volume))
    svc.model_name, svc.checkpoint_hash = "fake", "abc"
    tok, cv = _reader(svc, code, "gus")
    assert cv.arm == "usam_b"
    with pytest.raises(InvalidInput):                    # points in the box arm; box outside the slice
        svc.predict_slice(tok, cv.assignment_id, cv.start, points=[(3, 3, 1, True, 100)])
    with pytest.raises(InvalidInput):
        svc.predict_slice(tok, cv.assignment_id, cv.start, box=(0, 0, 999, 10, 0, 10))
    lab = svc.predict_slice(tok, cv.assignment_id, cv.start, box=(4, 4, 16, 16, 0, 1500.0))
    assert (lab == 2).sum() == 100
    assert (svc.get_slice(tok, cv.assignment_id, cv.start).mask == lab).all()
    svc.submit(tok, cv.assignment_id)
    with svc.db.session() as s:
        pe = s.scalar(select(PromptEvent))
        assert (pe.kind, pe.x, pe.x2, pe.acquisition_ms, pe.model) == ("box", 4, 16, 1500.0, "fake")
        assert s.scalar(select(func.count()).select_from(ModelOutput)) == 1
        sub = s.scalar(select(Submission))
        assert sub.arm == "usam_b" and sub.prompt_s == pytest.approx(1.5) and sub.inference_s > 0
    rows = {r["row"] for r in svc.report(admin).rows}
    assert "U-SAM/B (reader boxes)" in rows


def test_close_registration_hands_unclaimed_slots_to_registered_readers(study_env):
    svc, admin, code, sid = study_env
    svc.register(code, "solo1", "reader-pass-1", group=1)
    svc.register(code, "solo2", "reader-pass-1", group=2)
    with pytest.raises(PermissionDenied):
        svc.close_registration(svc.login("solo1", "reader-pass-1"))
    res = svc.close_registration(admin)
    # 18 planned, 2 slots of 3 claimed: 12 unclaimed; each reader can take 3 more distinct cases
    assert res == {"reassigned": 6, "unplaced": 6}
    with svc.db.session() as s:
        open_rows = list(s.scalars(select(Assignment).where(Assignment.status == "pending")))
        assert all(a.clinician_id is not None for a in open_rows)
        per_reader = {}
        for a in open_rows:
            per_reader.setdefault(a.clinician_id, []).append(a.case_id)
    # each reader can hold each case once: 6 cases each, every case twice in all
    assert sorted(len(v) for v in per_reader.values()) == [6, 6]
    assert all(len(set(v)) == len(v) for v in per_reader.values())
