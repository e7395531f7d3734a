"""app.study_bench runs end to end on a small phantom (its figures are measured by the CLI, not here)."""
from __future__ import annotations

from tests.study.conftest import fast_argon2  # noqa: F401  (fixture)


def test_study_bench_runs_and_reports_every_save(tmp_path, fast_argon2):
    from app.study_bench import run

    res = run(cases=1, steps=4, size="small", folder=tmp_path)
    assert res["save_next_ms"]["n"] == 4 and res["save_next_ms"]["p95"] >= res["save_next_ms"]["p50"] > 0
    assert res["slice"][0] == res["slice"][1] and {"login_ms", "resume_login_ms", "look_only_ms"} <= set(res)
    # the bench saved what it sent: the reader's slices are in its database
    from study.db import Database
    from study.models import SliceMask
    from sqlalchemy import func, select

    db = Database(f"sqlite:///{tmp_path / 'bench.db'}")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(SliceMask)) == 4
    db.dispose()
