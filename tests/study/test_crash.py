"""Crashes: `python app.py` is killed with SIGKILL in the middle of annotation (one save in
flight); after a restart every acknowledged slice is there with its content, the database is
intact, and the clinician resumes at the same case and slice and can submit. A backup taken
while the server runs restores to an identical study (same `python -m study export` output and
the same rows in every table): `python -m study backup` on SQLite, pg_dump / pg_restore (the
documented way) on PostgreSQL."""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from sqlalchemy import select

from tests.reliability.helpers import (ROOT, STUDY_CODE, AppProcess, cheap_argon2, client, mask_text,
                                       make_study_db, server_env, table_snapshot, val)
from tests.reliability.soak import INFO_RE, digest, pattern
from tests.study.conftest import write_tiny_cohort

PRESET = "Abdomen (400/40)"


def _labels_from_layer(payload: dict) -> np.ndarray:
    """Label map shown in the contouring tool (the stored mask it was sent, exactly)."""
    from tests.reliability.helpers import shown_labels

    return shown_labels(payload)


def _stored(db_url: str, login: str) -> dict[int, str]:
    from study.db import Database
    from study.models import Assignment, Clinician, SliceMask
    from study.scoring import decode_mask

    db = Database(db_url)
    try:
        with db.session() as s:
            uid = s.scalar(select(Clinician.id).where(Clinician.login == login))
            rows = s.execute(select(SliceMask).join(Assignment, Assignment.id == SliceMask.assignment_id)
                             .where(Assignment.clinician_id == uid)).scalars()
            return {r.z: digest(decode_mask(r.data, (r.height, r.width))) for r in rows}
    finally:
        db.dispose()


def _study_cli(db_url: str, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "study", "--db", db_url, *args], cwd=str(ROOT), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@contextlib.contextmanager
def _database(backend: str, tmp_path):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    else:
        from tests.pg import pg_or_fail

        with pg_or_fail("usam_crash") as url:
            yield url


