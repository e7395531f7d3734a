"""The study tab through gradio_client against the launched app: register, log in, annotate two
slices, close, log in again, resume, submit; scores appear in the admin report. Also: every
study endpoint refuses unauthenticated callers and readers' calls to admin endpoints."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from app.context import AppContext, WeightsInfo
from tests.app.conftest import quiet_config
from tests.study.conftest import END, START, make_study, write_tiny_cohort

PRESET = "Abdomen (400/40)"


class _Ctx(AppContext):
    """App context with a fake model (never loaded here) and the test's study service."""

    def __init__(self, port, svc):
        super().__init__(quiet_config(host="127.0.0.1", port=port, device="cpu", demo_size="small"),
                         model=object(), metadata={"weights_kind": "fake"})
        self.study_service = svc

    def weights_info(self):
        return WeightsInfo(kind="fake", label="fake", path="-", sha256="f" * 64, is_demo=True, note="fake")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))


@contextlib.contextmanager
def launched_tiny_study(tmp: Path, cohort: Path | None = None, ctx_cls: type = _Ctx) -> Iterator[tuple]:
    """The real app.main with the study tab on a fresh tiny study, launched on 127.0.0.1 with a
    cheap argon2: (url, service, study code). Shared by the study's API, integrity and browser tests."""
    from argon2 import PasswordHasher

    from app.main import build_app, launch_kwargs
    from study import auth
    from tests.reliability.helpers import for_tests

    saved, auth._HASHER = auth._HASHER, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    svc, admin, code, sid = make_study(tmp, cohort or write_tiny_cohort(tmp / "cohort"))
    ctx = ctx_cls(_port(), svc)
    demo = for_tests(build_app(ctx))
    demo.queue(default_concurrency_limit=4)
    kw = launch_kwargs(ctx)
    kw.update(prevent_thread_lock=True, quiet=True)
    demo.launch(**kw)
    try:
        yield f"http://127.0.0.1:{ctx.config.port}/", svc, code
    finally:
        demo.close()
        auth._HASHER = saved


@pytest.fixture(scope="module")
def study_app(tmp_path_factory, tiny_cohort):
    """One launched app (the real app.main with this tab) on a fresh study for the module."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tmp_path = tmp_path_factory.mktemp("study_app")
    with launched_tiny_study(tmp_path, tiny_cohort) as (url, svc, code):
        yield url, svc, code, tmp_path


def _mask(labels):
    """The page's mask text of a label map (what the contouring tool sends)."""
    from study.masks import encode_labels

    return encode_labels(labels)


def _shown(payload) -> np.ndarray:
    """The label map the contouring tool shows (the stored mask, exactly), zeros when none."""
    from study.masks import decode_labels

    if payload["mask"] is None:
        return np.zeros((payload["h"], payload["w"]), np.uint8)
    return decode_labels(payload["mask"], (payload["h"], payload["w"]))


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_register_annotate_close_resume_submit_and_report(study_app):
    from sqlalchemy import select

    from study.models import SliceMask
    from study.scoring import decode_mask

    url, svc, code, tmp = study_app
    c = _client(url)
    msg = c.predict(code, "reader1", "reader-pass-1", "Dr One", 1, 4, "surgery", api_name="/study_register")
    assert "created" in msg
    status, info, slider, editor, _img, _p = c.predict("reader1", "reader-pass-1", PRESET, api_name="/study_login")
    assert "reader1" in status and f"slices {START}–{END}" in info and slider == START
    assert editor["mask"] is None and editor["strip"] == ["untouched"] * (END - START + 1)   # nothing yet
    aid = editor["aid"]
    wall = np.zeros((40, 40), np.uint8)
    wall[12:28, 12:16] = 1
    tumor = np.zeros((40, 40), np.uint8)
    tumor[18:24, 18:24] = 2
    out = c.predict(_mask(wall), aid, PRESET, api_name="/study_next")       # slice START saved
    assert out[1] == START + 1
    out = c.predict(_mask(tumor), aid, PRESET, api_name="/study_next")      # slice START+1 saved
    out = c.predict(_mask(tumor * 0), aid, START + 1, PRESET, api_name="/study_goto")  # back, blank
    assert out[1] == START + 1 and "now at slice **3**" in out[0]
    assert out[2]["strip"][:3] == ["saved", "saved", "nothing"]
    out = c.predict("", aid, START + 2, PRESET, api_name="/study_goto")     # no mask: nothing saved
    c.close()                                                  # the browser is closed
    with svc.db.session() as s:
        from study.models import Assignment, Clinician
        uid = s.scalar(select(Clinician.id).where(Clinician.login == "reader1"))
        saved = {m.z: decode_mask(m.data, (m.height, m.width)) for m in s.scalars(
            select(SliceMask).join(Assignment, Assignment.id == SliceMask.assignment_id)
            .where(Assignment.clinician_id == uid))}
    assert sorted(saved) == [START, START + 1, START + 2]          # START+2 left blank on purpose
    assert np.array_equal(saved[START], wall) and np.array_equal(saved[START + 1], tumor)
    assert not saved[START + 2].any()

    c2 = _client(url)
    status, info, slider, editor, _img, _p = c2.predict("reader1", "reader-pass-1", PRESET, api_name="/study_login")
    assert slider == START + 2 and "2 slices saved, 1 with nothing" in info        # resumed where left
    out = c2.predict(None, editor["aid"], START + 1, PRESET, api_name="/study_goto")
    assert np.array_equal(_shown(out[2]), tumor)                                   # own tumor, exactly
    out = c2.predict(_mask(tumor), editor["aid"], PRESET, api_name="/study_submit")
    assert "Case submitted" in out[0] and "Case 2 of 3" in out[1]

    a = _client(url)
    a.predict("admin", "admin-password", PRESET, api_name="/study_login")
    head, table, paper, readerview, *_figs, readers = a.predict(api_name="/study_admin_report")
    assert "CODE1" in head and "| Group 1 | 1 (1, 1) |" in table
    assert "61.38/45.67/47.27" in paper
    assert readers["data"][0][1] == "reader1"


