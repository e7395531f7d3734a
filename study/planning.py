"""Reading plans in the database (trusted, on an open DB session): the seeded plan written when cases
are imported, a reader's slot claimed on registration (a new slot past the planned group size),
and a drop-out's or the unclaimed slots' cases re-assigned to active readers."""
from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from study import assignment as asg
from study.audit import audit
from study.errors import Conflict
from study.inputs import check_group
from study.models import Assignment, Clinician, Study
from study.studies import study_cases


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
