"""Which study a call works on and its cases in their fixed order (lookups on an open DB session)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from study.errors import NotFound
from study.models import Case, Study


def get_study(s: Session, study_id: int | None = None) -> Study:
    """A study by id, or the newest one."""
    st = s.get(Study, study_id) if study_id else s.scalar(select(Study).order_by(Study.id.desc()))
    if st is None:
        raise NotFound("No study is set up yet (python -m study import-cases DIR, or open the study tab).")
    return st


def study_cases(s: Session, study_id: int) -> list[Case]:
    """Cases of a study in their fixed order."""
    return list(s.scalars(select(Case).where(Case.study_id == study_id).order_by(Case.position)))
