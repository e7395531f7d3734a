"""Assignment engine: seeded cyclic plans (every case >= k reads, balanced over the groups),
per-reader random order, and re-assignment of a drop-out's unfinished work. Pure functions."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from study.errors import InvalidInput

ARM_INDEX = {"manual": 0, "usam_p": 1, "usam_b": 2, "ai_edit": 3, "usam": 4}


@dataclass(frozen=True)
class Slot:
    """One reader's place in a group's plan: the case indices in the reader's own order."""
    arm: str
    group: int
    slot: int
    cases: tuple[int, ...]


def reads_per_group(k: int, n_groups: int = 3) -> int:
    """Reads of every case within each group so that the groups together give >= k."""
    return max(1, math.ceil(k / n_groups))


def _rng(seed: int, arm: str, group: int) -> np.random.Generator:
    # one independent stream per (seed, arm, group): adding an arm never changes another's plan
    return np.random.default_rng([int(seed), ARM_INDEX.get(arm, 9), int(group)])


def plan_group(n_cases: int, n_readers: int, reads_per_case: int, seed: int, arm: str = "manual",
               group: int = 1, min_per_reader: int = 0, extra_slots: int = 0) -> list[Slot]:
    """Cyclic plan for one group: readers take consecutive runs of a seeded case cycle.

    Reader i gets the next q_i cases of the cycle (q_i differ by at most one), so each case is
    read reads_per_case times (or once more when min_per_reader forces more reads). Slots past
    n_readers (late registrations) continue the cycle with the typical run length."""
    if n_cases < 1:
        raise InvalidInput("The study has no cases.")
    if n_readers < 1:
        raise InvalidInput(f"Group {group} needs at least one reader.")
    total = max(reads_per_case * n_cases, n_readers * min_per_reader)
    base, extra = divmod(total, n_readers)
    counts = [base + (1 if i < extra else 0) for i in range(n_readers)]
    if counts[0] > n_cases:
        need = math.ceil(total / n_cases)
        raise InvalidInput(f"Group {group}: {n_readers} readers cannot give {reads_per_case} reads of "
                           f"each of {n_cases} cases without repeats; plan at least {need} readers.")
    rng = _rng(seed, arm, group)
    cycle = rng.permutation(n_cases)
    typical = max(1, min(n_cases, round(total / n_readers)))
    counts += [typical] * extra_slots
    slots, pos = [], 0
    for i, c in enumerate(counts):
        cases = [int(cycle[(pos + j) % n_cases]) for j in range(c)]
        pos += c
        order = rng.permutation(len(cases))  # per-reader randomised order
        slots.append(Slot(arm, group, i, tuple(cases[j] for j in order)))
    return slots


def plan_study(n_cases: int, group_sizes: list[int], k: int, seed: int,
               arms: list[str] = ("manual",), min_per_reader: int = 0) -> list[Slot]:
    """Full plan: for every clinician arm and group, a cyclic group plan (see plan_group)."""
    r = reads_per_group(k, len(group_sizes))
    out: list[Slot] = []
    for arm in arms:
        for g, n in enumerate(group_sizes, start=1):
            out += plan_group(n_cases, n, r, seed, arm, g, min_per_reader)
    return out


def reads_per_case(slots: list[Slot], n_cases: int) -> np.ndarray:
    """(n_groups, n_cases) read counts of a plan (for checks and the progress view)."""
    groups = sorted({s.group for s in slots})
    counts = np.zeros((len(groups), n_cases), dtype=int)
    for s in slots:
        for c in s.cases:
            counts[groups.index(s.group), c] += 1
    return counts


@dataclass(frozen=True)
class Candidate:
    """A reader who may take over work: id, group, current open load and cases already held."""
    reader_id: int
    group: int
    load: int
    cases: frozenset


def reassign(items: list[tuple[int, int]], group: int, candidates: list[Candidate]) -> dict[int, int | None]:
    """Map each unfinished (item_id, case) of a drop-out to an active reader, or None.

    Same group first (keeps the groups balanced), least loaded first, never a reader who
    already has that case; ties by reader id so the result is deterministic."""
    load = {c.reader_id: c.load for c in candidates}
    held = {c.reader_id: set(c.cases) for c in candidates}
    out: dict[int, int | None] = {}
    for item_id, case in items:
        best = None
        for same in (True, False):
            pool = [c for c in candidates if (c.group == group) == same and case not in held[c.reader_id]]
            if pool:
                best = min(pool, key=lambda c: (load[c.reader_id], c.reader_id)).reader_id
                break
        out[item_id] = best
        if best is not None:
            load[best] += 1
            held[best].add(case)
    return out
