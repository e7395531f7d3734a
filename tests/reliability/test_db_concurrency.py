"""The database layer under concurrent clinicians, without HTTP, on SQLite (WAL, busy timeout)
and on PostgreSQL (READ COMMITTED), through StudyService:

- 46 clinicians register at the same moment: each holds exactly one slot of their group and
  no slot is shared (PostgreSQL used to hand one slot to two readers, leaving the first one
  without cases);
- 46 clinicians save slices and submit cases from 46 threads for a bounded time: every
  acknowledged save is stored once with the last content, one submission per acknowledged
  case, and the audit log agrees; the service-level save latency (database only) is printed;
- one case hit at once from several threads (two tabs, a double click, an API client retrying):
  saves of one slice are all counted, a case is submitted once (the others get Conflict), and
  no save lands on a case after its submission.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.reliability.helpers import STUDY_CODE, cheap_argon2, make_study_db
from tests.reliability.soak import digest, group_of, pattern, percentile
from tests.study.conftest import write_tiny_cohort

N = int(os.environ.get("USAM_SOAK_CLINICIANS", "46"))
SECONDS = float(os.environ.get("USAM_DB_SOAK_SECONDS", "15"))
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="module")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the module; each test gets its own database."""
    from tests.pg import pg_or_fail

    with pg_or_fail("usam_dbconc") as url:
        yield url


@contextlib.contextmanager
def _database(backend: str, tmp_path: Path, request):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.db'}"
        return
    from sqlalchemy import create_engine, text

    base = request.getfixturevalue("pg_cluster")
    name = f"t_{abs(hash(request.node.nodeid)) % 10**9}"
    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        eng.dispose()


@pytest.fixture
def study(request, tmp_path):
    """(service, url) of a fresh study (groups 15/14/17, k=10, 20 tiny cases) on the backend."""
    from study.cases import CaseCache
    from study.db import Database
    from study.service import StudyService

    cheap_argon2()
    cohort = write_tiny_cohort(tmp_path / "cohort", 20)
    with _database(request.param, tmp_path, request) as url:
        make_study_db(url, cohort, group_sizes=(15, 14, 17), k=10)
        svc = StudyService(Database(url), cache=CaseCache())
        try:
            yield svc, url
        finally:
            svc.db.dispose()


