"""Fixtures of the study tests: a tiny synthetic cohort on disk and a fresh SQLite study."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from study import ops
from study.cases import CaseCache
from study.db import Database
from study.service import StudyService

SHAPE = (10, 40, 40)
SPACING = (2.5, 0.8, 0.8)
START, END = 2, 7


def tiny_labels(i: int) -> np.ndarray:
    """Rectal wall ring on slices 2..7 and a tumor blob on 4..5, varying a little per case."""
    z, y, x = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    r = np.hypot(y - 20, x - 20 - (i % 3))
    lab = np.zeros(SHAPE, np.uint8)
    lab[(r >= 6) & (r <= 9) & (z >= START) & (z <= END)] = 1
    lab[(r < 6 - (i % 2)) & (z >= 4) & (z <= 5)] = 2
    return lab


def write_tiny_cohort(folder: Path, n: int = 6) -> Path:
    """n cases as NIfTI + cases.csv (case_id,image,label,start,end)."""
    from usam.volumes import Volume, canonical_affine, write_labelmap, write_volume

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        lab = tiny_labels(i)
        hu = np.where(lab > 0, 40.0, -50.0).astype(np.float32) + i
        vol = Volume(hu, SPACING, canonical_affine(SPACING), {})
        write_volume(vol, folder / f"c{i}.nii.gz")
        write_labelmap(lab, vol, folder / f"c{i}_gt.nii.gz")
        rows.append({"case_id": f"case{i:02d}", "image": f"c{i}.nii.gz", "label": f"c{i}_gt.nii.gz",
                     "start": START, "end": END})
    with open(folder / "cases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))


def make_study(tmp_path: Path, cohort: Path, group_sizes=(2, 2, 2), k: int = 3, arms=None, seed: int = 1,
               idle: float = 120.0):
    """Fresh DB + study + admin; returns (service, admin_token, study_code, study_id)."""
    db = Database(f"sqlite:///{tmp_path / 'study.db'}")
    db.migrate()
    with db.session() as s:
        st = ops.create_study(s, "test", code="CODE1", k=k, group_sizes=list(group_sizes), arms=arms or ["manual"],
                              seed=seed, idle_threshold_s=idle)
        ops.import_cases(s, st, cohort)
        ops.add_clinician(s, "admin", "admin-password", role="admin")
        sid = st.id
    svc = StudyService(db, cache=CaseCache())
    return svc, svc.login("admin", "admin-password"), "CODE1", sid


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """Cheap argon2 parameters in tests only (production keeps argon2-cffi's defaults)."""
    from argon2 import PasswordHasher

    from study import auth

    monkeypatch.setattr(auth, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory, tiny_cohort):
    """The default test study built once; each test gets a copy of the SQLite file."""
    from argon2 import PasswordHasher

    from study import auth

    saved = auth._HASHER
    auth._HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    try:
        folder = tmp_path_factory.mktemp("template")
        svc, _, _, _ = make_study(folder, tiny_cohort)
        svc.db.dispose()
    finally:
        auth._HASHER = saved
    return folder / "study.db"


@pytest.fixture
def study_env(tmp_path, _template_db):
    """(service, admin token, study code, study id) on a fresh copy of the template study."""
    shutil.copy(_template_db, tmp_path / "study.db")
    db = Database(f"sqlite:///{tmp_path / 'study.db'}")
    svc = StudyService(db, cache=CaseCache())
    return svc, svc.login("admin", "admin-password"), "CODE1", 1
