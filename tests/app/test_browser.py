"""The page in Debian Chromium (Playwright): it loads, a click changes the overlay, no third-party calls."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.app.conftest import DEMO_CKPT, ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: apt-get install -y chromium")

CANVAS_READY = "() => { const c = document.querySelector('#usam-viewer canvas'); return c && c.width > 200; }"
# canvas pixels as a compact fingerprint: sum of red minus blue over a central patch, and a hash
CANVAS_STATS = """([fx, fy]) => {
  const c = document.querySelector('#usam-viewer canvas');
  const g = c.getContext('2d');
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let h = 0; for (let i = 0; i < d.length; i += 97) h = (h * 31 + d[i]) >>> 0;
  const x = Math.round(fx * c.width), y = Math.round(fy * c.height);
  const p = g.getImageData(x - 2, y - 2, 5, 5).data;
  let r = 0, gg = 0, b = 0; for (let i = 0; i < p.length; i += 4) { r += p[i]; gg += p[i + 1]; b += p[i + 2]; }
  return {hash: h, r: r / 25, g: gg / 25, b: b / 25};
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        yield b
        b.close()


def _ring_target(payload_z: int, size: str):
    """A pixel inside the normal rectal wall of the demo case on slice z, as canvas fractions."""
    import numpy as np

    from app.segment import demo_case

    from scipy.ndimage import distance_transform_edt

    lab = demo_case(0, size).labels[payload_z]
    wall = lab == 1
    ys, xs = np.nonzero(wall)
    inner = [(x, y) for y, x in zip(ys, xs) if wall[y - 1:y + 2, x - 1:x + 2].all()] or list(zip(xs, ys))
    # the wall pixel farthest from the tumor: a clear normal-wall target (the demo model
    # over-calls tumor into the wall right beside it on this case)
    far = distance_transform_edt(lab != 2) if (lab == 2).any() else np.ones_like(lab, dtype=float)
    x, y = max(inner, key=lambda p: far[p[1], p[0]])
    # a second wall pixel clear of the click's marker (6.5 px radius + stroke on the canvas)
    away = [p for p in inner if (p[0] - x) ** 2 + (p[1] - y) ** 2 >= 16 ** 2] or inner
    px, py = max(away, key=lambda p: far[p[1], p[0]])
    h, w = lab.shape
    return (x + 0.5) / w, (y + 0.5) / h, (px + 0.5) / w, (py + 0.5) / h


def test_page_loads_click_changes_overlay(browser, live_app):
    url, ctx = live_app
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_function(CANVAS_READY, timeout=120_000)
    page.wait_for_function("() => document.querySelector('#usam-viewer .uv-tl').innerText.includes('Axial')",
                           timeout=120_000)
    assert "U-SAM Studio" in page.title()
    assert "Not for clinical use" in page.locator("#usam-weights-note").inner_text()
    z = int(page.locator("#usam-viewer .uv-tl b").inner_text())
    fx, fy, px, py = _ring_target(z, ctx.config.demo_size)
    before = page.evaluate(CANVAS_STATS, [fx, fy])

    box = page.locator("#usam-viewer canvas").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    # the server's answer: one prompt recorded on this slice and the overlay redrawn
    page.wait_for_function("() => document.querySelector('#usam-status').innerText.includes('1 prompt')",
                           timeout=120_000)
    page.wait_for_function("() => !document.querySelector('#usam-viewer .uv-root').classList.contains('busy')",
                           timeout=60_000)
    time.sleep(0.5)  # image decode of the new overlay
    after = page.evaluate(CANVAS_STATS, [fx, fy])
    assert after["hash"] != before["hash"]
    assert "decoder" in page.locator("#usam-timing").inner_text()
    if DEMO_CKPT.is_file():  # trained demo weights: the clicked wall turns red
        probe = page.evaluate(CANVAS_STATS, [px, py])  # more wall, away from the point marker
        assert probe["r"] > probe["b"] + 20

    # keyboard: arrow up moves one slice superior
    page.locator("#usam-viewer .uv-root").focus()
    page.keyboard.press("ArrowUp")
    page.wait_for_function(f"() => document.querySelector('#usam-status').innerText.includes('Slice {z + 1} ')",
                           timeout=60_000)
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"() => document.querySelector('#usam-status').innerText.includes('Slice {z} ')",
                           timeout=60_000)
    time.sleep(0.5)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_segment.png"), full_page=True)

    external = [u for u in requests if not u.startswith(url.rstrip("/")) and not u.startswith(("data:", "blob:"))]
    assert external == [], external  # privacy: no CDN fonts, analytics or other third-party calls
    page.close()
