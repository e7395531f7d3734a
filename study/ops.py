"""Trusted study operations on an open DB session (used by the service after its role checks,
by the CLI on the server and by the simulator): study set-up, case import, planning, slots,
drop-outs, audit."""
from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from study import assignment as asg
from study.auth import hash_password
from study.cases import CaseSpec, case_record, read_specs
from study.errors import Conflict, InvalidInput, NotFound
from study.inputs import check_group, check_years
from study.logins import check_login, clashing_login
from study.models import Assignment, AuditLog, Case, Clinician, Study, Submission
from study.passwords import check_password

CLINICIAN_ARMS = ("manual", "usam_p", "usam_b", "ai_edit")
MODEL_ARMS = ("usam", "usam_p", "usam_b")
ALL_ARMS = CLINICIAN_ARMS + ("usam",)


def audit(s: Session, actor_id: int | None, action: str, target: str = "", **detail) -> None:
    """Append an audit row (never pass passwords or tokens in detail)."""
    s.add(AuditLog(actor_id=actor_id, action=action, target=target, detail=detail))


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


def study_cases(s: Session, study_id: int) -> list[Case]:
    """Cases of a study in their fixed order."""
    return list(s.scalars(select(Case).where(Case.study_id == study_id).order_by(Case.position)))


def plan_assignments(s: Session, study: Study) -> int:
    """(Re)write the seeded cyclic plan (unclaimed slots only exist before any reader joins)."""
    cases = study_cases(s, study.id)
    for a in s.scalars(select(Assignment).where(Assignment.study_id == study.id)):
        s.delete(a)
    s.flush()
    slots = asg.plan_study(len(cases), study.group_sizes, study.k, study.seed, study.arms)
    n = 0
    for sl in slots:
        for order, ci in enumerate(sl.cases):
            s.add(Assignment(study_id=study.id, arm=sl.arm, group=sl.group, slot=sl.slot, order=order,
                             case_id=cases[ci].id))
            n += 1
    s.flush()
    audit(s, None, "plan_assignments", f"study:{study.id}", n=n, seed=study.seed, k=study.k)
    return n


def claim_slot(s: Session, study: Study, user: Clinician) -> int:
    """Give a reader of a known group the lowest free slot of that group (in every arm);
    late registrations past the planned group size get a new slot continuing the cycle.

    Safe under concurrent registrations: the study row is locked for the rest of the
    transaction (SELECT ... FOR NO KEY UPDATE on PostgreSQL: it does not conflict with the key
    share lock that inserting the clinician already took through the foreign key, so no
    deadlock; SQLite ignores it and lets one writer in at a time), and the claim itself is one
    conditional UPDATE that never takes rows another reader holds. (Without the lock,
    PostgreSQL let two readers claim the same slot and the first one was left without cases.)"""
    check_group(user.group)
    s.execute(select(Study.id).where(Study.id == study.id).with_for_update(key_share=True))
    if s.scalar(select(func.count()).select_from(Assignment).where(Assignment.clinician_id == user.id)):
        return -1
    for _ in range(20):
        free = s.scalar(select(func.min(Assignment.slot)).where(
            Assignment.study_id == study.id, Assignment.group == user.group, Assignment.clinician_id.is_(None),
            Assignment.status == "pending", Assignment.reassigned_from.is_(None)))
        if free is None:
            free = _add_slot(s, study, user.group)
        claimed = s.execute(update(Assignment).where(
            Assignment.study_id == study.id, Assignment.group == user.group, Assignment.slot == free,
            Assignment.clinician_id.is_(None)).values(clinician_id=user.id)
            .execution_options(synchronize_session=False)).rowcount
        if claimed:
            break
    else:
        raise Conflict("No reader slot could be claimed; please try again.")
    audit(s, user.id, "claim_slot", f"study:{study.id}", group=user.group, slot=int(free))
    return int(free)


