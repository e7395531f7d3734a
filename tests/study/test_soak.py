"""Soak: 46 simulated clinicians at once through gradio_client against `python app.py` on
127.0.0.1 for a bounded time, on SQLite and on PostgreSQL. Afterwards nothing acknowledged is
lost or duplicated, every stored mask is the last one its clinician saved, submissions match,
and the audit log / activity events agree with the data. Save latency p50/p95 is printed
(docs/RELIABILITY.md holds the figures); it is reported, not asserted.

Size: USAM_SOAK_CLINICIANS (default 46), USAM_SOAK_SECONDS of load per database (default 40).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import cheap_argon2, make_study_db, running_app, server_env
from tests.reliability.soak import STALL_S, SETUP_S, percentile, run_clinicians, verify
from tests.study.conftest import write_tiny_cohort

N = int(os.environ.get("USAM_SOAK_CLINICIANS", "46"))
SECONDS = float(os.environ.get("USAM_SOAK_SECONDS", "40"))


@contextlib.contextmanager
def _database(backend: str, tmp_path: Path):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'soak.db'}"
    else:
        from tests.pg import pg_or_fail

        with pg_or_fail("usam_soak") as url:
            yield url


@pytest.mark.slow
@pytest.mark.timeout(SETUP_S + SECONDS + STALL_S + 1200)   # the bounds of soak.py plus start-up and checks
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_soak_many_clinicians(backend, tmp_path, capsys):
    cheap_argon2()                                  # admin set-up in this process only
    cohort = write_tiny_cohort(tmp_path / "cohort", 20)
    with _database(backend, tmp_path) as url:
        make_study_db(url, cohort, group_sizes=(15, 14, 17), k=10)
        uploads = tmp_path / "layers"
        uploads.mkdir()
        with running_app(server_env(url, tmp_path / "data"), tmp_path / "app.log") as app:
            load0, t0 = os.getloadavg()[0], time.monotonic()
            ledgers = run_clinicians(app.url, N, SECONDS, uploads)
            wall, load1 = time.monotonic() - t0, os.getloadavg()[0]
            log = app.log()
        errors = [f"{l.login}: {e}" for l in ledgers for e in l.errors]
        assert not errors, "\n".join(errors[:5]) + "\n--- server log ---\n" + log[-3000:]
        res = verify(url, ledgers)
    saves = [ms for l in ledgers for ms in l.save_ms]
    subs = [ms for l in ledgers for ms in l.submit_ms]
    figures = {"backend": backend, "clinicians": N, "load_s": SECONDS, "saves": res["saves"],
               "slices_stored": res["slices"], "submissions": res["submissions"],
               "save_p50_ms": round(percentile(saves, 50), 1), "save_p95_ms": round(percentile(saves, 95), 1),
               "save_max_ms": round(max(saves), 1) if saves else None,
               "submit_p95_ms": round(percentile(subs, 95), 1), "images_downloaded": sum(l.images for l in ledgers),
               "problems": len(res["problems"]), "wall_s": round(wall, 1), "cpus": os.cpu_count(),
               "loadavg_1m": [round(load0, 1), round(load1, 1)]}
    with capsys.disabled():
        print("\nSOAK " + json.dumps(figures))
    out = os.environ.get("USAM_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"soak_{backend}.json").write_text(json.dumps(figures, indent=1))
    assert not res["problems"], "\n".join(res["problems"][:20])
    # every clinician had work (a case open, or all submitted): none was left without cases
    idle = [l.login for l in ledgers if l.case is None and not l.finished]
    assert not idle, f"clinicians without a case: {idle}"
    # the load really happened: every clinician saved, and cases were submitted
    assert all(sum(l.save_calls.values()) > 0 for l in ledgers)
    assert res["submissions"] > 0 and res["saves"] >= N
    # and the output images were downloaded complete, as a browser loads them
    assert all(l.images > 0 for l in ledgers)
