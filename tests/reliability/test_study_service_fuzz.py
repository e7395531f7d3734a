"""Property-based tests of every StudyService function's arguments (the functions behind every
study endpoint): random tokens, ids, slice indices, masks of any shape / dtype / value, prompt
lists and settings. Every call either succeeds or raises a StudyError (a clear message shown
as is) — never another exception — and a refused call leaves the stored study unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from study.errors import StudyError
from tests.study.conftest import _template_db, fast_argon2, study_env, tiny_cohort  # noqa: F401  (fixtures)

FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ints = st.one_of(st.integers(-10**12, 10**12), st.sampled_from([0, 1, 2, 3, 7, 8, -1, 2**31, 2**63]))
numbers = st.one_of(ints, st.floats(allow_nan=True, allow_infinity=True))
junk = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=16), st.lists(ints, max_size=3),
                 st.dictionaries(st.text(max_size=3), ints, max_size=2),
                 st.sampled_from(["1; DROP TABLE slice_masks", "../../etc/passwd", "\x00", "é" * 40]))
masks = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.int8]),
               st.sampled_from([(40, 40), (3, 3), (40, 41), (1, 40, 40), (0,), (40,)]),
               elements=st.sampled_from([0, 1, 2, 3, -1, 255])),
    st.just(np.full((40, 40), np.nan, np.float32)), st.just(np.ones((40, 40), object)), junk)
prompt_lists = st.one_of(st.none(), junk, st.lists(st.lists(numbers, max_size=6), max_size=4),
                         st.lists(st.tuples(numbers, numbers, ints, st.booleans(), numbers), max_size=3))


@pytest.fixture()
def reader(study_env):
    svc, admin, code, sid = study_env
    svc.register(code, "fuzzy", "reader-pass-1", group=1)
    tok = svc.login("fuzzy", "reader-pass-1")
    cv = svc.open_case(tok, svc.next_case(tok).assignment_id)
    svc.save_slice(tok, cv.assignment_id, cv.start, np.ones((cv.height, cv.width), np.uint8))
    return svc, admin, tok, cv


def _stored(svc) -> tuple:
    """The study's stored work and settings (not sessions' last_seen, failed-login rows or the audit)."""
    from sqlalchemy import select

    from study.models import Assignment, Case, Clinician, SliceMask, Study, Submission

    with svc.db.session() as s:
        return (tuple(s.execute(select(SliceMask.assignment_id, SliceMask.z, SliceMask.data, SliceMask.saves,
                                       SliceMask.source).order_by(SliceMask.id))),
                tuple(s.execute(select(Submission.id, Submission.assignment_id, Submission.revision))),
                tuple(s.execute(select(Assignment.id, Assignment.clinician_id, Assignment.status)
                                .order_by(Assignment.id))),
                tuple(s.execute(select(Clinician.id, Clinician.login, Clinician.group, Clinician.status,
                                       Clinician.password_hash).order_by(Clinician.id))),
                tuple(s.execute(select(Study.id, Study.code, Study.k))), tuple(s.execute(select(Case.id))))


def attempt(svc, fn, *args, **kw):
    """Call; a StudyError must leave the study as it was. Returns the result or the error."""
    before = _stored(svc)
    try:
        return fn(*args, **kw)
    except StudyError as exc:
        assert str(exc).strip()
        assert _stored(svc) == before, f"{fn.__name__} refused but changed stored data"
        return exc


@FUZZ
@given(aid=junk, z=junk, mask=masks, source=st.one_of(st.sampled_from(["manual", "empty", "model", "x"]), junk))
def test_save_slice_any_arguments(reader, aid, z, mask, source):
    svc, admin, tok, cv = reader
    res = attempt(svc, svc.save_slice, tok, aid, z, mask, source)
    if not isinstance(res, Exception):     # accepted: then the arguments really were valid
        assert int(float(aid)) == cv.assignment_id and cv.start <= int(float(z)) <= cv.end
        m = np.asarray(mask)
        assert m.shape == (cv.height, cv.width) and set(np.unique(m)) <= {0, 1, 2}


@FUZZ
@given(aid=junk, z=junk, visible=junk, had_input=junk)
def test_reads_and_heartbeats_any_arguments(reader, aid, z, visible, had_input):
    svc, admin, tok, cv = reader
    for call in (lambda: svc.get_slice(tok, aid, z), lambda: svc.heartbeat(tok, aid, visible, had_input, z),
                 lambda: svc.open_case(tok, aid), lambda: svc.submit(tok, aid) if aid != cv.assignment_id else None):
        res = attempt(svc, call)
        if not isinstance(res, Exception) and res is not None and hasattr(res, "image"):
            assert res.image.shape == (cv.height, cv.width)


@FUZZ
@given(z=junk, points=prompt_lists, box=prompt_lists)
def test_prompts_any_arguments(reader, z, points, box):
    svc, admin, tok, cv = reader
    res = attempt(svc, svc.predict_slice, tok, cv.assignment_id, z, points, box)
    assert isinstance(res, StudyError)    # a manual-arm case, or a bad prompt: always refused


@FUZZ
@given(token=junk, a=junk, b=junk)
def test_admin_functions_any_arguments(reader, token, a, b):
    svc, admin, tok, cv = reader
    for t in (token, tok):                         # garbage token, and a reader's token: refused
        for call in (lambda: svc.set_group(t, a, b), lambda: svc.drop_reader(t, a), lambda: svc.readers(t),
                     lambda: svc.study_info(t, a), lambda: svc.create_study(t, str(a)), lambda: svc.report(t),
                     lambda: svc.import_cases(t, a, str(b))):
            assert isinstance(attempt(svc, call), StudyError)
    for call in (lambda: svc.set_group(admin, a, b), lambda: svc.study_info(admin, a),
                 lambda: svc.create_study(admin, "fuzz", k=a, group_sizes=b), lambda: svc.drop_reader(admin, a)):
        attempt(svc, call)                        # the admin with garbage: done or a StudyError


@FUZZ
@given(code=junk, login=junk, password=junk, group=junk, years=junk, address=junk)
def test_register_and_login_any_arguments(study_env, code, login, password, group, years, address):
    svc, admin, code_ok, sid = study_env
    attempt(svc, svc.register, code, login, password, "", group, years, "", str(address))
    attempt(svc, svc.register, code_ok, login, password, "", group, years, "", str(address))
    res = attempt(svc, svc.login, login, password, str(address))
    if not isinstance(res, Exception):
        assert isinstance(res, str) and len(res) >= 32
