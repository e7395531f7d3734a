"""Issue 13 §1, §2, §6 and issue 17 (loading) replayed through the launched app's public API on
127.0.0.1 (gradio_client, raw HTTP), as an anonymous visitor would: a detached NRRD header, a
130 KB NIfTI of 512^3 zeros, a zip of 300 x 1 MiB members, another session's export path given
to /load_volume, hostile session files for /replay_session. Each is refused with one clear
message (no server path, no exception name), memory stays bounded (the server runs in this
process: tracemalloc sees its allocations), and no file of the server changes."""
from __future__ import annotations

import gzip
import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.reliability.helpers import client, val
from tests.reliability.live import launched_small_study_app

MB = 1 << 20


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec_uploads")
    with launched_small_study_app(tmp) as (app_url, url):
        yield {"url": app_url, "tmp": tmp}


def _refused(c, *args, api_name: str) -> str:
    """The one message of a refused call; it must be a user message (no paths, no class names)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        c.predict(*args, api_name=api_name)
    msg = str(e.value)
    assert msg.strip() and not msg.startswith("Internal error"), msg
    for leak in ("/tmp", "/proc", "gradio", "Error(", "KeyError", "Traceback"):
        assert leak not in msg, (leak, msg)
    return msg


def _state(c) -> tuple:
    p = c.predict(api_name="/init_session")[0]
    return tuple(repr(p.get(k)) for k in ("name", "nz", "z", "w", "h", "points", "slice", "overlay"))


def test_detached_nrrd_header_reads_nothing(app):
    from gradio_client import handle_file

    secret = app["tmp"] / "server_secret.txt"
    secret.write_bytes(b"USAM_STUDY_ADMIN_PASSWORD=s3cret\n" * 16)
    before = secret.stat()
    c = client(app["url"])
    key = _state(c)
    up = app["tmp"] / "x.nrrd"
    up.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nspacings: 1 1 1\nencoding: raw\n"
                   f"data file: {secret}\n".encode())
    msg = _refused(c, handle_file(str(up)), api_name="/load_volume")
    assert "separate data file" in msg
    for attack in ("/proc/self/environ", "/etc/passwd"):
        up.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: raw\ndata file: {attack}\n"
                       .encode())
        assert "separate data file" in _refused(c, handle_file(str(up)), api_name="/load_volume")
    assert _state(c) == key and secret.read_bytes() == b"USAM_STUDY_ADMIN_PASSWORD=s3cret\n" * 16
    assert secret.stat().st_mtime == before.st_mtime


def _zeros_512(path: Path) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 512))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        for _ in range(16):
            f.write(bytes(8 * MB))
    return path


def test_small_gzip_of_512_cubed_refused_with_bounded_memory(app):
    from gradio_client import handle_file

    up = _zeros_512(app["tmp"] / "zeros512.nii.gz")
    assert up.stat().st_size < 200_000
    c = client(app["url"])
    key = _state(c)
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        msg = _refused(c, handle_file(str(up)), api_name="/load_volume")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "too large" in msg or "memory" in msg, msg
    assert peak < 64 * MB, f"peak {peak / MB:.0f} MiB for a refused 130 KB upload"
    assert _state(c) == key


def test_zip_of_300_members_refused_before_writing(app, monkeypatch, tmp_path):
    import contextlib

    import usam.volumes.reader as V
    from gradio_client import handle_file

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(300):
            zf.writestr(f"s/{i:03d}.dcm", bytes(MB))
    up = app["tmp"] / "wide.zip"
    up.write_bytes(buf.getvalue())
    assert up.stat().st_size < 400_000
    extracted = tmp_path / "extracted"

    @contextlib.contextmanager
    def kept(**kw):
        extracted.mkdir(exist_ok=True)
        yield str(extracted)

    monkeypatch.setattr(V.tempfile, "TemporaryDirectory", kept)
    c = client(app["url"])
    msg = _refused(c, handle_file(str(up)), api_name="/load_volume")
    assert "zip bomb" in msg or "expands to" in msg, msg
    assert sum(p.stat().st_size for p in extracted.rglob("*") if p.is_file()) == 0


def _call(url: str, api: str, data: list, session_hash: str | None = None) -> tuple[str, str]:
    """Raw Gradio /call API: (event type, data) of one call."""
    body = {"data": data}
    if session_hash:
        body["session_hash"] = session_hash
    r = httpx.post(f"{url}gradio_api/call{api}", json=body, timeout=120)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    kind, payload = "", ""
    with httpx.stream("GET", f"{url}gradio_api/call{api}/{event_id}", timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
                if kind in ("complete", "error"):
                    break
    return kind, payload


def test_another_sessions_export_path_is_never_deleted(app):
    kind, payload = _call(app["url"], "/export_nifti", [])
    assert kind == "complete", (kind, payload)
    files = next(v for v in json.loads(payload) if isinstance(v, list))   # the State output comes as null
    path = Path(files[0]["path"])
    assert path.exists()
    content = path.read_bytes()
    kind, payload = _call(app["url"], "/load_volume", [{"path": str(path), "meta": {"_type": "gradio.FileData"}}])
    assert kind == "error", (kind, payload)
    assert "not uploaded" in payload and str(path) not in payload, payload
    assert path.exists() and path.read_bytes() == content   # the other session's download still works
    r = httpx.get(f"{app['url']}gradio_api/file={path}", timeout=60)
    assert r.status_code == 200 and r.content == content


def _session_file(folder: Path, data: dict, name: str) -> str:
    p = folder / name
    p.write_text(json.dumps(data))
    return str(p)


def test_replay_goes_through_the_live_validation(app):
    from gradio_client import handle_file

    c = client(app["url"], downloads=app["tmp"] / "dl")
    key = _state(c)
    out = c.predict(api_name="/export_session")
    rec = json.loads(Path(out[0][0] if isinstance(out, (list, tuple)) and isinstance(out[0], list) else
                          (out[0] if isinstance(out, (list, tuple)) else out)).read_text())
    for width, level in [(float("nan"), 40), (0, 40), (-500, 40), (400, float("inf"))]:
        bad = dict(rec, window={"width": width, "level": level})
        p = app["tmp"] / f"w{width}_{level}.json"
        p.write_text(json.dumps(bad))                     # json writes NaN / Infinity literals
        msg = _refused(c, handle_file(str(p)), api_name="/replay_session")
        assert "window" in msg, msg
    bad = dict(rec, actions=[{"op": "window", "width": float("nan"), "level": 0}])
    assert "window" in _refused(c, handle_file(_session_file(app["tmp"], bad, "a.json")), api_name="/replay_session")
    bad = dict(rec, actions=[{"op": "point", "z": 1}])
    assert "lacks" in _refused(c, handle_file(_session_file(app["tmp"], bad, "b.json")), api_name="/replay_session")
    many = [{"op": "point", "x": 10, "y": 10, "label": 1, "cls": 1, "z": 1}] * 1001
    msg = _refused(c, handle_file(_session_file(app["tmp"], dict(rec, actions=many), "c.json")),
                   api_name="/replay_session")
    assert "over the limit of 1000" in msg, msg
    bad = dict(rec, volume="x")
    assert "session file" in _refused(c, handle_file(_session_file(app["tmp"], bad, "d.json")),
                                      api_name="/replay_session")
    assert _state(c) == key


def test_new_upload_named_by_file_resets_results_and_counts_slices(app):
    """Issue 17: the upload's name is its file name; the demo choice, results, downloads, agreement
    table and replay message of the previous volume are cleared; the slice line counts right."""
    from gradio_client import handle_file

    c = client(app["url"], downloads=app["tmp"] / "dl2")
    c.predict(api_name="/init_session")
    data = (np.arange(101 * 16 * 12) % 300).reshape(12, 16, 101).astype(np.int16)
    up = app["tmp"] / "Pelvis CT 2024.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-0.8, -0.8, 2.5, 1])), str(up))
    out = c.predict(handle_file(str(up)), api_name="/load_volume")
    payload, status = out[0], out[2]
    assert payload["name"] == "Pelvis CT 2024.nii.gz" and payload["nz"] == 101
    assert "slices 0–100, 101 in all" in status, status
    assert val(out[9]) is None                              # the demo dropdown no longer names a phantom
    assert val(out[10]) in ([], None) or not val(out[10]).get("data")   # measurements cleared
    assert val(out[13]) in (None, [])                       # downloads of the old volume cleared
    assert val(out[15]) == ""                               # replay message cleared
    assert "Pelvis CT 2024.nii.gz" in val(out[-1])
    out = c.predict("Demo phantom 2", api_name="/load_demo_case")
    assert val(out[9]) == "Demo phantom 2"