ENDPOINTS_READER = ["/study_next", "/study_previous", "/study_copy_previous", "/study_submit", "/study_goto",
                    "/study_interpolate",
                    "/study_nothing", "/study_run_model"]
ENDPOINTS_ADMIN = ["/study_admin_report", "/study_admin_export", "/study_admin_drop", "/study_admin_set_group",
                   "/study_admin_run_models"]


def _call(c, api, tmp):
    from gradio_client.exceptions import AppError

    info = c.view_api(return_format="dict")["named_endpoints"][api]
    args = []
    for p in info["parameters"]:
        comp = p["component"].lower()
        if p["label"].startswith("Mask text"):
            args.append(_mask(np.ones((40, 40), np.uint8)))
        elif comp == "slider":
            args.append(0)
        elif comp == "number":
            args.append(1)
        elif comp == "radio":
            args.append(p["parameter_default"] if p["parameter_has_default"] else 1)
        else:
            args.append(p.get("example_input"))
    with pytest.raises(AppError) as e:
        c.predict(*args, api_name=api)
    return str(e.value)


def test_endpoints_refuse_unauthenticated_and_wrong_role(study_app):
    from sqlalchemy import func, select

    from study.models import SliceMask, Submission

    url, svc, code, tmp = study_app

    def counts():
        with svc.db.session() as s:
            return (s.scalar(select(func.count()).select_from(SliceMask)),
                    s.scalar(select(func.count()).select_from(Submission)))

    before = counts()
    anon = _client(url)
    for api in ENDPOINTS_READER:
        assert "log in" in _call(anon, api, tmp).lower()
    for api in ENDPOINTS_ADMIN:
        assert "log in" in _call(anon, api, tmp).lower()
    r = _client(url)
    r.predict(code, "reader2", "reader-pass-1", "", 2, 1, "", api_name="/study_register")
    r.predict("reader2", "reader-pass-1", PRESET, api_name="/study_login")
    for api in ENDPOINTS_ADMIN:
        assert "administrator" in _call(r, api, tmp)
    assert counts() == before                       # nothing was stored by any refused call
    # a wrong password gives a clear message, no token
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="Wrong login or password"):
        _client(url).predict("reader2", "bad-password", PRESET, api_name="/study_login")


def test_readers_see_only_their_own_work(study_app):
    url, svc, code, tmp = study_app
    r1, r2 = _client(url), _client(url)
    for c, name in ((r1, "ra"), (r2, "rb")):
        c.predict(code, name, "reader-pass-1", "", 1, 1, "", api_name="/study_register")
    r1_aid = r1.predict("ra", "reader-pass-1", PRESET, api_name="/study_login")[3]["aid"]
    everything = np.full((40, 40), 2, np.uint8)
    r1.predict(_mask(everything), r1_aid, PRESET, api_name="/study_next")
    _s, info, _sl, editor, _i, _p = r2.predict("rb", "reader-pass-1", PRESET, api_name="/study_login")
    assert editor["mask"] is None and not _shown(editor).any()
    # another reader's case cannot be named: refused, nothing stored
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="another case"):
        r2.predict(_mask(everything), r1_aid, PRESET, api_name="/study_next")
    # the ground truth never reaches the page: the slice image is the CT only
    from app.render import decode_data_url
    bg = decode_data_url(editor["slice"])
    assert bg.shape[:2] == (40, 40)
    assert bg.ndim == 2                                                    # grey: no coloured labels


def test_enter_in_the_number_boxes_acts_like_their_buttons(study_app):
    """Enter in the register form's years box registers; in the admin's reader id box it sets the
    group (the same endpoint as the button), never drops the reader."""
    import httpx

    url = study_app[0]
    cfg = httpx.get(url + "config").json()
    ids = {c["props"].get("label"): c["id"] for c in cfg["components"] if c.get("type") == "number"}
    deps = {d["api_name"]: d for d in cfg["dependencies"] if d.get("api_name")}
    targets = {api: [tuple(t) for t in deps[api]["targets"]] for api in
               ("study_register", "study_admin_set_group", "study_admin_drop")}
    assert (ids["Years of experience"], "submit") in targets["study_register"]
    assert (ids["Reader id"], "submit") in targets["study_admin_set_group"]
    assert len(targets["study_register"]) == len(targets["study_admin_set_group"]) == 2   # and the button
    assert all(t[0] != ids["Reader id"] for t in targets["study_admin_drop"])
