"""Property-based tests (hypothesis) of every observer-study tab handler's arguments, called as
the Gradio events call them (through the tab's error wrapper), with what an API client can send:
any mask text (any size, labels, format, junk), any case id, slice numbers, presets, classes, click
coordinates, reader ids, groups and registration fields. The session state (token, open case)
is the server's own and stays valid, or is missing (anonymous). Every call is either accepted
or refused with a clear message (never "Internal error"), and a refused call leaves the stored
study unchanged."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.reliability.test_study_service_fuzz import _stored
from tests.study.conftest import _template_db, fast_argon2, study_env, tiny_cohort  # noqa: F401  (fixtures)

FUZZ = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ints = st.one_of(st.integers(-10**12, 10**12), st.sampled_from([0, 1, 2, 3, -1, 2**31, 2**63]))
numbers = st.one_of(ints, st.floats(allow_nan=True, allow_infinity=True))
junk = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=12), st.lists(ints, max_size=3),
                 st.sampled_from(["nan", "1e400", "", "-1", "../../etc/passwd", "\x00"]))
def _rle(h, w, v=1):
    return f"rle:{h}:{w}:{v},{h * w}"


# mask texts an API client may send: right and wrong sizes, labels, formats, run sums, junk
masks = st.one_of(
    junk, st.sampled_from([_rle(40, 40, 0), _rle(40, 40, 1), _rle(40, 40, 2), _rle(40, 40, 3), _rle(39, 40),
                           _rle(4000, 4000), "rle:40:40:1,1599", "rle:40:40:1,1601", "rle:40:40:", "b64:40:40:",
                           "b64:40:40:" + "AAAA" * 533 + "AA==", "rle:40:40:0,800,2,800", "rle:40:40:-1,1600",
                           "png:40:40:x", "rle:40:40:0,1600" + ",0" * 100]),
    hnp.arrays(np.uint8, (40, 40), elements=st.sampled_from([0, 1, 2, 255])).map(
        lambda a: __import__("study.masks", fromlist=["x"]).encode_labels(a)))
presets = st.one_of(st.sampled_from(["Abdomen (400/40)", "Bone (1800/400)"]), junk)


@pytest.fixture()
def tab_env(study_env):
    """The study tab's handlers on a fresh study, a reader logged in with a case open."""
    from app.study_tab import StudyTab

    svc, admin, code, sid = study_env
    svc.register(code, "tabfuzz", "reader-pass-1", group=1)
    tab = StudyTab(svc, "small")
    tab._demo_ready = True                       # the test study is set up; no demo cohort
    out = tab.login("tabfuzz", "reader-pass-1", "Abdomen (400/40)")
    token, cur = out[0], out[1]
    assert isinstance(cur, dict) and "aid" in cur
    return tab, svc, admin, token, cur


def run(svc, fn, *args):
    """Call a handler through the tab's wrapper: the result, or the refusal message."""
    from app.study_tab import _err

    before = _stored(svc)
    try:
        return _err(fn)(*args)
    except gr.Error as exc:
        msg = str(getattr(exc, "message", exc))
        assert getattr(exc, "title", "") != "Internal error" and not msg.startswith("Internal error"), \
            f"{fn.__name__}: {msg}"
        assert msg.strip()
        assert _stored(svc) == before, f"{fn.__name__} refused but changed stored data"
        return exc


def _cur(cur: dict) -> dict:
    return dict(cur, points=list(cur["points"]), box=list(cur["box"]))


@FUZZ
@given(mask=masks, z=junk, preset=presets, aid=st.one_of(st.just("own"), junk))
def test_annotation_handlers_any_arguments(tab_env, mask, z, preset, aid):
    tab, svc, admin, token, cur = tab_env
    for tok, c in ((token, _cur(cur)), (None, None)):   # the reader's own session, and anonymous
        a = cur["aid"] if aid == "own" else aid
        res = run(svc, tab.goto, tok, c, mask, a, z, preset)
        if not isinstance(res, Exception):
            assert c["start"] <= res[0]["z"] <= c["end"]
        run(svc, tab.next_slice, tok, _cur(cur) if tok else None, mask, a, preset)
        run(svc, tab.previous_slice, tok, _cur(cur) if tok else None, mask, a, preset)
        run(svc, tab.copy_previous, tok, _cur(cur) if tok else None, a, preset)
        run(svc, tab.rewindow, tok, _cur(cur) if tok else None, preset)
        run(svc, tab.nothing, tok, _cur(cur) if tok else None, a, preset)
        run(svc, tab.interpolate, tok, _cur(cur) if tok else None, mask, a, preset)


@FUZZ
@given(mask=masks, preset=presets, aid=st.one_of(st.just("own"), junk))
def test_submit_any_mask(tab_env, mask, preset, aid):
    tab, svc, admin, token, cur = tab_env
    assert isinstance(run(svc, tab.submit, None, None, mask, cur["aid"], preset), Exception)
    res = run(svc, tab.submit, token, _cur(cur), mask, cur["aid"] if aid == "own" else aid, preset)
    if not isinstance(res, Exception):
        assert "Case submitted" in res[1]


class _Select:
    def __init__(self, index):
        self.index = index


@FUZZ
@given(cls=junk, preset=presets, index=st.one_of(junk, st.lists(numbers, max_size=3)), visible=junk,
       had_input=junk)
def test_prompt_heartbeat_and_model_handlers_any_arguments(tab_env, cls, preset, index, visible, had_input):
    tab, svc, admin, token, cur = tab_env
    for arm in ("manual", "usam_p", "usam_b"):
        c = dict(_cur(cur), arm=arm)
        run(svc, tab.prompt_click, token, c, cls, preset, _Select(index))
        assert isinstance(run(svc, tab.run_model, token, c, preset), Exception)   # no model / manual arm
    run(svc, tab.heartbeat, visible, had_input, token, _cur(cur))
    run(svc, tab.heartbeat, visible, had_input, None, None)


@FUZZ
@given(rid=junk, group=junk)
def test_admin_handlers_any_arguments(tab_env, rid, group):
    tab, svc, admin, token, cur = tab_env
    for tok in (None, token, "forged-token"):       # anonymous, a reader, a forged token: refused
        for fn, args in ((tab.admin_refresh, ()), (tab.admin_export, ()), (tab.admin_drop, (rid,)),
                         (tab.admin_set_group, (rid, group)), (tab.admin_run_models, ())):
            assert isinstance(run(svc, fn, tok, *args), Exception), fn.__name__
    run(svc, tab.admin_set_group, admin, rid, group)
    run(svc, tab.admin_drop, admin, rid)


@FUZZ
@given(code=st.one_of(st.just("CODE1"), junk), login=st.one_of(st.just("newreader"), junk),
       password=st.one_of(st.just("password-ok"), junk), name=junk, group=junk, years=junk, spec=junk,
       preset=presets)
def test_register_and_login_handlers_any_arguments(tab_env, code, login, password, name, group, years, spec, preset):
    tab, svc, admin, token, cur = tab_env
    run(svc, tab.register, code, login, password, name, group, years, spec)
    res = run(svc, tab.login, login, password, preset)
    if not isinstance(res, Exception):
        assert isinstance(res[0], str) and len(res[0]) >= 32
    run(svc, tab.logout, None)
