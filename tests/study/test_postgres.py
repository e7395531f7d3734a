"""The same schema (Alembic) and service round trip on PostgreSQL (skipped locally without it)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.pg import pg_or_fail


def test_migrate_register_save_submit_report_on_postgres(tiny_cohort):
    from study import ops
    from study.cases import CaseCache
    from study.db import Database
    from study.errors import NotFound
    from study.service import StudyService

    with pg_or_fail("usam_study_test") as url:
        db = Database(url)
        db.migrate()
        db.migrate()                                   # idempotent
        with db.session() as s:
            st = ops.create_study(s, "pg", code="PG1", k=3, group_sizes=[2, 2, 2], seed=1)
            ops.import_cases(s, st, tiny_cohort)
            ops.add_clinician(s, "admin", "admin-password", role="admin")
        svc = StudyService(db, cache=CaseCache())
        svc.register("PG1", "pgreader", "reader-pass-1", group=2)
        tok = svc.login("pgreader", "reader-pass-1")
        cv = svc.open_case(tok, svc.next_case(tok).assignment_id)
        svc.save_slice(tok, cv.assignment_id, cv.start, np.ones((cv.height, cv.width), np.uint8))
        svc.save_slice(tok, cv.assignment_id, cv.start, np.zeros((cv.height, cv.width), np.uint8))
        svc.submit(tok, cv.assignment_id)              # scores hold None (NaN/inf) values: valid JSON
        rows = {r["row"]: r for r in svc.report(svc.login("admin", "admin-password")).rows}
        assert rows["Group 2"]["n"] == 1 and rows["Group 2"]["dice_mean"] == 0.0
        with pytest.raises(NotFound):
            svc.get_slice(tok, 10**6, cv.start)
        db.dispose()
