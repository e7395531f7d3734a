"""The Segment viewer in Debian Chromium (Playwright): zoom and pan, exact click mapping at any zoom,
keyboard navigation without a click, label / image / slider / status agreement under held keys,
the window preset radio and Enter in the number boxes. Screenshots go to test-artifacts/."""
from __future__ import annotations

import re
import time

import pytest

from tests.app.test_browser import ARTIFACTS, CANVAS_READY, CHROMIUM, _ring_target, browser  # noqa: F401

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: apt-get install -y chromium")

VIEW = "() => document.querySelector('#usam-viewer .uv-root').__uv.view()"
STATE = "() => document.querySelector('#usam-viewer .uv-root').__uv.state()"
# everything the page shows about the current slice, read at one instant
SHOWN = """() => {
  const root = document.querySelector('#usam-viewer .uv-root');
  const st = root.__uv.state();
  const num = document.querySelector('#usam-slice input[type=number]');
  return {label: parseInt(document.querySelector('#usam-viewer .uv-tl b').innerText), z: st.z, imgZ: st.imgZ,
          navTarget: st.navTarget, navSent: st.navSent, nz: root.__uv.nz(),
          slider: num ? parseFloat(num.value) : null,
          status: document.querySelector('#usam-status').innerText};
}"""
SETTLED = """() => { const st = document.querySelector('#usam-viewer .uv-root').__uv.state();
  return st.navTarget === null && st.navSent === null; }"""


def _open(browser, url):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(url)
    page.wait_for_function(CANVAS_READY, timeout=180_000)
    page.wait_for_function("() => document.querySelector('#usam-viewer .uv-tl').innerText.includes('Axial')",
                           timeout=120_000)
    return page


def _status_slice(text: str) -> int:
    m = re.search(r"Slice (\d+)", text)
    assert m, text
    return int(m.group(1))


def _settle(page, z: int) -> dict:
    page.wait_for_function(SETTLED, timeout=60_000)
    page.wait_for_function(f"() => document.querySelector('#usam-viewer .uv-root').__uv.state().imgZ === {z}",
                           timeout=60_000)
    page.wait_for_function(f"() => parseFloat(document.querySelector('#usam-slice input[type=number]').value) === {z}",
                           timeout=60_000)
    time.sleep(0.3)  # any late answer would land now; nothing may change after this
    return page.evaluate(SHOWN)


