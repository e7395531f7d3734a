"""Trusted study operations on an open DB session (used by the service after its role checks,
by the CLI on the server and by the simulator): study set-up, case import, accounts, the newest
submissions, the demo study. Reading plans and slots: study.planning."""
from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from study.audit import audit
from study.auth import hash_password
from study.cases import CaseSpec, case_record, read_specs
from study.errors import Conflict, InvalidInput
from study.inputs import check_group, check_years
from study.logins import check_login, clashing_login
from study.models import Assignment, Case, Clinician, Study, Submission
from study.passwords import check_password
from study.planning import claim_slot, plan_assignments
from study.studies import study_cases

CLINICIAN_ARMS = ("manual", "usam_p", "usam_b", "ai_edit")
MODEL_ARMS = ("usam", "usam_p", "usam_b")
ALL_ARMS = CLINICIAN_ARMS + ("usam",)


def new_study_code() -> str:
    """A registration code that is hard to guess (the admin hands it to the clinicians)."""
    return secrets.token_hex(4).upper()


def create_study(s: Session, name: str, code: str | None = None, k: int = 10,
                 group_sizes: list[int] | tuple[int, ...] = (15, 14, 17), arms: list[str] | None = None,
                 seed: int = 0, idle_threshold_s: float = 120.0, nsd_tolerance_mm: float = 2.0,
                 is_demo: bool = False, actor_id: int | None = None) -> Study:
    """Insert a study after validating its settings."""
    arms = list(arms or ["manual"])
    bad = [a for a in arms if a not in CLINICIAN_ARMS]
    if bad:
        raise InvalidInput(f"Unknown arm(s) {bad}; choose from {list(CLINICIAN_ARMS)}.")
    if not 1 <= int(k) <= 1000:
        raise InvalidInput("k must be between 1 and 1000.")
    sizes = [int(x) for x in group_sizes]
    if len(sizes) != 3 or min(sizes) < 1:
        raise InvalidInput("Give three group sizes of at least 1 reader each, e.g. 15,14,17.")
    if not 1 <= float(idle_threshold_s) <= 3600:
        raise InvalidInput("The idle threshold must be between 1 and 3600 s.")
    code = (code or new_study_code()).strip()
    if s.scalar(select(Study).where(Study.code == code)):
        raise Conflict(f"Study code {code!r} is taken.")
    st = Study(name=name, code=code, k=int(k), group_sizes=sizes, arms=arms, seed=int(seed),
               idle_threshold_s=float(idle_threshold_s), nsd_tolerance_mm=float(nsd_tolerance_mm),
               is_demo=is_demo)
    s.add(st)
    s.flush()
    audit(s, actor_id, "create_study", f"study:{st.id}", name=name, k=int(k), group_sizes=sizes, arms=arms)
    return st


def import_cases(s: Session, study: Study, folder: str | Path | None = None,
                 specs: list[CaseSpec] | None = None, actor_id: int | None = None) -> list[Case]:
    """Add cases (GT hashed and locked) and save the assignment plan; refused once readers exist."""
    if s.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.study_id == study.id, Assignment.clinician_id.is_not(None))):
        raise Conflict("Readers have started; cases can no longer be added to this study.")
    specs = specs if specs is not None else read_specs(folder)
    if not specs:
        raise InvalidInput("No cases found.")
    records = [case_record(sp) for sp in specs]        # read everything before writing anything
    existing = s.scalar(select(func.count()).select_from(Case).where(Case.study_id == study.id)) or 0
    cases = []
    for i, rec in enumerate(records):
        if s.scalar(select(Case).where(Case.study_id == study.id, Case.key == rec["key"])):
            raise Conflict(f"Case {rec['key']} is already in the study.")
        c = Case(study_id=study.id, position=existing + i, **rec)
        s.add(c)
        cases.append(c)
    s.flush()
    audit(s, actor_id, "import_cases", f"study:{study.id}", n=len(cases), keys=[c.key for c in cases])
    plan_assignments(s, study)
    return cases


def add_clinician(s: Session, login: str, password: str, role: str = "reader", name: str = "",
                  group: int | None = None, years: float | None = None, specialty: str = "",
                  study: Study | None = None, simulated: bool = False) -> Clinician:
    """Insert a clinician (argon2 hash) and, for a reader with a group, claim a slot."""
    login = check_login(login)               # canonical (NFKC + casefold), one alphabet
    check_password(password, login)           # long enough, not blank, not a common password
    if role not in ("reader", "admin"):
        raise InvalidInput("Role is reader or admin.")
    group = None if group is None else check_group(group)
    years = check_years(years)
    if s.scalar(select(Clinician).where(Clinician.login == login)):
        raise Conflict(f"The login {login!r} is taken.")
    clash = clashing_login(login, list(s.scalars(select(Clinician.login))))
    if clash is not None:
        raise Conflict("This login looks like an existing one; choose a clearly different login.")
    user = Clinician(login=login, password_hash=hash_password(password), role=role, name=str(name)[:200],
                     group=group, years_experience=years,
                     specialty=str(specialty)[:200], study_id=study.id if study else None, simulated=simulated)
    s.add(user)
    s.flush()
    audit(s, user.id, "register", f"clinician:{user.id}", role=role, group=group)
    if study is not None and role == "reader" and group is not None:
        claim_slot(s, study, user)
    return user


def latest_submissions(s: Session, study_id: int) -> list[Submission]:
    """The newest revision of every scored annotation of a study (model runs included)."""
    rows = list(s.scalars(select(Submission).where(Submission.study_id == study_id).order_by(Submission.id)))
    newest: dict[tuple, Submission] = {}
    for r in rows:
        key = ("a", r.assignment_id) if r.assignment_id is not None else ("m", r.arm, r.case_id)
        if key not in newest or r.revision >= newest[key].revision:
            newest[key] = r
    return list(newest.values())


def ensure_admin(s: Session, login: str = "admin", password: str | None = None) -> tuple[Clinician, str | None]:
    """The admin account, created if missing; a generated password is returned once (never logged)."""
    u = s.scalar(select(Clinician).where(Clinician.role == "admin").order_by(Clinician.id))
    if u is not None:
        return u, None
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    u = add_clinician(s, login, password, role="admin", name="Study administrator")
    return u, password if generated else None


def ensure_demo_study(db, size: str | None = None, code: str = "DEMO") -> tuple[int, str | None]:
    """The newest study, or a demo study of 20 phantom cases (generated and cached on first use).

    Size (default), arms, admin password and data folder come from db.settings.
    Returns (study id, path of a file holding the generated admin password or None)."""
    from study.cases import demo_cohort

    settings = db.settings
    with db.session() as s:
        st = s.scalar(select(Study).order_by(Study.id.desc()))
        if st is not None and study_cases(s, st.id):
            return st.id, None
    folder = demo_cohort(size, settings=settings)   # slow part outside any transaction
    pw_file = None
    with db.session() as s:
        st = s.scalar(select(Study).order_by(Study.id.desc()))
        if st is None:
            st = create_study(s, "Demo observer study (phantom cases)", code=code, is_demo=True,
                              arms=list(settings.demo_arms))
        if not study_cases(s, st.id):
            import_cases(s, st, folder)
        admin, pw = ensure_admin(s, password=settings.admin_password)
        if pw:
            pw_file = settings.data_folder() / "admin_password.txt"
            pw_file.write_text(f"login: {admin.login}\npassword: {pw}\n")
            pw_file.chmod(0o600)
        return st.id, str(pw_file) if pw_file else None
