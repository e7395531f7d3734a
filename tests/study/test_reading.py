"""study.reading's resume point: the newest annotation session notes where the reader is (saves
and heartbeats), a session that noted no slice yet leaves the previous one's point in force."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from study import reading
from study.models import ActivityEvent, AnnotationSession
from tests.study.test_service import _reader


def test_resume_point_follows_the_newest_session_that_noted_a_slice(study_env):
    svc, admin, code, sid = study_env
    tok, cv = _reader(svc, code, "resumer")
    aid, z0 = cv.assignment_id, cv.start
    assert cv.resume_z == z0                                   # nothing noted yet: the first slice
    svc.heartbeat(tok, aid, z=z0 + 2)
    m = np.zeros((cv.height, cv.width), np.uint8)
    svc.save_slice(tok, aid, z0 + 1, m)                        # the save is the newest point
    again = svc.open_case(tok, aid)                            # a new session, no slice noted in it
    assert again.resume_z == z0 + 1
    svc.heartbeat(tok, aid, z=z0)                              # a heartbeat notes a slice too
    assert svc.open_case(tok, aid).resume_z == z0
    with svc.db.session() as s:
        sessions = list(s.scalars(select(AnnotationSession).where(AnnotationSession.assignment_id == aid)
                                  .order_by(AnnotationSession.id)))
        assert [x.last_z for x in sessions] == [z0 + 1, z0, z0]  # the third opened on the second's point
        assert reading.latest_session(s, aid).id == sessions[-1].id
        assert reading.latest_session(s, aid, with_slice=True).id == sessions[-1].id
        save = s.scalar(select(ActivityEvent).where(ActivityEvent.assignment_id == aid, ActivityEvent.kind == "save"))
        assert save.session_id == sessions[0].id and save.z == z0 + 1