def test_zoom_pan_persist_and_clicks_map_exactly(browser, live_app):  # noqa: F811
    url, ctx = live_app
    page = _open(browser, url)
    z = int(page.locator("#usam-viewer .uv-tl b").inner_text())
    canvas = page.locator("#usam-viewer canvas")
    box = canvas.bounding_box()
    v0 = page.evaluate(VIEW)
    assert v0["k"] == 1 and v0["ox"] == 0 and v0["oy"] == 0

    # buttons: + twice, - once, + twice = 1.25^3
    for sel in (".uv-zin", ".uv-zin", ".uv-zout", ".uv-zin", ".uv-zin"):
        page.locator("#usam-viewer " + sel).click()
    v = page.evaluate(VIEW)
    assert abs(v["k"] - 1.25 ** 3) < 1e-9
    assert page.locator("#usam-viewer .uv-zoom").inner_text() == "195 %"

    # Ctrl+wheel zooms around the cursor: the slice point under it stays under it
    # whole CSS pixels: Chromium's wheel and mouse events carry integer client coordinates
    cx, cy = round(box["x"] + 0.62 * box["width"]), round(box["y"] + 0.45 * box["height"])
    page.mouse.move(cx, cy)
    sx = (cx - box["x"]) * v["w"] / box["width"]
    sy = (cy - box["y"]) * v["h"] / box["height"]
    before = ((sx - v["ox"]) / v["k"], (sy - v["oy"]) / v["k"])
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    page.wait_for_function(f"() => {VIEW}().k > {v['k'] + 0.1}", timeout=10_000)
    v = page.evaluate(VIEW)
    assert abs(v["k"] - 1.25 ** 4) < 1e-9
    after = ((sx - v["ox"]) / v["k"], (sy - v["oy"]) / v["k"])
    assert abs(after[0] - before[0]) < 1e-6 and abs(after[1] - before[1]) < 1e-6
    assert z == int(page.locator("#usam-viewer .uv-tl b").inner_text())  # Ctrl+wheel does not scroll slices

    # middle-drag pans by the drag, in canvas pixels
    page.mouse.move(cx, cy)
    page.mouse.down(button="middle")
    page.mouse.move(cx - 60, cy - 40, steps=4)
    page.mouse.up(button="middle")
    v2 = page.evaluate(VIEW)
    scale = v["w"] / box["width"]
    assert abs((v2["ox"] - v["ox"]) - (-60 * scale)) < 0.51 and abs((v2["oy"] - v["oy"]) - (-40 * scale)) < 0.51
    # Ctrl-drag pans too, and places no point
    page.keyboard.down("Control")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 30, cy + 20, steps=3)
    page.mouse.up()
    page.keyboard.up("Control")
    v3 = page.evaluate(VIEW)
    assert abs((v3["ox"] - v2["ox"]) - 30 * scale) < 0.51
    time.sleep(0.5)
    assert page.evaluate(STATE)["points"] == [] and page.evaluate(STATE)["pending"] == 0

    # zoom and pan persist across slices
    page.keyboard.press("ArrowUp")
    shown = _settle(page, z + 1)
    assert shown["label"] == z + 1
    v4 = page.evaluate(VIEW)
    assert (v4["k"], v4["ox"], v4["oy"]) == (v3["k"], v3["ox"], v3["oy"])
    page.keyboard.press("ArrowDown")
    _settle(page, z)

    # a click at the zoomed screen position of a wall pixel lands on that pixel
    fx, fy, *_ = _ring_target(z, ctx.config.demo_size)
    st = page.evaluate(STATE)
    px, py = fx * st["nx"] - 0.5, fy * st["ny"] - 0.5   # slice pixel (centre at integers)
    # its canvas position through the view, computed here (not by the page's own function)
    qx = ((px + 0.5) / st["nx"] * v4["w"] * v4["k"] + v4["ox"]) / scale
    qy = ((py + 0.5) / st["ny"] * v4["h"] * v4["k"] + v4["oy"]) / scale
    assert 0 < qx < box["width"] and 0 < qy < box["height"], "the target must be in view"
    page.mouse.click(box["x"] + qx, box["y"] + qy)
    page.wait_for_function("() => document.querySelector('#usam-status').innerText.includes('1 prompt')",
                           timeout=120_000)
    page.wait_for_function("() => !document.querySelector('#usam-viewer .uv-root').classList.contains('busy')",
                           timeout=60_000)
    x, y = page.evaluate(STATE)["points"][-1][:2]
    tol = 0.5 * scale / (v4["k"] * v4["w"] / st["nx"]) + 1e-6  # half a screen pixel, in slice pixels
    assert abs(x - px) <= tol and abs(y - py) <= tol, (x, y, px, py, tol)
    time.sleep(0.4)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer_zoom_pan.png"), full_page=False)
    page.locator("#usam-viewer").screenshot(path=str(ARTIFACTS / "viewer_zoomed.png"))  # docs/images/ copy

    # Fit restores the whole slice, and a click still lands on its pixel there
    page.locator("#usam-viewer .uv-fit").click()
    v5 = page.evaluate(VIEW)
    assert (v5["k"], v5["ox"], v5["oy"]) == (1, 0, 0)
    _, _, fx2, fy2 = _ring_target(z, ctx.config.demo_size)
    px2, py2 = fx2 * st["nx"] - 0.5, fy2 * st["ny"] - 0.5
    page.mouse.click(box["x"] + (px2 + 0.5) / st["nx"] * box["width"],
                     box["y"] + (py2 + 0.5) / st["ny"] * box["height"])
    page.wait_for_function("() => document.querySelector('#usam-status').innerText.includes('2 prompts')",
                           timeout=120_000)
    x2, y2 = page.evaluate(STATE)["points"][-1][:2]
    tol1 = 0.5 * st["nx"] / box["width"] + 1e-6
    assert abs(x2 - px2) <= tol1 and abs(y2 - py2) <= tol1, (x2, y2, px2, py2, tol1)
    page.close()


def test_held_arrow_key_ends_consistent_without_a_click(browser, live_app):  # noqa: F811
    url, _ = live_app
    page = _open(browser, url)
    start = page.evaluate(SHOWN)
    offset = _status_slice(start["status"]) - start["label"]  # the status' numbering (0- or 1-based)
    assert offset in (0, 1)
    # no click anywhere: the keys reach the viewer (focused on load, or the page routes them)
    page.keyboard.press("Home")
    shown = _settle(page, 0)
    assert shown["label"] == 0
    # hold ArrowUp for ~2 s at the key-repeat rate (~30 / s)
    presses = 60
    for _ in range(presses):
        page.keyboard.press("ArrowUp")
        time.sleep(1 / 30)
    want = min(presses, shown["nz"] - 1)
    shown = _settle(page, want)
    assert shown["label"] == shown["z"] == shown["imgZ"] == shown["slider"] == want, shown
    assert _status_slice(shown["status"]) - want == offset, shown
    assert "0 prompts" in shown["status"]  # navigation never placed a point
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer_key_hold.png"), full_page=False)
    # and back down ten at a time
    for _ in range(3):
        page.keyboard.press("PageDown")
    shown = _settle(page, max(want - 30, 0))
    assert shown["label"] == shown["slider"] == max(want - 30, 0)
    # focus elsewhere (the W box), then a click on the viewer's frame (a thumbnail): the keys are
    # the viewer's again, and no point is placed
    page.locator("#usam-win-w input").click()
    page.locator("#usam-viewer .uv-sag").click()
    page.keyboard.press("ArrowUp")
    shown = _settle(page, max(want - 30, 0) + 1)
    assert shown["label"] == shown["slider"] == max(want - 30, 0) + 1 and "0 prompts" in shown["status"]
    page.close()


