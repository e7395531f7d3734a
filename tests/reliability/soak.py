"""Simulated clinicians driving the launched app through gradio_client, and the ledger check
that compares what each client was told with what the database holds."""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.reliability.helpers import STUDY_CODE, client, mask_text, val

PRESET = "Abdomen (400/40)"
PASSWORD = "clinician-pw-1"
INFO_RE = re.compile(r"\*\*Case (\d+) of (\d+)\*\* · slices (\d+)–(\d+)")
# Bounds that only a server making no progress reaches (they do not shorten the load or relax any
# check): all clients connected within SETUP_S (46 gradio_client connections on a loaded 2-core
# machine take minutes), and each clinician's first case submitted within STALL_S after the load
# time (6 slices per case; single requests were seen to queue for ~60 s under a load average of 30).
SETUP_S = float(os.environ.get("USAM_SOAK_SETUP_S", "900"))
STALL_S = float(os.environ.get("USAM_SOAK_STALL_S", "900"))


def group_of(i: int, sizes=(15, 14, 17)) -> int:
    return 1 if i < sizes[0] else (2 if i < sizes[0] + sizes[1] else 3)


def pattern(i: int, k: int, z: int, version: int, hw=(40, 40)) -> np.ndarray:
    """A label map unique to (reader, case, slice, version): what the clinician 'paints'."""
    rng = np.random.default_rng([i, k, z, version])
    lab = np.zeros(hw, np.uint8)
    y0, x0 = rng.integers(2, hw[0] - 14), rng.integers(2, hw[1] - 14)
    lab[y0:y0 + rng.integers(4, 12), x0:x0 + rng.integers(4, 12)] = 1
    lab[rng.integers(0, hw[0], 12), rng.integers(0, hw[1], 12)] = 2
    return lab


def digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes()).hexdigest()


@dataclass
class Ledger:
    """What one client was told succeeded."""
    login: str
    group: int
    last: dict = field(default_factory=dict)        # (k, z) -> digest of the last saved mask
    save_calls: Counter = field(default_factory=Counter)   # k -> acknowledged saves
    submitted: list = field(default_factory=list)    # case numbers k acknowledged as submitted
    save_ms: list = field(default_factory=list)
    submit_ms: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    finished: bool = False                           # all assigned cases submitted
    case: tuple | None = None                        # (k, n, start, end) of the open case
    z: int | None = None
    images: int = 0                                  # downloaded output images checked complete


def check_images(value, ledger: Ledger) -> None:
    """Every output image is complete: files gradio_client downloaded (like a browser would) and the
    data: URLs in the contouring tool's payload."""
    from PIL import Image

    if isinstance(value, dict):
        for v in value.values():
            check_images(v, ledger)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_images(v, ledger)
    elif isinstance(value, str) and value.lower().endswith((".png", ".webp")) and os.path.isfile(value):
        with Image.open(value) as im:
            im.load()                                # raises on a truncated or empty file
        ledger.images += 1
    elif isinstance(value, str) and value.startswith("data:image/png;base64,"):
        import base64
        import io

        with Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1], validate=True))) as im:
            im.load()                                # the contouring tool's slice image, complete
        ledger.images += 1


def _parse(info: str, zs) -> tuple | None:
    m = INFO_RE.search(info or "")
    if not m:
        return None
    return tuple(int(g) for g in m.groups())


def clinician(i: int, url: str, folder: Path, seconds: float, ledger: Ledger, start_gate: threading.Barrier,
              p_back: float = 0.15) -> None:
    """Register, log in, then save slices (mostly forward, sometimes back) and submit cases until the deadline."""
    rng = np.random.default_rng(1000 + i)
    version = Counter()
    try:
        c = client(url)
        start_gate.wait(timeout=SETUP_S)
        c.predict(STUDY_CODE, ledger.login, PASSWORD, f"Reader {i}", ledger.group, float(i % 30), "radiology",
                  api_name="/study_register")
        out = c.predict(ledger.login, PASSWORD, PRESET, api_name="/study_login")
        check_images(out, ledger)
        ledger.case, ledger.z = _parse(out[1], out[2]), val(out[2])
        aid = (out[3] or {}).get("aid")
        # bounded load after this clinician's login: at least one submitted case each, then until the
        # deadline; a hard cap stops a server that makes no progress
        deadline = time.monotonic() + seconds
        hard_stop = deadline + STALL_S
        while ledger.case is not None and (time.monotonic() < deadline or not ledger.submitted):
            if time.monotonic() > hard_stop:
                raise TimeoutError(f"{ledger.login}: no case submitted within {seconds + STALL_S:.0f} s")
            k, n, start, end = ledger.case
            z = int(ledger.z)
            version[(k, z)] += 1
            lab = pattern(i, k, z, version[(k, z)])
            payload = mask_text(lab)
            t0 = time.perf_counter()
            if z >= end:
                out = c.predict(payload, aid, PRESET, api_name="/study_submit")
                ms = (time.perf_counter() - t0) * 1000
                check_images(out, ledger)
                ledger.submit_ms.append(ms)
                ledger.last[(k, z)] = digest(lab)
                ledger.save_calls[k] += 1
                ledger.submitted.append(k)
                assert "Case submitted" in out[0], out[0]
                ledger.case, ledger.z = _parse(out[1], out[2]), val(out[2])
                aid = (out[3] or {}).get("aid")
                if ledger.case is None:
                    ledger.finished = "submitted" in str(out[1])
            else:
                back = z > start and rng.random() < p_back
                out = c.predict(payload, aid, PRESET, api_name="/study_previous" if back else "/study_next")
                ledger.save_ms.append((time.perf_counter() - t0) * 1000)
                check_images(out, ledger)
                ledger.last[(k, z)] = digest(lab)
                ledger.save_calls[k] += 1
                new = _parse(out[0], out[1])
                assert new is not None and new[0] == k, out[0]
                ledger.z = val(out[1])
                assert int(ledger.z) == (z - 1 if back else z + 1), (z, ledger.z, back)
    except Exception:
        ledger.errors.append(traceback.format_exc()[-2000:])


