"""Issue 13 §5, replayed through the app's public path (gradio_client against the launched app on
127.0.0.1; the memory bound in-process on the tab's handler): a mask read back equals what was
saved; an absent value never overwrites a saved slice; submit names its case and a second
(stale) submit changes nothing; masks of another size or with other values are refused; a huge
mask payload is refused cheaply before and after login."""
from __future__ import annotations

import base64
import tracemalloc

import numpy as np
import pytest
from sqlalchemy import func, select

from study.masks import decode_labels, encode_labels
from tests.study.conftest import START

PRESET = "Abdomen (400/40)"
PW = "integrity-pass-5"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from tests.app.test_study_client import launched_tiny_study

    with launched_tiny_study(tmp_path_factory.mktemp("integrity")) as launched:
        yield launched


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _reader(app, login):
    """A registered reader's client, logged in: (client, payload of the open case)."""
    url, svc, code = app
    svc.register(code, login, PW, group=1)
    c = _client(url)
    out = c.predict(login, PW, PRESET, api_name="/study_login")
    return c, out[3]


def _masks(svc, login, status="open") -> dict[int, tuple[np.ndarray, str]]:
    from study.models import Assignment, Clinician, SliceMask
    from study.scoring import decode_mask

    with svc.db.session() as s:
        uid = s.scalar(select(Clinician.id).where(Clinician.login == login))
        return {m.z: (decode_mask(m.data, (m.height, m.width)), m.source) for m in s.scalars(
            select(SliceMask).join(Assignment, Assignment.id == SliceMask.assignment_id)
            .where(Assignment.clinician_id == uid, Assignment.status == status))}


def _refused(c, *args, api, match):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=match) as e:
        c.predict(*args, api_name=api)
    msg = str(e.value)
    assert "Internal error" not in msg and "/tmp" not in msg and "Traceback" not in msg
    return msg


def _shape(h=40, w=40, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.uint8)
    lab[rng.integers(5, 15):rng.integers(20, 30), rng.integers(5, 15):rng.integers(20, 30)] = 1
    lab[rng.integers(0, h, 30), rng.integers(0, w, 30)] = 2     # single pixels: any shift shows
    return lab


def test_mask_read_back_voxel_for_voxel_in_a_new_session(app):
    url, svc, code = app
    c, p = _reader(app, "readback")
    aid, want = p["aid"], {}
    for i, z in enumerate(range(START, START + 3)):
        want[z] = _shape(seed=i)
        c.predict(encode_labels(want[z]), aid, PRESET, api_name="/study_next")
    c.close()
    stored = _masks(svc, "readback")
    assert {z: m for z, (m, _) in stored.items()}.keys() == want.keys()
    c2 = _client(url)
    out = c2.predict("readback", PW, PRESET, api_name="/study_login")
    assert out[3]["aid"] == aid and out[2] == START + 3
    for z in want:
        shown = c2.predict(None, aid, z, PRESET, api_name="/study_goto")[2]
        assert np.array_equal(decode_labels(shown["mask"], (40, 40)), want[z]), z
        assert np.array_equal(stored[z][0], want[z])
    # reading back saved nothing: still the same rows, same contents
    after = _masks(svc, "readback")
    assert all(np.array_equal(after[z][0], want[z]) for z in want) and after.keys() == want.keys()


@pytest.mark.parametrize("absent", [None, "", "   "])
def test_absent_mask_never_overwrites_a_saved_slice(app, absent):
    url, svc, code = app
    login = f"absent{'n' if absent is None else len(absent)}"
    c, p = _reader(app, login)
    aid, lab = p["aid"], _shape(seed=7)
    c.predict(encode_labels(lab), aid, START, PRESET, api_name="/study_goto")      # saves START, stays
    for api, args in (("/study_goto", (absent, aid, START + 1, PRESET)), ("/study_previous", (absent, aid, PRESET)),
                      ("/study_next", (absent, aid, PRESET)), ("/study_interpolate", (absent, aid, PRESET))):
        c.predict(*args, api_name=api)
        stored = _masks(svc, login)
        assert list(stored) == [START] and np.array_equal(stored[START][0], lab), api
    # submit with an absent mask: the stored slice is what is submitted
    c.predict(None, aid, START, PRESET, api_name="/study_goto")
    out = c.predict(absent, aid, PRESET, api_name="/study_submit")
    assert "Case submitted (1 of 6 slices annotated)" in out[0]
    from study.models import Submission
    from study.scoring import decode_mask
    with svc.db.session() as s:
        sub = s.scalar(select(Submission).where(Submission.assignment_id == aid))
        assert np.array_equal(decode_mask(sub.data, sub.shape)[0], lab)