def _checked_preset(page) -> str:
    return page.evaluate("() => document.querySelector('#usam-preset input:checked').closest('label').innerText").strip()


def _hud_has(text: str) -> str:
    """JS: the viewer's top-left line (window, slice) shows this text."""
    return f"() => document.querySelector('#usam-viewer .uv-tl').innerText.includes({text!r})"


def _enter(page, selector: str, value: str, until_js: str):
    """Type a value into a number box, press Enter and wait until the page shows its effect."""
    box = page.locator(selector)
    box.fill(value)
    box.press("Enter")
    page.wait_for_function(until_js, timeout=60_000)
    return box


def test_preset_radio_follows_manual_window_and_reapplies(browser, live_app):  # noqa: F811
    url, _ = live_app
    page = _open(browser, url)
    assert _checked_preset(page) == "Abdomen (400/40)"
    w_box = _enter(page, "#usam-win-w input", "700", _hud_has("W 700"))
    page.wait_for_function("() => document.querySelector('#usam-preset input:checked')"
                           ".closest('label').innerText.trim() === 'Custom'", timeout=30_000)
    # the preset clicked again applies it: window, W/L boxes and radio
    page.locator("#usam-preset label", has_text="Abdomen").click()
    page.wait_for_function(_hud_has("W 400"), timeout=60_000)
    assert w_box.input_value() == "400" and _checked_preset(page) == "Abdomen (400/40)"
    # Enter in the level box acts too
    _enter(page, "#usam-win-l input", "60", _hud_has("L 60"))
    assert _checked_preset(page) == "Custom"
    # opacity: typing a value and Enter in its box acts
    _enter(page, "#usam-opacity input[type=number]", "0.9",
           "() => document.querySelector('#usam-viewer .uv-root').__uv.state().opacity === 0.9")
    time.sleep(0.3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer_presets.png"), full_page=True)
    page.close()


def test_ood_notice_beside_whole_volume_and_results(browser, live_app, tmp_path):  # noqa: F811
    """A normalised (0..1) image uploaded as CT: the whole-volume summary and the Results tab say it is unlike
    the training data; a demo phantom shows no notice."""
    import numpy as np

    from app.segment import demo_case
    from usam.volumes import Volume, write_volume

    url, _ = live_app
    c = demo_case(0, "small")
    a = np.asarray(c.volume.array, np.float32)
    path = tmp_path / "normalised_ct.nii.gz"
    write_volume(Volume(array=(a - a.min()) / (a.max() - a.min()), spacing=c.volume.spacing,
                        affine=c.volume.affine, source={}), path)
    page = _open(browser, url)
    page.get_by_role("tab", name="Results & export").click()
    page.wait_for_function("() => document.querySelector('#usam-measurements').innerText.includes('Tumor volume')",
                           timeout=120_000)
    assert "Unlike the training data" not in page.locator("#usam-ood-results").inner_text()
    page.get_by_role("tab", name="Segment").click()
    with page.expect_file_chooser() as fc:
        page.locator("#usam-upload").click()
    fc.value.set_files(str(path))
    page.wait_for_function("() => document.querySelector('#usam-volinfo').innerText.includes('128 × 128')",
                           timeout=120_000)
    page.get_by_role("button", name="Segment range").click()
    page.wait_for_function("() => document.querySelector('#usam-batch-info').innerText.includes('Segmented')",
                           timeout=300_000)
    batch = page.locator("#usam-batch-info .usam-ood")
    assert "Unlike the training data" in batch.inner_text() and "span only 0 to 1" in batch.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#usam-batch-info").screenshot(path=str(ARTIFACTS / "ood_whole_volume.png"))
    page.get_by_role("tab", name="Results & export").click()
    page.wait_for_function("() => document.querySelector('#usam-ood-results').innerText.includes('Unlike')",
                           timeout=120_000)
    assert "these measurements" in page.locator("#usam-ood-results").inner_text()
    page.screenshot(path=str(ARTIFACTS / "ood_results.png"), full_page=False)
    page.close()