def _check_intact(url: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    else:   # the server survived its client's crash; every table readable
        assert table_snapshot(url)


def _pg_tool(name: str) -> str:
    from tests.pg import pg_bin

    return str(pg_bin() / name)


def _pg_args(url: str) -> tuple[list[str], str]:
    """(-h/-p/-U arguments, database name) of a postgresql+psycopg://user@host:port/db URL."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return ["-h", u.host, "-p", str(u.port), "-U", u.username], u.database


def _backup_and_restore(url: str, tmp_path) -> str:
    """Back up the live database and restore it as a new one; the restored database's URL."""
    if url.startswith("sqlite"):
        backup = tmp_path / "backup" / "study-backup.db"
        assert "backup written" in _study_cli(url, "backup", str(backup))
        restored = tmp_path / "restored" / "study.db"
        restored.parent.mkdir()
        shutil.copy(backup, restored)
        return f"sqlite:///{restored}"
    # the SQLite backup command says to use pg_dump on PostgreSQL
    p = subprocess.run([sys.executable, "-m", "study", "--db", url, "backup", str(tmp_path / "x.db")],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "pg_dump" in p.stderr
    conn, name = _pg_args(url)
    dump = tmp_path / "study.dump"
    for cmd in ([_pg_tool("pg_dump"), *conn, "-Fc", "-f", str(dump), name],
                [_pg_tool("createdb"), *conn, "usam_restored"],
                [_pg_tool("pg_restore"), *conn, "--exit-on-error", "-d", "usam_restored", str(dump)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (cmd[0], r.stderr[-2000:])
    return url.rsplit("/", 1)[0] + "/usam_restored"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill9_mid_annotation_then_resume_and_backup_restore(backend, tmp_path):
    with _database(backend, tmp_path) as url:
        _crash_resume_backup(url, tmp_path)


def _crash_resume_backup(url: str, tmp_path) -> None:
    cheap_argon2()
    cohort = write_tiny_cohort(tmp_path / "cohort", 6)
    make_study_db(url, cohort, group_sizes=(2, 2, 2), k=3)
    env = server_env(url, tmp_path / "data")

    app = AppProcess(env, tmp_path / "app1.log").wait_ready()
    try:
        c = client(app.url)
        c.predict(STUDY_CODE, "crash.reader", "crash-pw-1", "Crash Reader", 2, 4.0, "surgery",
                  api_name="/study_register")
        out = c.predict("crash.reader", "crash-pw-1", PRESET, api_name="/study_login")
        k, n, start, end = (int(g) for g in INFO_RE.search(out[1]).groups())
        z = int(val(out[2]))
        aid = out[3]["aid"]
        assert z == start
        acked = {}
        for _ in range(3):                                   # three acknowledged saves: start..start+2
            lab = pattern(7, k, z, 1)
            out = c.predict(mask_text(lab), aid, PRESET, api_name="/study_next")
            acked[z] = digest(lab)
            z = int(val(out[1]))
        # one more save in flight when the process dies
        inflight_z, inflight = z, pattern(7, k, z, 1)
        job = c.submit(mask_text(inflight), aid, PRESET, api_name="/study_next")
        time.sleep(0.05)
        app.kill9()
        try:                                                 # its outcome is unknown (reset connection)
            job.result(timeout=10)
        except Exception:
            pass
    finally:
        app.stop()

    # the database is intact and every acknowledged slice is there, unchanged
    _check_intact(url)
    stored = _stored(url, "crash.reader")
    for zz, d in acked.items():
        assert stored.get(zz) == d, f"slice {zz} lost or changed by the crash"
    assert set(stored) <= set(acked) | {inflight_z}
    if inflight_z in stored:                                 # committed before the kill: then complete
        assert stored[inflight_z] == digest(inflight)
    # where the clinician was: the slice shown after the last acknowledged save (navigation records it),
    # or one further when the in-flight save and its navigation committed before the kill
    allowed = {inflight_z} | ({inflight_z, inflight_z + 1} if inflight_z in stored else set())

    app = AppProcess(env, tmp_path / "app2.log").wait_ready()
    try:
        c = client(app.url)
        out = c.predict("crash.reader", "crash-pw-1", PRESET, api_name="/study_login")
        k2, n2, start2, end2 = (int(g) for g in INFO_RE.search(out[1]).groups())
        assert (k2, n2, start2, end2) == (k, n, start, end)          # the same case
        z = int(val(out[2]))
        assert z in allowed, (z, allowed)                             # at the slice they were on
        assert out[3]["aid"] == aid                                  # the same assignment
        shown = _labels_from_layer(out[3])                            # with their own mask, exactly
        assert digest(shown) == stored.get(z, digest(np.zeros_like(shown)))
        assert f"{len(stored)} slices saved" in out[1]
        # finish the case: the submission holds the slices saved before the crash
        while z < end:
            out = c.predict(mask_text(pattern(7, k, z, 2)), aid, PRESET, api_name="/study_next")
            z = int(val(out[1]))
        out = c.predict(mask_text(pattern(7, k, z, 2)), aid, PRESET, api_name="/study_submit")
        assert "Case submitted" in out[0]

        # backup while the server runs, then restore it as a new database
        rurl = _backup_and_restore(url, tmp_path)
    finally:
        app.stop()

    from study.db import Database
    from study.models import Submission
    from study.scoring import decode_mask

    db = Database(url)
    with db.session() as s:
        sub = s.scalar(select(Submission))
        arr = decode_mask(sub.data, sub.shape)
    db.dispose()
    for zz in acked:                                    # saved before the crash, never touched again
        assert digest(arr[zz - start]) == acked[zz]

    _study_cli(url, "export", str(tmp_path / "exp_live"))
    _study_cli(rurl, "export", str(tmp_path / "exp_restored"))
    live_csv = (tmp_path / "exp_live" / "annotations_long.csv").read_text()
    assert live_csv == (tmp_path / "exp_restored" / "annotations_long.csv").read_text()
    assert "crash.reader" in live_csv and live_csv.count("\n") > 5
    assert table_snapshot(rurl) == table_snapshot(url)
