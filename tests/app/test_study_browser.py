"""The study's contouring tool in Debian Chromium (Playwright) against the launched app: brush and
polygon (even-odd ring) painting, zoom and pan kept across slices, shape-based interpolation
shown until confirmed, resume in a NEW browser context with the masks read back voxel for
voxel (compared with the database), and the submit confirmation. Screenshots are written to
test-artifacts/study/ (ignored by git)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import select

from tests.app.test_browser import ARTIFACTS, CHROMIUM
from tests.study.conftest import END, START

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: apt-get install -y chromium")

SHOTS = ARTIFACTS / "study"
PW = "contour-pass-81"
HOOK = "(document.querySelector('#study-contour .uc-root') || {}).__contour"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The real app with this tab on a fresh tiny study (40x40 slices, range 2..7)."""
    from tests.app.conftest import FakePredictor
    from tests.app.test_study_client import _Ctx, launched_tiny_study

    class Ctx(_Ctx):
        """The test study's context with the fake predictor: the Segment tab loads without errors."""

        def new_predictor(self, volume):
            return FakePredictor(volume)

        def new_session(self, volume, **options):
            from tests.app.conftest import fake_interactive

            return fake_interactive(volume, **options)   # the Segment tab drives the whole session

    with launched_tiny_study(tmp_path_factory.mktemp("contour"), ctx_cls=Ctx) as launched:
        yield launched


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        yield b
        b.close()


def _login(browser, url, login):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.goto(url)
    page.get_by_role("tab", name="Observer study").click()
    page.locator("#study-login").get_by_role("textbox").fill(login)
    page.locator("#study-password input, #study-password textarea").first.fill(PW)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_function(f"() => {{ const h = {HOOK}; return h && h.data() && !h.busy(); }}", timeout=60_000)
    # the opened case has the keyboard: shortcuts work without a first click
    page.wait_for_function("() => document.activeElement === document.querySelector('#study-contour .uc-root')",
                           timeout=5_000)
    return ctx, page


def _data(page) -> dict:
    return page.evaluate(f"() => {HOOK}.data()")


def _labels(page) -> np.ndarray:
    d = _data(page)
    return np.array(page.evaluate(f"() => {HOOK}.labels()"), np.uint8).reshape(d["h"], d["w"])


def _xy(page, x, y):
    return page.evaluate(f"([x, y]) => {HOOK}.toClient(x, y)", [x, y])


def _wait_slice(page, z):
    page.wait_for_function(f"() => {{ const h = {HOOK}; return h.data().z === {z} && !h.busy(); }}",
                           timeout=60_000)
    time.sleep(0.2)


def _act(page, name):
    page.locator(f"#study-contour [data-act={name}]").click()


def _stored(svc, login) -> dict[int, tuple[np.ndarray, str]]:
    from study.models import Assignment, Clinician, SliceMask
    from study.scoring import decode_mask

    with svc.db.session() as s:
        uid = s.scalar(select(Clinician.id).where(Clinician.login == login))
        return {m.z: (decode_mask(m.data, (m.height, m.width)), m.source) for m in s.scalars(
            select(SliceMask).join(Assignment, Assignment.id == SliceMask.assignment_id)
            .where(Assignment.clinician_id == uid, Assignment.status == "open"))}


def even_odd(polys, h, w) -> np.ndarray:
    """Reference even-odd fill at pixel centres (x = column, y = row)."""
    out = np.zeros((h, w), bool)
    for y in range(h):
        xs = []
        for poly in polys:
            for (ax, ay), (bx, by) in zip(poly, poly[1:] + poly[:1]):
                if (ay <= y) != (by <= y):
                    xs.append(ax + (y - ay) * (bx - ax) / (by - ay))
        xs.sort()
        for a, b in zip(xs[0::2], xs[1::2]):
            out[y, max(0, int(np.ceil(a))):min(w - 1, int(np.floor(b))) + 1] = True
    return out