def test_submit_names_its_case_and_a_second_submit_changes_nothing(app):
    from study.models import Assignment, Submission

    url, svc, code = app
    c, p = _reader(app, "twice")
    aid = p["aid"]
    c.predict(encode_labels(_shape(seed=3)), aid, PRESET, api_name="/study_next")
    _refused(c, None, None, PRESET, api="/study_submit", match="does not name the case")
    _refused(c, None, aid + 1000, PRESET, api="/study_submit", match="another case")
    out = c.predict(None, aid, PRESET, api_name="/study_submit")
    nxt = out[3]["aid"]
    assert "Case submitted" in out[0] and nxt != aid
    # the double click / stale tab: the same submit again names the first case, now submitted
    msg = _refused(c, None, aid, PRESET, api="/study_submit", match="another case")
    assert "nothing was changed" in msg
    _refused(c, encode_labels(_shape(seed=4)), aid, PRESET, api="/study_next", match="another case")
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Submission).where(Submission.assignment_id == nxt)) == 0
        assert s.scalar(select(Assignment.status).where(Assignment.id == nxt)) == "open"
        assert s.scalar(select(func.count()).select_from(Submission).where(Submission.assignment_id == aid)) == 1
    assert _masks(svc, "twice") == {}                  # nothing landed on the next case


@pytest.mark.parametrize("text, match", [
    ("rle:39:40:1,1560", "39×40 pixels but this slice is 40×40"),
    ("rle:80:80:1,6400", "80×80 pixels"),
    ("rle:40:40:3,1600", "labels 0"),
    ("rle:40:40:255,1600", "labels 0"),
    ("b64:40:40:" + base64.b64encode(bytes([1, 2, 200, 0]) * 400).decode(), "labels 0"),
    ("rle:40:40:1,800", "cover the slice exactly"),
    ("data:image/png;base64,iVBORw0KGgo=", "unknown format"),
])
def test_wrong_size_or_values_refused_and_nothing_stored(app, text, match):
    url, svc, code = app
    login = f"wrong{abs(hash(text)) % 10**8}"
    c, p = _reader(app, login)
    lab = _shape(seed=5)
    c.predict(encode_labels(lab), p["aid"], START, PRESET, api_name="/study_goto")
    msg = _refused(c, text, p["aid"], PRESET, api="/study_next", match=match)
    assert "nothing was saved" in msg or "could not be read" in msg or "may only hold" in msg
    stored = _masks(svc, login)
    assert list(stored) == [START] and np.array_equal(stored[START][0], lab)


def test_huge_mask_payload_refused_cheaply_before_and_after_login(app):
    """A 4000x4000 mask (as base64, 21 MB of text) costs the handler almost nothing: refused before
    login (no session) and after login (not the case's slice size) without decoding it."""
    import gradio as gr

    from app.contour import MAX_MASK_TEXT
    from app.study_tab import StudyTab, _err

    url, svc, code = app
    svc.register(code, "huge", PW, group=1)
    tab = StudyTab(svc, "small")
    tab._demo_ready = True
    token, cur = tab.login("huge", PW, PRESET)[:2]
    big = "b64:4000:4000:" + "A" * (4 * (4000 * 4000 + 2) // 3)
    small_header = "rle:4000:4000:1,16000000"
    assert len(big) > MAX_MASK_TEXT
    for tok, c, text in ((None, None, big), ("forged", dict(cur), big), (token, dict(cur), big),
                         (token, dict(cur), small_header)):
        tracemalloc.start()
        with pytest.raises(gr.Error) as e:
            _err(tab.next_slice)(tok, c, text, cur["aid"], PRESET)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 2 * 1024 * 1024, (tok, peak)     # the payload itself is 21 MB
        assert "Internal error" not in str(e.value.message)
    assert _masks(svc, "huge") == {}