def _add_slot(s: Session, study: Study, group: int) -> int:
    cases = study_cases(s, study.id)
    if not cases:
        raise Conflict("The study has no cases yet.")
    n_slots = (s.scalar(select(func.max(Assignment.slot)).where(
        Assignment.study_id == study.id, Assignment.group == group)) or -1) + 1
    planned = study.group_sizes[group - 1]
    r = asg.reads_per_group(study.k, len(study.group_sizes))
    for arm in study.arms:
        sl = asg.plan_group(len(cases), planned, r, study.seed, arm, group,
                            extra_slots=n_slots - planned + 1)[n_slots]
        for order, ci in enumerate(sl.cases):
            s.add(Assignment(study_id=study.id, arm=arm, group=group, slot=n_slots, order=order,
                             case_id=cases[ci].id))
    s.flush()
    return n_slots


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


def drop_reader(s: Session, study: Study, user: Clinician, actor_id: int | None = None) -> dict[int, int | None]:
    """Mark a reader dropped and hand their unsubmitted assignments to active readers."""
    user.status = "dropped"
    open_items = list(s.scalars(select(Assignment).where(
        Assignment.clinician_id == user.id, Assignment.status.in_(("pending", "open")))))
    mapping = reassign_items(s, study, open_items, user.group or 1)
    audit(s, actor_id, "drop_reader", f"clinician:{user.id}", reassigned=len(open_items),
          unplaced=sum(v is None for v in mapping.values()))
    return mapping


def reassign_items(s: Session, study: Study, items: list[Assignment], group: int) -> dict[int, int | None]:
    """Re-assign assignments (drop-out or unclaimed slots) via assignment.reassign; new rows,
    the old ones marked 'reassigned' (their saved slices stay for the record)."""
    readers = list(s.scalars(select(Clinician).where(
        Clinician.study_id == study.id, Clinician.role == "reader", Clinician.status == "active",
        Clinician.group.is_not(None))))
    cands = []
    for r in readers:
        rows = list(s.scalars(select(Assignment).where(Assignment.clinician_id == r.id,
                                                       Assignment.status != "reassigned")))
        load = sum(a.status in ("pending", "open") for a in rows)
        cands.append(asg.Candidate(r.id, r.group, load, frozenset((a.arm, a.case_id) for a in rows)))
    mapping: dict[int, int | None] = {}
    by_arm: dict[str, list[Assignment]] = {}
    for a in items:
        by_arm.setdefault(a.arm, []).append(a)
    for arm, rows in by_arm.items():
        arm_cands = [asg.Candidate(c.reader_id, c.group, c.load,
                                   frozenset(cid for (ar, cid) in c.cases if ar == arm)) for c in cands]
        m = asg.reassign([(a.id, a.case_id) for a in rows], group, arm_cands)
        mapping.update(m)
        for a in rows:
            a.status = "reassigned"
            target = m[a.id]
            if target is None:
                continue
            reader = s.get(Clinician, target)
            last = s.scalar(select(func.max(Assignment.order)).where(Assignment.clinician_id == target)) or 0
            s.add(Assignment(study_id=study.id, arm=arm, group=reader.group, slot=-1 - a.id, order=last + 1,
                             case_id=a.case_id, clinician_id=target, reassigned_from=a.id))
    s.flush()
    return mapping


def reassign_unclaimed(s: Session, study: Study, actor_id: int | None = None) -> tuple[int, int]:
    """Close registration: the unclaimed slots' cases go to the registered readers.

    Returns (placed, unplaced); a case stays unplaced when every reader already holds it."""
    placed = unplaced = 0
    for g in (1, 2, 3):
        rows = list(s.scalars(select(Assignment).where(
            Assignment.study_id == study.id, Assignment.group == g, Assignment.clinician_id.is_(None),
            Assignment.status == "pending").order_by(Assignment.slot, Assignment.order)))
        m = reassign_items(s, study, rows, g)
        placed += sum(v is not None for v in m.values())
        unplaced += sum(v is None for v in m.values())
    audit(s, actor_id, "reassign_unclaimed", f"study:{study.id}", placed=placed, unplaced=unplaced)
    return placed, unplaced


def get_study(s: Session, study_id: int | None = None) -> Study:
    """A study by id, or the newest one."""
    st = s.get(Study, study_id) if study_id else s.scalar(select(Study).order_by(Study.id.desc()))
    if st is None:
        raise NotFound("No study is set up yet (python -m study import-cases DIR, or open the study tab).")
    return st


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
