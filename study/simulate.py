"""Simulated readers: ground truth perturbed realistically (boundary noise, shifts, missed and
extra tumor, skipped end slices) and realistic times, driven through the same StudyService calls
as real clinicians (register, login, open, save every slice, heartbeats, submit)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from scipy import ndimage

from study import studies
from study.cases import CACHE, CaseCache
from study.db import Database
from study.errors import InvalidInput
from study.models import Case, Clinician
from study.service import StudyService


@dataclass(frozen=True)
class ReaderSkill:
    """Error rates and speed of a simulated experience group."""
    boundary: float        # probability of a 1-px dilation/erosion of a class on a slice
    shift_px: float        # std of a whole-slice shift in pixels
    miss_tumor: float      # probability that a tumor slice is drawn as normal wall
    extra_tumor: float     # probability that a wall-only slice gets a false tumor patch
    skip_end: float        # probability to leave the first or last slice empty
    s_per_slice: float     # mean seconds per slice (lognormal)
    breaks: float          # probability of a 5-20 min break during a case


# ratios of the paper's per-group times (166 : 141 : 111) and Dice ordering (G3 > G1 > G2)
SKILLS = {1: ReaderSkill(0.5, 1.2, 0.25, 0.12, 0.3, 40.0, 0.15),
          2: ReaderSkill(0.6, 1.5, 0.30, 0.15, 0.35, 34.0, 0.15),
          3: ReaderSkill(0.3, 0.8, 0.12, 0.06, 0.15, 27.0, 0.10)}


def perturb_slice(gt: np.ndarray, skill: ReaderSkill, rng: np.random.Generator) -> np.ndarray:
    """One slice of a simulated reader: the ground truth with realistic errors."""
    out = gt.copy()
    if (out == 2).any() and rng.random() < skill.miss_tumor:
        out[out == 2] = 1                                   # tumor read as thickened wall
    if (out == 1).any() and not (out == 2).any() and rng.random() < skill.extra_tumor:
        wall = np.argwhere(out == 1)
        cy, cx = wall[rng.integers(len(wall))]
        yy, xx = np.ogrid[:out.shape[0], :out.shape[1]]
        out[((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(3, 8) ** 2) & (out == 1)] = 2
    for c in (1, 2):
        if (out == c).any() and rng.random() < skill.boundary:
            m = out == c
            if rng.random() < 0.5:
                grown = ndimage.binary_dilation(m) & (out == 0)
                out[grown] = c
            else:
                out[m & ~ndimage.binary_erosion(m)] = 0
    if skill.shift_px > 0:
        dy, dx = np.round(rng.normal(0, skill.shift_px, 2)).astype(int)
        out = np.roll(out, (dy, dx), axis=(0, 1))
    return out.astype(np.uint8)


class SimClock:
    """Scripted server clock: the simulator moves time on, the service stamps events with it."""

    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.t += timedelta(seconds=float(seconds))


def simulate(db: Database, study_id: int | None = None, readers: int = 46, groups: tuple[int, ...] = (15, 14, 17),
             seed: int = 0, cache: CaseCache | None = None, max_cases_per_reader: int | None = None,
             progress=None) -> dict:
    """Register `groups` simulated readers and let each annotate all assigned cases; returns counts."""
    if sum(groups) != readers or len(groups) != 3:
        raise InvalidInput(f"--groups must be three sizes adding up to --readers ({readers}).")
    cache = cache or CACHE
    rng = np.random.default_rng(seed)
    with db.session() as s:
        st = studies.get_study(s, study_id)
        code, sid = st.code, st.id
        taken = {u.login for u in s.query(Clinician).filter(Clinician.login.like(f"sim{sid}_%"))}
    clock = SimClock(datetime(2025, 1, 6, 8, 0, tzinfo=timezone.utc))
    svc = StudyService(db, cache=cache, clock=clock)
    submitted = saves = 0
    for g, n in enumerate(groups, start=1):
        for i in range(n):
            login = f"sim{sid}_g{g}_{i:02d}"
            password = f"sim-{seed}-{login}"
            if login not in taken:
                svc.register(code, login, password, name=f"Simulated reader G{g} #{i + 1}", group=g,
                             years=float(rng.integers(1, 6) * g), specialty="simulated")
                with db.session() as s:
                    s.query(Clinician).filter(Clinician.login == login).update({"simulated": True})
            token = svc.login(login, password, address="simulator")
            done = 0
            while max_cases_per_reader is None or done < max_cases_per_reader:
                cv = svc.next_case(token)
                if cv is None:
                    break
                submitted_, saves_ = _annotate(svc, db, token, cv, SKILLS[g], rng, clock, cache)
                submitted += submitted_
                saves += saves_
                done += 1
                clock.advance(rng.uniform(60, 3600))        # between cases
            svc.logout(token)
            clock.advance(86400)
            if progress:
                progress(f"group {g} reader {i + 1}/{n}: {done} cases")
    return {"readers": readers, "submitted": submitted, "slices_saved": saves}


def _annotate(svc: StudyService, db: Database, token: str, cv, skill: ReaderSkill, rng: np.random.Generator,
              clock: SimClock, cache: CaseCache) -> tuple[int, int]:
    """One simulated case: open, per slice work + heartbeat + save, an optional break, submit."""
    with db.session() as s:   # the simulator (not the reader) looks up the truth it perturbs
        from study.models import Assignment
        case = s.get(Case, s.get(Assignment, cv.assignment_id).case_id)
        paths = (case.volume_path, case.gt_path, case.gt_sha256)
    gt = cache.get(*paths).labels
    svc.open_case(token, cv.assignment_id)
    break_at = rng.integers(cv.start, cv.end + 1) if rng.random() < skill.breaks else None
    saves = 0
    for z in range(cv.start, cv.end + 1):
        secs = rng.lognormal(np.log(skill.s_per_slice), 0.4)
        clock.advance(secs / 2)
        svc.heartbeat(token, cv.assignment_id, visible=True, had_input=True, z=z)
        clock.advance(secs / 2)
        mask = perturb_slice(gt[z], skill, rng)
        if z in (cv.start, cv.end) and rng.random() < skill.skip_end:
            mask[:] = 0
        svc.save_slice(token, cv.assignment_id, z, mask, source="manual" if mask.any() else "empty")
        saves += 1
        if break_at == z:
            svc.heartbeat(token, cv.assignment_id, visible=False, had_input=False)
            clock.advance(rng.uniform(300, 1200))
            svc.heartbeat(token, cv.assignment_id, visible=True, had_input=True)
    clock.advance(rng.uniform(5, 30))
    svc.submit(token, cv.assignment_id)
    return 1, saves
