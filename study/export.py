"""Exports: long-format CSV of every scored annotation (MRMC tools), NIfTI masks with the case
affine, and a consistent SQLite backup through SQLite's backup API."""
from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from study import ops, studies
from study.cases import CACHE, CaseCache
from study.db import Database
from study.errors import InvalidInput
from study.models import Study
from study.report import load_records
from study.scoring import decode_mask

LONG_COLUMNS = ("reader", "case", "group", "arm", "metric", "value")
SKIP = {"submission", "reader", "case", "group", "arm", "kind", "revision"}


def long_rows(records: list[dict]) -> list[dict]:
    """Long format: one row per (annotation, metric); model runs get reader 'model:<arm>'."""
    out = []
    for r in records:
        reader = r["reader"] if r["reader"] else f"model:{r['arm']}"
        for k, v in r.items():
            if k in SKIP or v is None:
                continue
            out.append({"reader": reader, "case": r["case"], "group": r["group"] if r["group"] else "",
                        "arm": r["arm"], "metric": k, "value": v})
    return out


def export_long_csv(s: Session, study: Study, path: Path) -> Path:
    """Write the long-format CSV (reader, case, group, arm, metric, value)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = long_rows(load_records(s, study))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LONG_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def export_nifti(s: Session, study: Study, out_dir: Path, cache: CaseCache | None = None) -> list[Path]:
    """One label map per scored annotation, full case extent, written with the case's own affine."""
    from usam.volumes import write_labelmap

    cache = cache or CACHE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = {c.id: c for c in studies.study_cases(s, study.id)}
    logins = {}
    paths = []
    for sub in ops.latest_submissions(s, study.id):
        case = cases[sub.case_id]
        lc = cache.get(case.volume_path, case.gt_path, case.gt_sha256)
        full = np.zeros(lc.labels.shape, np.uint8)
        full[case.start_slice:case.end_slice + 1] = decode_mask(sub.data, sub.shape)
        if sub.clinician_id not in logins:
            from study.models import Clinician
            u = s.get(Clinician, sub.clinician_id) if sub.clinician_id else None
            logins[sub.clinician_id] = u.login if u else f"model-{sub.arm}"
        who = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in logins[sub.clinician_id])
        p = out_dir / f"{case.key}__{who}__{sub.arm}__r{sub.revision}.nii.gz"
        paths.append(Path(write_labelmap(full, lc.volume, p)))
    return paths


def backup_sqlite(db: Database, out: str | Path) -> Path:
    """Consistent copy of a live SQLite study database (safe while clinicians keep saving)."""
    if not db.is_sqlite:
        raise InvalidInput("Backups via the SQLite backup API need an SQLite database; use pg_dump for PostgreSQL.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        raise InvalidInput(f"{out} exists; choose a new file name.")
    raw = db.engine.raw_connection()
    try:
        dst = sqlite3.connect(str(out))
        try:
            raw.driver_connection.backup(dst)
        finally:
            dst.close()
    finally:
        raw.close()
    return out