def _click_poly(page, poly):
    for x, y in poly:
        cx, cy = _xy(page, x, y)
        page.mouse.click(cx, cy)
    page.keyboard.press("Enter")                       # closes this contour


def test_brush_polygon_zoom_pan_and_resume_in_a_new_context(app, browser):
    url, svc, code = app
    svc.register(code, "painter", PW, group=1)
    ctx, page = _login(browser, url, "painter")
    d = _data(page)
    assert (d["z"], d["h"], d["w"], d["strip"]) == (START, 40, 40, ["untouched"] * (END - START + 1))

    # brush: tumor, size 3, a horizontal stroke along row 10 from column 8 to 20
    page.keyboard.press("2")
    page.locator("#study-contour .uc-bsize").fill("3")
    page.locator("#study-contour .uc-bsize").press("Enter")
    page.locator("#study-contour .uc-root").focus()
    x0, y0 = _xy(page, 8, 10)
    x1, y1 = _xy(page, 20, 10)
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * i / 10, y0)
    page.mouse.up()
    lab = _labels(page)
    assert (lab[10, 8:21] == 2).all() and lab[8, 14] == 0 and lab[12, 14] == 0 and (lab[9:12, 14] == 2).all()
    assert set(np.unique(lab)) == {0, 2}

    # polygon: the outer wall and the lumen, Enter fills the ring between (even-odd)
    page.keyboard.press("1")
    page.keyboard.press("p")
    outer = [(5, 22), (34, 22), (34, 37), (5, 37)]
    inner = [(12, 26), (27, 26), (27, 33), (12, 33)]
    _click_poly(page, outer)
    _click_poly(page, inner)
    page.keyboard.press("Enter")                       # fills both contours
    lab = _labels(page)
    ring = even_odd([outer, inner], 40, 40)
    assert np.array_equal(lab == 1, ring) and ring.sum() > 200 and not ring[30, 20]
    assert (lab[10, 8:21] == 2).all()                  # the tumor stroke is untouched
    painted = lab.copy()
    page.screenshot(path=str(SHOTS / "contour_paint.png"))

    # fill holes (wall): the lumen becomes wall; undo restores the ring
    page.keyboard.press("f")
    holes = _labels(page)
    assert (holes[27:33, 13:27] == 1).all() and np.array_equal(holes[holes != 1], painted[holes != 1])
    page.keyboard.press("Control+z")
    assert np.array_equal(_labels(page), painted)
    # eraser: one dab of size 3 on the tumor stroke
    page.keyboard.press("e")
    page.mouse.click(*_xy(page, 14, 10))
    erased = _labels(page)
    assert (erased[9:12, 14] == 0).all() and (erased[10, 8:12] == 2).all()
    page.keyboard.press("Control+z")
    assert np.array_equal(_labels(page), painted)

    # undo / redo per slice
    page.keyboard.press("Control+z")
    assert not (_labels(page) == 1).any()
    page.keyboard.press("Control+y")
    assert np.array_equal(_labels(page), painted)

    # another window preset: a new image, the unsaved strokes stay
    before = _data(page)["slice"]
    page.locator("[role=tabpanel]:visible").get_by_label("Bone (1800/400)").check()   # the study tab's
    page.wait_for_function(f"([b]) => {HOOK}.data().slice !== b", arg=[before], timeout=60_000)
    assert np.array_equal(_labels(page), painted) and page.evaluate(f"() => {HOOK}.dirty()")
    page.locator("#study-contour .uc-root").focus()

    # zoom (button and ctrl+wheel) and pan (space + drag)
    v0 = page.evaluate(f"() => {HOOK}.view()")
    _act(page, "zin")
    cx, cy = _xy(page, 20, 20)
    page.mouse.move(cx, cy)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    v1 = page.evaluate(f"() => {HOOK}.view()")
    assert v1["k"] == pytest.approx(v0["k"] * 1.25 * 1.15, rel=1e-6)
    page.locator("#study-contour .uc-root").focus()
    page.keyboard.down(" ")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 40, steps=5)
    page.mouse.up()
    page.keyboard.up(" ")
    v2 = page.evaluate(f"() => {HOOK}.view()")
    assert (v2["ox"] - v1["ox"], v2["oy"] - v1["oy"]) == pytest.approx((60, 40), abs=0.01)
    assert np.array_equal(_labels(page), painted)        # panning painted nothing

    # Save & next: the slice is stored exactly; the zoom and pan are kept
    _act(page, "next")
    _wait_slice(page, START + 1)
    assert page.evaluate(f"() => {HOOK}.view()") == v2
    stored = _stored(svc, "painter")
    assert np.array_equal(stored[START][0], painted) and stored[START][1] == "manual"
    # copy from the previous slice: an undoable draft of START's saved mask
    page.keyboard.press("c")
    page.wait_for_function(f"() => {HOOK}.dirty() && !{HOOK}.busy()", timeout=60_000)
    assert np.array_equal(_labels(page), painted)
    page.keyboard.press("Control+z")
    assert not _labels(page).any()
    # slice START+1: a tumor dab, then go to START+3 through the strip (saved as edited)
    page.keyboard.press("b")
    page.keyboard.press("2")
    page.mouse.click(*_xy(page, 20, 20))
    dab = _labels(page)
    assert dab[20, 20] == 2
    page.locator(f"#study-contour .uc-cell[data-z='{START + 3}']").click()
    _wait_slice(page, START + 3)
    assert [c for c in _data(page)["strip"][:4]] == ["saved", "saved", "untouched", "untouched"]
    stored = _stored(svc, "painter")
    assert np.array_equal(stored[START + 1][0], dab) and sorted(stored) == [START, START + 1]
    page.screenshot(path=str(SHOTS / "contour_zoomed.png"))
    ctx.close()                                           # the browser is closed

    # a NEW browser context: resume where the reader was, masks read back voxel for voxel
    ctx2, page2 = _login(browser, url, "painter")
    assert _data(page2)["z"] == START + 3
    for z in (START, START + 1):
        page2.locator(f"#study-contour .uc-cell[data-z='{z}']").click()
        _wait_slice(page2, z)
        assert np.array_equal(_labels(page2), _stored(svc, "painter")[z][0]), z
    assert np.array_equal(_stored(svc, "painter")[START][0], painted)
    assert sorted(_stored(svc, "painter")) == [START, START + 1]      # looking saved nothing
    page2.screenshot(path=str(SHOTS / "contour_resumed.png"))

    # a refused save (the session expired meanwhile): the message, the tool usable again at once,
    # the edits still on the page, nothing stored
    from datetime import timedelta

    from sqlalchemy import update

    from study.models import AuthSession, Clinician, utcnow
    with svc.db.session() as s:
        uid = s.scalar(select(Clinician.id).where(Clinician.login == "painter"))
        s.execute(update(AuthSession).where(AuthSession.clinician_id == uid)
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    page2.locator("#study-contour .uc-root").focus()
    page2.keyboard.press("2")
    page2.mouse.click(*_xy(page2, 30, 5))
    edited = _labels(page2)
    t0 = time.monotonic()
    _act(page2, "next")
    page2.wait_for_function(f"() => !{HOOK}.busy()", timeout=8_000)       # the fallback would take 10 s
    assert time.monotonic() - t0 < 8
    assert _data(page2)["z"] == START + 1 and np.array_equal(_labels(page2), edited)
    assert page2.evaluate(f"() => {HOOK}.dirty()")
    page2.get_by_text("log in again", exact=False).first.wait_for(timeout=10_000)       # the message
    page2.screenshot(path=str(SHOTS / "contour_refused.png"))
    assert sorted(_stored(svc, "painter")) == [START, START + 1]
    assert not (_stored(svc, "painter")[START + 1][0] == edited).all()
    ctx2.close()


def test_interpolation_confirm_and_submit_confirmation(app, browser):
    url, svc, code = app
    svc.register(code, "interp", PW, group=2)
    ctx, page = _login(browser, url, "interp")
    page.keyboard.press("1")
    page.locator("#study-contour .uc-bsize").fill("9")
    page.locator("#study-contour .uc-bsize").press("Enter")
    page.mouse.click(*_xy(page, 15, 15))
    page.locator(f"#study-contour .uc-cell[data-z='{START + 3}']").click()
    _wait_slice(page, START + 3)
    # a lasso: a freehand circle of radius 6 around (30, 30), closed by releasing, filled by Enter
    page.keyboard.press("p")
    pts = [_xy(page, 30 + 6 * np.cos(a), 30 + 6 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 40)]
    page.mouse.move(*pts[0])
    page.mouse.down()
    for pt in pts[1:]:
        page.mouse.move(*pt)
    page.mouse.up()
    page.keyboard.press("Enter")
    lasso = _labels(page) == 1
    assert lasso[30, 30] and abs(int(lasso.sum()) - np.pi * 36) < 0.15 * np.pi * 36 and not lasso[30, 37]
    page.keyboard.press("Control+z")
    assert not _labels(page).any()
    page.keyboard.press("b")
    page.mouse.click(*_xy(page, 21, 19))
    page.locator("#study-contour .uc-root").focus()
    page.keyboard.press("i")                              # saves this slice, interpolates START+1..+2
    page.wait_for_function(f"() => {HOOK}.data().strip[1] === 'interpolated' && !{HOOK}.busy()", timeout=60_000)
    d = _data(page)
    assert d["strip"][:4] == ["saved", "interpolated", "interpolated", "saved"] and d["z"] == START + 3
    stored = _stored(svc, "interp")
    assert [stored[z][1] for z in (START + 1, START + 2)] == ["interpolated", "interpolated"]
    # the interpolated disks move from (15, 15) to (21, 19)
    ys, xs = np.nonzero(stored[START + 1][0] == 1)
    assert 15 < xs.mean() < 19 and 15 < ys.mean() < 18
    page.locator(f"#study-contour .uc-cell[data-z='{START + 1}']").click()
    _wait_slice(page, START + 1)
    assert page.locator("#study-contour .uc-flag").is_visible()          # shown as interpolated
    assert np.array_equal(_labels(page), stored[START + 1][0])
    page.screenshot(path=str(SHOTS / "contour_interpolated.png"))

    # submit is refused while interpolations are unconfirmed: the dialog says so
    _act(page, "submit")
    assert page.locator("#study-contour .uc-modal").is_visible()
    assert page.locator("#study-contour .uc-n-interpolated").inner_text() == "2"
    assert page.locator("#study-contour .uc-confirm").is_disabled()
    _act(page, "cancel")
    # confirm both (Save & next on each), then the summary and the submission
    _act(page, "next")
    _wait_slice(page, START + 2)
    assert _stored(svc, "interp")[START + 1][1] == "manual"
    page.locator("#study-contour .uc-root").focus()
    page.keyboard.press("ArrowRight")                     # the key does what Save & next does
    _wait_slice(page, START + 3)
    assert _stored(svc, "interp")[START + 2][1] == "manual"
    _act(page, "submit")
    n = {k: page.locator(f"#study-contour .uc-n-{k}").inner_text() for k in ("saved", "nothing", "interpolated",
                                                                              "untouched")}
    assert n == {"saved": "4", "nothing": "0", "interpolated": "0", "untouched": "2"}
    page.screenshot(path=str(SHOTS / "contour_submit_dialog.png"))
    aid = _data(page)["aid"]
    _act(page, "confirm")
    page.wait_for_function(f"() => {HOOK}.data() && {HOOK}.data().aid !== {aid} && !{HOOK}.busy()",
                           timeout=60_000)
    assert "Case submitted (4 of 6 slices annotated)" in page.locator("#study-status").inner_text()
    from study.models import Submission
    with svc.db.session() as s:
        assert [r.assignment_id for r in s.scalars(select(Submission))] == [aid]
    ctx.close()
