"""Server time of the study's Save & next (and of resume), on full-size phantom cases.

    python -m app.study_bench [--cases 2] [--steps 60] [--size full] [--json out.json]

A fresh SQLite study in a temporary folder, one reader, the contouring tool's handlers called
as the page calls them (StudyTab.next_slice with the mask text the page sends: here the
case's reference label map, so the masks have realistic content). Times are the handler's
wall time on this machine (no browser, no network; Gradio adds its own queue overhead).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def run(cases: int = 2, steps: int = 60, size: str = "full", folder: Path | None = None) -> dict:
    """Save & next / resume timings (ms) on a fresh study of `cases` generated phantoms."""
    from study import ops
    from study.cases import CaseCache
    from study.db import Database
    from study.masks import encode_labels
    from study.service import StudyService
    from usam.phantom import generate_cohort

    from app.study_tab import StudyTab

    tmp = Path(folder or tempfile.mkdtemp(prefix="usam_study_bench_"))
    cohort = tmp / f"cohort_{size}_{cases}"
    if not (cohort / "manifest.json").exists():
        generate_cohort(cohort, cases=cases, seed=11, size=size)
    for f in tmp.glob("bench.db*"):                   # a fresh study each run (the cohort is kept)
        f.unlink()
    db = Database(f"sqlite:///{tmp / 'bench.db'}")
    db.migrate()
    with db.session() as s:
        st = ops.create_study(s, "bench", code="BENCH", k=1, group_sizes=[1, 1, 1], arms=["manual"], seed=1)
        ops.import_cases(s, st, cohort)
    svc = StudyService(db, cache=CaseCache())
    svc.register("BENCH", "bench.reader", "bench-reader-pass-9", group=1)
    tab = StudyTab(svc, size)
    tab._demo_ready = True
    preset = "Abdomen (400/40)"

    t0 = time.perf_counter()
    token, cur = tab.login("bench.reader", "bench-reader-pass-9", preset)[:2]
    login_ms = (time.perf_counter() - t0) * 1000
    lc = svc.cache.get(*_paths(svc, cur["aid"]))
    save_next, nav_only = [], []
    for i in range(steps):
        z = cur["z"]
        text = encode_labels(lc.labels[z])           # what the page sends for a painted slice
        t0 = time.perf_counter()
        out = tab.next_slice(token, cur, text, cur["aid"], preset)
        save_next.append((time.perf_counter() - t0) * 1000)
        cur = out[0]
        if cur["z"] == cur["end"]:                    # back to the start of the range, keep saving
            cur = tab.goto(token, cur, None, cur["aid"], cur["start"], preset)[0]
        if i % 5 == 0:                                # a look without edits: nothing sent
            t0 = time.perf_counter()
            cur = tab.goto(token, cur, None, cur["aid"], cur["z"], preset)[0]
            nav_only.append((time.perf_counter() - t0) * 1000)
    # resume: a new session of the same reader opens the case at its last slice
    t0 = time.perf_counter()
    tab.login("bench.reader", "bench-reader-pass-9", preset)
    resume_ms = (time.perf_counter() - t0) * 1000
    return {"size": size, "slice": [cur["h"], cur["w"]], "steps": steps,
            "save_next_ms": {"p50": statistics.median(save_next), "p95": _pct(save_next, 95),
                             "max": max(save_next), "n": len(save_next)},
            "look_only_ms": {"p50": statistics.median(nav_only), "p95": _pct(nav_only, 95)},
            "login_ms": login_ms, "resume_login_ms": resume_ms,
            "note": "handler wall time; login includes argon2 password hashing (default cost)"}


def _paths(svc, aid: int):
    from study.models import Assignment, Case

    with svc.db.session() as s:
        case = s.get(Case, s.get(Assignment, aid).case_id)
        return case.volume_path, case.gt_path, case.gt_sha256


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--size", default="full", choices=["small", "full"])
    p.add_argument("--folder", type=Path, default=None, help="work folder (cohort cached there)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    res = run(a.cases, a.steps, a.size, a.folder)
    s = res["save_next_ms"]
    print(f"slice {res['slice'][0]}x{res['slice'][1]} · Save & next over {s['n']} saves: p50 {s['p50']:.0f} ms · "
          f"p95 {s['p95']:.0f} ms · max {s['max']:.0f} ms (target p95 <= 300 ms) · look without edits p50 "
          f"{res['look_only_ms']['p50']:.0f} ms · login {res['login_ms']:.0f} ms · resume login "
          f"{res['resume_login_ms']:.0f} ms")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