def _at_once(n: int, fn, timeout: float = 600) -> list[str]:
    """Run fn(i) for i < n in n threads released together; the errors as text."""
    gate = threading.Barrier(n)
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            gate.wait(120)
            fn(i)
        except Exception as exc:               # noqa: BLE001 - reported by the caller
            errors.append(f"{i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not [t for t in threads if t.is_alive()], "threads did not stop"
    return errors


def _register_all(svc, prefix: str) -> list[str]:
    """N readers register at the same moment, then log in; their tokens."""
    errors = _at_once(N, lambda i: svc.register(STUDY_CODE, f"{prefix}{i:02d}", "password-db", group=group_of(i)))
    assert not errors, errors[:5]
    return [svc.login(f"{prefix}{i:02d}", "password-db") for i in range(N)]


@pytest.mark.parametrize("study", BACKENDS, indirect=True)
def test_concurrent_registrations_claim_distinct_slots(study):
    from study.models import Assignment, AuditLog, Clinician

    svc, _ = study
    _register_all(svc, "reg")
    with svc.db.session() as s:
        readers = {u.id: u for u in s.scalars(select(Clinician).where(Clinician.role == "reader"))}
        rows = list(s.scalars(select(Assignment).where(Assignment.clinician_id.is_not(None))))
        claims = Counter(s.scalars(select(AuditLog.actor_id).where(AuditLog.action == "claim_slot")))
    assert len(readers) == N
    slots_of: dict[int, set] = {}
    holders: dict[tuple, set] = {}
    for a in rows:
        slots_of.setdefault(a.clinician_id, set()).add((a.group, a.slot))
        holders.setdefault((a.group, a.slot), set()).add(a.clinician_id)
    assert sorted(slots_of) == sorted(readers), "readers without cases"
    assert all(len(v) == 1 for v in slots_of.values()), "a reader holds several slots"
    assert all(len(v) == 1 for v in holders.values()), "a slot is held by several readers"
    assert all(next(iter(slots_of[uid]))[0] == u.group for uid, u in readers.items())
    # a claimed slot is claimed whole (every case of it, in every arm), and by its holder only
    with svc.db.session() as s:
        for (g, slot), (uid,) in holders.items():
            owners = set(s.scalars(select(Assignment.clinician_id).where(Assignment.group == g,
                                                                        Assignment.slot == slot)))
            assert owners == {uid}, (g, slot, owners)
    assert claims == Counter({uid: 1 for uid in readers})


@pytest.mark.parametrize("study", BACKENDS, indirect=True)
def test_service_under_concurrent_clinicians(study, capsys):
    from study.models import AuditLog, SliceMask, Submission
    from study.scoring import decode_mask

    svc, _ = study
    backend = svc.db.engine.dialect.name
    tokens = _register_all(svc, "db")
    last: dict[tuple[int, int], str] = {}
    calls: Counter = Counter()
    submitted: list[int] = []
    lat: list[float] = []
    lock = threading.Lock()

    def clinician(i: int) -> None:
        tok = tokens[i]
        stop = time.monotonic() + SECONDS
        while time.monotonic() < stop:
            cv = svc.next_case(tok)
            if cv is None:
                return
            cv = svc.open_case(tok, cv.assignment_id)
            for z in range(cv.start, cv.end + 1):
                lab = pattern(i, cv.assignment_id, z, 1)
                t0 = time.perf_counter()
                svc.save_slice(tok, cv.assignment_id, z, lab)
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.append(ms)
                    last[(cv.assignment_id, z)] = digest(lab)
                    calls[cv.assignment_id] += 1
            svc.submit(tok, cv.assignment_id)
            with lock:
                submitted.append(cv.assignment_id)

    errors = _at_once(N, clinician, timeout=SECONDS + 600)
    assert not errors, errors[:5]

    with svc.db.session() as s:
        rows = list(s.scalars(select(SliceMask)))
        stored = {(r.assignment_id, r.z): digest(decode_mask(r.data, (r.height, r.width))) for r in rows}
        subs = Counter(s.scalars(select(Submission.assignment_id)))
        audit_saves = Counter(s.scalars(select(AuditLog.target).where(AuditLog.action == "save_slice")))
        audit_subs = s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "submit"))
    assert stored == last                                    # nothing lost, nothing extra, last content
    assert len(rows) == len(stored)                          # no duplicated (assignment, slice)
    assert subs == Counter(submitted) and max(subs.values(), default=1) == 1
    assert audit_saves == Counter({f"assignment:{a}": n for a, n in calls.items()})
    assert audit_subs == len(submitted)
    assert len(submitted) >= N // 2 and len(lat) >= N
    fig = {"backend": backend, "clinicians": N, "seconds": SECONDS, "saves": len(lat), "submissions": len(submitted),
           "save_p50_ms": round(percentile(lat, 50), 1), "save_p95_ms": round(percentile(lat, 95), 1),
           "save_max_ms": round(max(lat), 1)}
    with capsys.disabled():
        print("\nDB-SOAK " + json.dumps(fig))
    out = os.environ.get("USAM_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"dbsoak_{backend}.json").write_text(json.dumps(fig, indent=1))


@pytest.mark.parametrize("study", BACKENDS, indirect=True)
def test_one_case_hit_from_several_threads(study):
    """Two tabs / double clicks: 8 saves of one slice at once, then 4 submits at once racing 4 saves."""
    from study.errors import Conflict, NotFound
    from study.models import ActivityEvent, AuditLog, SliceMask, Submission
    from study.scoring import decode_mask

    svc, _ = study
    svc.register(STUDY_CODE, "twotabs", "password-db", group=1)
    tok = svc.login("twotabs", "password-db")
    cv = svc.open_case(tok, svc.next_case(tok).assignment_id)
    aid, z0 = cv.assignment_id, cv.start
    masks = [pattern(7, aid, z0, v) for v in range(8)]
    assert not _at_once(8, lambda i: svc.save_slice(tok, aid, z0, masks[i]))
    with svc.db.session() as s:
        (row,) = s.scalars(select(SliceMask).where(SliceMask.assignment_id == aid))
        assert row.saves == 8                                   # every acknowledged save counted
        assert digest(decode_mask(row.data, (row.height, row.width))) in {digest(m) for m in masks}
        n_audit = s.scalar(select(func.count()).select_from(AuditLog).where(
            AuditLog.action == "save_slice", AuditLog.target == f"assignment:{aid}"))
        n_act = s.scalar(select(func.count()).select_from(ActivityEvent).where(
            ActivityEvent.assignment_id == aid, ActivityEvent.kind == "save"))
        assert n_audit == n_act == 8

    # 4 submits and 4 saves (of the next slice) at once
    z1 = z0 + 1
    late = [pattern(8, aid, z1, v) for v in range(4)]
    done: list[tuple[str, object]] = []
    lock = threading.Lock()

    def act(i: int) -> None:
        try:
            r = svc.submit(tok, aid) if i < 4 else svc.save_slice(tok, aid, z1, late[i - 4])
            with lock:
                done.append(("submit" if i < 4 else "save", r))
        except (Conflict, NotFound) as exc:
            with lock:
                done.append(("refused", exc))

    assert not _at_once(8, act)
    kinds = Counter(k for k, _ in done)
    assert kinds["submit"] == 1, done                            # submitted once
    with svc.db.session() as s:
        subs = list(s.scalars(select(Submission).where(Submission.assignment_id == aid)))
        assert len(subs) == 1 and subs[0].revision == 1
        n_sub_audit = s.scalar(select(func.count()).select_from(AuditLog).where(
            AuditLog.action == "submit", AuditLog.target == f"assignment:{aid}"))
        assert n_sub_audit == 1
        rows = {r.z: r for r in s.scalars(select(SliceMask).where(SliceMask.assignment_id == aid))}
        sub = decode_mask(subs[0].data, subs[0].shape)
        # every save acknowledged is in the submission: it landed before it, never after
        saved_z1 = kinds["save"]
        if saved_z1:
            assert rows[z1].saves == saved_z1
            assert digest(sub[z1 - cv.start]) == digest(decode_mask(rows[z1].data, (rows[z1].height,
                                                                                      rows[z1].width)))
        else:
            assert z1 not in rows and not sub[z1 - cv.start].any()
        assert digest(sub[z0 - cv.start]) == digest(decode_mask(rows[z0].data, (rows[z0].height, rows[z0].width)))
    # after the submission a save is refused and changes nothing
    with pytest.raises(Conflict):
        svc.save_slice(tok, aid, z0, np.zeros((cv.height, cv.width), np.uint8))
    with pytest.raises(Conflict):
        svc.submit(tok, aid)
