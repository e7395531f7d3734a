"""The study administrator's work on an open session: create a study, import cases, set a
reader's group, drop a reader, re-open a submitted case, close registration, the reader list,
the study's settings, the report and the export. The caller has checked the admin role."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from study import ops, planning, studies
from study.audit import audit
from study.errors import Conflict, InvalidInput, NotFound
from study.inputs import as_int, check_group
from study.models import Assignment, Clinician, Study


def create_study(s: Session, admin: Clinician, name: str, **settings) -> dict:
    """New study: settings as ops.create_study (k, group_sizes, arms, seed, ...)."""
    try:
        st = ops.create_study(s, name, actor_id=admin.id, **settings)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput("Bad study settings (numbers expected for k, group sizes, seed, thresholds).") from None
    return {"id": st.id, "code": st.code}


def import_cases(s: Session, admin: Clinician, study_id: Any, folder: str) -> int:
    """Add a folder of cases to a study and save its assignment plan; the number added."""
    st = studies.get_study(s, as_int(study_id, "study"))
    return len(ops.import_cases(s, st, folder, actor_id=admin.id))


def _reader(s: Session, clinician_id: Any) -> Clinician:
    u = s.get(Clinician, as_int(clinician_id, "clinician"))
    if u is None or u.role != "reader":
        raise NotFound("No such reader.")
    return u


def set_group(s: Session, admin: Clinician, clinician_id: Any, group: Any) -> dict:
    """Set a reader's experience group; claims their slot if they had none."""
    u = _reader(s, clinician_id)
    g = check_group(group)
    held = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.clinician_id == u.id))
    if held and u.group != g:
        raise Conflict("This reader already holds assignments in another group; drop and re-register.")
    u.group = g
    audit(s, admin.id, "set_group", f"clinician:{u.id}", group=g)
    if not held and u.study_id:
        planning.claim_slot(s, s.get(Study, u.study_id), u)
    return {"id": u.id, "group": g}


def drop_reader(s: Session, admin: Clinician, clinician_id: Any) -> dict:
    """Drop a reader: their unfinished cases go to active readers of their group."""
    u = _reader(s, clinician_id)
    if u.study_id is None:
        raise NotFound("No such reader.")
    m = planning.drop_reader(s, s.get(Study, u.study_id), u, admin.id)
    return {"reassigned": sum(v is not None for v in m.values()), "unplaced": sum(v is None for v in m.values())}


def reopen(s: Session, admin: Clinician, assignment_id: Any) -> dict:
    """Let a reader revise a submitted case; the next submission is a new revision row."""
    a = s.get(Assignment, as_int(assignment_id, "assignment"))
    if a is None or a.status != "submitted":
        raise NotFound("No submitted assignment with this id.")
    if s.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.clinician_id == a.clinician_id, Assignment.status == "open")):
        raise Conflict("The reader has another case open; re-open after they submit it.")
    a.status = "open"
    audit(s, admin.id, "reopen", f"assignment:{a.id}")
    return {"id": a.id, "status": a.status}


def close_registration(s: Session, admin: Clinician, study_id: int | None) -> dict:
    """Hand the cases of never-claimed reader slots to the registered readers."""
    placed, unplaced = planning.reassign_unclaimed(s, studies.get_study(s, study_id), admin.id)
    return {"reassigned": placed, "unplaced": unplaced}


def readers(s: Session, study_id: int | None) -> list[dict]:
    """The study's accounts with their progress."""
    st = studies.get_study(s, study_id)
    out = []
    for u in s.scalars(select(Clinician).where(Clinician.study_id == st.id).order_by(Clinician.id)):
        rows = list(s.scalars(select(Assignment).where(Assignment.clinician_id == u.id,
                                                       Assignment.status != "reassigned")))
        out.append({"id": u.id, "login": u.login, "name": u.name, "group": u.group, "status": u.status,
                    "years": u.years_experience, "specialty": u.specialty,
                    "done": sum(a.status == "submitted" for a in rows), "assigned": len(rows),
                    "simulated": u.simulated})
    return out


def study_info(s: Session, study_id: int | None) -> dict:
    """Settings of a study incl. its registration code."""
    st = studies.get_study(s, study_id)
    return {"id": st.id, "name": st.name, "code": st.code, "k": st.k, "arms": st.arms,
            "group_sizes": st.group_sizes, "seed": st.seed, "idle_threshold_s": st.idle_threshold_s,
            "nsd_tolerance_mm": st.nsd_tolerance_mm, "is_demo": st.is_demo,
            "cases": len(studies.study_cases(s, st.id))}


def report(s: Session, study_id: int | None):
    """Table 3, per-case and reader-level views and figures."""
    from study.report import build_report

    return build_report(s, studies.get_study(s, study_id))


def start_model_runs(s: Session, admin: Clinician, study_id: int | None) -> int:
    """Audit a model run of a study; its id."""
    sid = studies.get_study(s, study_id).id
    audit(s, admin.id, "run_models", f"study:{sid}")
    return sid


def export_csv(s: Session, admin: Clinician, path: str | Path, study_id: int | None) -> Path:
    """Long-format CSV of every scored annotation."""
    from study.export import export_long_csv

    st = studies.get_study(s, study_id)
    audit(s, admin.id, "export_csv", f"study:{st.id}")
    return export_long_csv(s, st, Path(path))