def run_clinicians(url: str, n: int, seconds: float, folder: Path) -> list[Ledger]:
    """n clinician threads against url for a bounded time; returns their ledgers."""
    ledgers = [Ledger(f"reader{i:02d}", group_of(i)) for i in range(n)]
    gate = threading.Barrier(n)
    threads = [threading.Thread(target=clinician, args=(i, url, folder, seconds, ledgers[i], gate), daemon=True,
                                name=f"clinician-{i}") for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, SETUP_S + seconds + STALL_S + 600 - (time.monotonic() - t0)))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        raise AssertionError(f"clinician threads did not stop: {stuck}")
    return ledgers


def percentile(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


def verify(db_url: str, ledgers: list[Ledger]) -> dict:
    """Zero lost or duplicated slices or submissions; audit and activity rows consistent with the data."""
    from sqlalchemy import func, select

    from study.db import Database
    from study.models import ActivityEvent, Assignment, AuditLog, Case, Clinician, SliceMask, Submission
    from study.reading import queue as work_order
    from study.scoring import decode_mask

    db = Database(db_url)
    problems: list[str] = []
    totals = Counter()
    try:
        with db.session() as s:
            for led in ledgers:
                user = s.scalar(select(Clinician).where(Clinician.login == led.login))
                if user is None:
                    problems.append(f"{led.login}: account missing")
                    continue
                queue = work_order(s, user)            # the order behind "Case k of n"
                by_k = {k + 1: a for k, a in enumerate(queue)}
                aids = [a.id for a in queue]
                rows = list(s.scalars(select(SliceMask).where(SliceMask.assignment_id.in_(aids)))) if aids else []
                seen = Counter((r.assignment_id, r.z) for r in rows)
                dup = [key for key, c in seen.items() if c > 1]
                if dup:
                    problems.append(f"{led.login}: duplicated slices {dup}")
                stored = {(next(k for k, a in by_k.items() if a.id == r.assignment_id), r.z): r for r in rows}
                for key, d in led.last.items():
                    r = stored.get(key)
                    if r is None:
                        problems.append(f"{led.login}: slice {key} acknowledged but lost")
                        continue
                    if digest(decode_mask(r.data, (r.height, r.width))) != d:
                        problems.append(f"{led.login}: slice {key} holds another mask than the last one saved")
                extra = set(stored) - set(led.last)
                if extra:
                    problems.append(f"{led.login}: slices never acknowledged are stored: {sorted(extra)}")
                # submissions: exactly one per acknowledged case, none else
                subs = list(s.scalars(select(Submission).where(Submission.clinician_id == user.id)))
                got = Counter(sub.assignment_id for sub in subs)
                want = Counter(by_k[k].id for k in led.submitted)
                if got != want:
                    problems.append(f"{led.login}: submissions {dict(got)} != acknowledged {dict(want)}")
                for sub in subs:
                    k = next(k for k, a in by_k.items() if a.id == sub.assignment_id)
                    arr = decode_mask(sub.data, sub.shape)
                    start = s.get(Case, s.get(Assignment, sub.assignment_id).case_id).start_slice
                    for (kk, z), d in led.last.items():
                        if kk == k and digest(arr[z - start]) != d:
                            problems.append(f"{led.login}: submission of case {k} differs at slice {z}")
                # audit log and activity consistent with the data
                for k, a in by_k.items():
                    n_audit = s.scalar(select(func.count()).select_from(AuditLog).where(
                        AuditLog.action == "save_slice", AuditLog.target == f"assignment:{a.id}"))
                    n_act = s.scalar(select(func.count()).select_from(ActivityEvent).where(
                        ActivityEvent.assignment_id == a.id, ActivityEvent.kind == "save"))
                    n_saves = s.scalar(select(func.coalesce(func.sum(SliceMask.saves), 0)).where(
                        SliceMask.assignment_id == a.id))
                    if not (n_audit == n_act == n_saves == led.save_calls.get(k, 0)):
                        problems.append(f"{led.login} case {k}: audit {n_audit}, activity {n_act}, "
                                        f"row saves {n_saves}, acknowledged {led.save_calls.get(k, 0)}")
                    n_sub_audit = s.scalar(select(func.count()).select_from(AuditLog).where(
                        AuditLog.action == "submit", AuditLog.target == f"assignment:{a.id}"))
                    if n_sub_audit != got.get(a.id, 0):
                        problems.append(f"{led.login} case {k}: {n_sub_audit} submit audit rows, {got.get(a.id, 0)} "
                                        "submissions")
                    if (a.status == "submitted") != (a.id in got):
                        problems.append(f"{led.login} case {k}: status {a.status} vs submissions {got.get(a.id, 0)}")
                for action, want_n in (("register", 1), ("login", 1)):
                    n_a = s.scalar(select(func.count()).select_from(AuditLog).where(
                        AuditLog.action == action, AuditLog.actor_id == user.id))
                    if n_a != want_n:
                        problems.append(f"{led.login}: {n_a} '{action}' audit rows, expected {want_n}")
                totals["slices"] += len(rows)
                totals["saves"] += sum(led.save_calls.values())
                totals["submissions"] += len(subs)
    finally:
        db.dispose()
    return {"problems": problems, **totals}
