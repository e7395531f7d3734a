"""Hostile input sent straight to the launched app's Gradio API (gradio_client), as a script
would: oversized uploads (refused by the server's upload limit before the handler reads them),
hostile files (zip traversal, zip bomb, random bytes), out-of-range and non-finite prompt
coordinates and slice indices. Each gets a clear message and the session keeps its volume,
prompts and masks; the study database is unchanged."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from tests.reliability.helpers import client, table_snapshot
from tests.reliability.live import launched_small_study_app

LIMIT = "1mb"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_api")
    with launched_small_study_app(tmp, max_file_size=LIMIT) as (app_url, url):
        yield {"url": app_url, "db": url, "tmp": tmp}


def _key(payload: dict) -> tuple:
    """What a refused call must not change: volume, slice, prompts, masks, window."""
    return tuple(repr(payload.get(k)) for k in ("name", "nz", "z", "w", "h", "points", "box", "window", "slice",
                                                 "overlay", "locked"))


def _current(c) -> dict:
    out = c.predict(api_name="/init_session")          # re-shows the session's current state
    return out[0]


def _refusal(c, *args, api_name) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        c.predict(*args, api_name=api_name)
    msg = str(e.value)
    assert msg.strip() and not msg.startswith("Internal error"), (api_name, msg)
    return msg


def test_app_limit_matches_the_reader_limit():
    """The server's upload limit (Gradio max_file_size) is at most volumes' own max_bytes."""
    from gradio.utils import _parse_file_size

    from app.context import AppContext
    from app.settings import AppConfig
    from app.main import launch_kwargs
    from usam.volumes import MAX_FILE_BYTES

    kw = launch_kwargs(AppContext(AppConfig(device="cpu")))
    assert kw["max_file_size"] is not None and 0 < _parse_file_size(kw["max_file_size"]) <= MAX_FILE_BYTES


def test_uploads_oversized_and_hostile(app):
    from gradio_client import handle_file

    c = client(app["url"])
    before = _key(_current(c))
    tmp = app["tmp"]
    big = tmp / "big.nii.gz"
    big.write_bytes(np.random.default_rng(0).bytes(2 << 20))          # 2 MiB > 1 MiB limit
    with pytest.raises(ValueError, match="exceeds the maximum file size"):   # the polite client stops itself
        c.predict(handle_file(str(big)), api_name="/load_volume")
    # a raw client is stopped by the server's upload route, before any handler sees the file
    import httpx

    with open(big, "rb") as f:
        r = httpx.post(app["url"] + "gradio_api/upload", files={"files": ("big.nii.gz", f)}, timeout=60)
    assert r.status_code in (400, 413), (r.status_code, r.text[:200])
    assert "size" in r.text.lower() or "large" in r.text.lower(), r.text[:200]

    trav = tmp / "traversal.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("x")
        info.filename = "../../evil.dcm"
        zf.writestr(info, b"payload")
    trav.write_bytes(buf.getvalue())
    assert "unsafe file name" in _refusal(c, handle_file(str(trav)), api_name="/load_volume")

    bomb = tmp / "bomb.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/0.dcm", b"\0" * (32 << 20))
    bomb.write_bytes(buf.getvalue())
    assert "zip bomb" in _refusal(c, handle_file(str(bomb)), api_name="/load_volume")

    junk = tmp / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b" + np.random.default_rng(1).bytes(3000))
    _refusal(c, handle_file(str(junk)), api_name="/load_volume")
    assert not (tmp.parent / "evil.dcm").exists()
    assert _key(_current(c)) == before


def test_prompts_and_slices_out_of_range(app):
    c = client(app["url"])
    p0 = _current(c)
    h, w, nz = p0["h"], p0["w"], p0["nz"]
    before = _key(p0)
    for x, y, z in [(w + 5, 3, -1), (-50, 3, -1), (3, h * 10, -1), (3, 3, nz + 100), (1e308, 3, -1)]:
        msg = _refusal(c, float(x), float(y), float(z), "Positive point", "Tumor", api_name="/add_point")
        assert "outside" in msg, msg
    # (a box that only overlaps the slice is the library's to clip: usam.interactive.checks.box)
    for box in [(w + 5, 0, w * 3, 5, -1), (2, 2, 2.2, 2.2, -1), (1, 1, 5, 5, 10**6)]:
        _refusal(c, *map(float, box), api_name="/add_box")
    msg = _refusal(c, -40.0, 40.0, api_name="/set_window")
    assert "at least 1 HU" in msg or "minimum value 1" in msg, msg
    assert _key(_current(c)) == before
    # navigation and ranges are clipped into the volume (accepted, never outside it)
    out = c.predict(float(10**9), api_name="/go_to_slice")
    assert out[0]["z"] == nz - 1
    out = c.predict(-5.0, api_name="/go_to_slice")
    assert out[0]["z"] == 0
    # the range inputs carry the volume's bounds: Gradio refuses values outside them by itself
    assert "minimum value 0" in _refusal(c, -5, 3, api_name="/segment_volume")
    assert "maximum value" in _refusal(c, 0, 10**6, api_name="/segment_volume")
    out = c.predict(nz - 1, 0, api_name="/segment_volume")            # reversed: accepted, ordered
    assert f"Segmented slices 0–{nz - 1}" in out[-1]


def test_study_database_untouched_by_the_hostile_calls(app):
    """None of the viewer's hostile calls wrote anything into the study database."""
    snap = table_snapshot(app["db"])
    c = client(app["url"])
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError):
        c.predict(1e308, 3.0, -1.0, "Positive point", "Tumor", api_name="/add_point")
    with pytest.raises(AppError):
        c.predict(3.0, 3.0, 1e12, "Positive point", "Tumor", api_name="/add_point")
    assert table_snapshot(app["db"]) == snap
