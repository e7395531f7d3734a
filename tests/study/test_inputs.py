"""One check each for the study's untrusted numbers (study/inputs.py), and the same message from
every entry point that takes them: registration, the admin's set group and the trusted ops."""
from __future__ import annotations

import math

import pytest

from study.errors import InvalidInput
from study.inputs import as_int, check_group, check_years, optional_group


@pytest.mark.parametrize("v,want", [(3, 3), (3.0, 3), ("3", 3), (" -7 ", -7), (2**31, 2**31)])
def test_whole_numbers_are_accepted_in_any_spelling(v, want):
    assert as_int(v, "slice") == want


@pytest.mark.parametrize("v", [True, False, 2.5, "x", "", None, [], math.inf, math.nan, 10**400, 2**31 + 1])
def test_anything_else_is_a_bad_number(v):
    with pytest.raises(InvalidInput, match=r"^Bad slice number\.$"):
        as_int(v, "slice")


def test_group_is_one_two_or_three():
    assert [check_group(v) for v in (1, "2", 3.0)] == [1, 2, 3]
    for v in (0, 4, -1):
        with pytest.raises(InvalidInput, match="Experience group is 1, 2 or 3"):
            check_group(v)
    with pytest.raises(InvalidInput, match="Bad group number"):
        check_group("one")
    assert [optional_group(v) for v in (None, "", 0, "3")] == [None, None, None, 3]


def test_years_are_empty_or_between_0_and_80():
    assert [check_years(v) for v in (None, "", 0, "12.5", 80)] == [None, None, 0.0, 12.5, 80.0]
    for v in ("ten", math.nan, math.inf, "1e999", object()):
        with pytest.raises(InvalidInput, match="Years of experience must be a number"):
            check_years(v)
    for v in (-0.5, 80.01, "81"):
        with pytest.raises(InvalidInput, match="Years of experience must be between 0 and 80"):
            check_years(v)


def test_every_entry_point_gives_the_same_messages(study_env):
    from study import ops
    from study.models import Clinician

    svc, admin, code, _ = study_env
    with pytest.raises(InvalidInput, match="between 0 and 80"):
        svc.register(code, "reader-years", "reader-pass-1", years=81)
    with pytest.raises(InvalidInput, match="must be a number"):
        svc.register(code, "reader-years", "reader-pass-1", years="many")
    with pytest.raises(InvalidInput, match="Experience group is 1, 2 or 3"):
        svc.register(code, "reader-group", "reader-pass-1", group=4)
    with svc.db.session() as s:
        for kw, msg in (({"group": 5}, "Experience group is 1, 2 or 3"), ({"years": 99}, "between 0 and 80")):
            with pytest.raises(InvalidInput, match=msg):
                ops.add_clinician(s, "reader-ops", "reader-pass-1", **kw)
    assert svc.register(code, "reader-ok", "reader-pass-1", years="7.5")["group"] is None
    rid = [r["id"] for r in svc.readers(admin) if r["login"] == "reader-ok"][0]
    with pytest.raises(InvalidInput, match="Experience group is 1, 2 or 3"):
        svc.set_group(admin, rid, 0)
    with pytest.raises(InvalidInput, match="Bad group number"):
        svc.set_group(admin, rid, "x")
    assert svc.set_group(admin, rid, "2") == {"id": rid, "group": 2}
    with svc.db.session() as s:
        u = s.get(Clinician, rid)
        assert (u.group, u.years_experience) == (2, 7.5)
        assert s.query(Clinician).filter(Clinician.login.in_(["reader-years", "reader-group", "reader-ops"])).count() == 0
