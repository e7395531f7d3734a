"""Gradio's image cache under concurrent identical outputs (app/gradio_cache.py).

gradio 6.31.0 rewrites a cached image in place (truncate, then write) every time the same image
is produced again; a client downloading it at that moment gets a truncated or empty body. The
race harness below saves one image from several threads while another thread reads the file the
way the server streams it (stat for Content-Length, then read): with Gradio's own function it
sees partial files at once, with the app's atomic writer never.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app import gradio_cache


def race(save, arr: np.ndarray, cache: Path, seconds: float, stop_after_bad: int = 0) -> dict:
    """Two writer threads call save(arr) in a loop; one reader checks every read is complete.

    The file does not exist at the start, so the first writes also race each other. Returns
    counts and the bad reads (size announced by stat, bytes actually read)."""
    stop = threading.Event()
    bad: list[tuple[int, int]] = []
    counts = {"reads": 0, "saves": 0}
    paths: set[str] = set()
    errors: list[str] = []
    from PIL import Image

    from gradio import processing_utils as pu

    expected = pu.encode_pil_to_bytes(Image.fromarray(arr), "png")

    def writer() -> None:
        try:
            while not stop.is_set():
                paths.add(save(arr, str(cache), format="png"))
                counts["saves"] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(repr(exc))

    def reader() -> None:
        while not paths and not stop.is_set():
            time.sleep(0)
        path = next(iter(paths), None)
        while path and not stop.is_set():
            size = os.stat(path).st_size              # what FileResponse sends as Content-Length
            with open(path, "rb") as f:
                data = f.read()
            counts["reads"] += 1
            if size != len(expected) or data != expected:
                bad.append((size, len(data)))

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(2)]
    threads.append(threading.Thread(target=reader, daemon=True))
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and not (stop_after_bad and len(bad) >= stop_after_bad):
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(60)
    return {**counts, "bad": bad, "paths": paths, "errors": errors, "expected": expected}


def _image(n: int = 64) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 255, (n, n, 3), dtype=np.uint8)


@pytest.fixture
def gradio_own():
    """Gradio's own cache writers for the duration of a test, the app's afterwards as before."""
    was = gradio_cache.installed()
    gradio_cache.uninstall()
    try:
        yield
    finally:
        if was:
            gradio_cache.install()


def test_gradio_own_writer_exposes_partial_files(tmp_path, gradio_own):
    """The bug this module works around (gradio 6.31.0): the unpatched function truncates in place.

    If this starts failing after a Gradio upgrade, check whether Gradio now writes atomically
    itself; then app/gradio_cache.py can go."""
    from gradio import processing_utils as pu

    assert not gradio_cache.installed()
    res = race(pu.save_img_array_to_cache, _image(), tmp_path, seconds=30, stop_after_bad=3)
    assert not res["errors"], res["errors"]
    assert res["bad"], f"no partial read in {res['reads']} reads / {res['saves']} saves"
    assert any(n < len(res["expected"]) for _, n in res["bad"])


@pytest.mark.parametrize("n", [8, 64, 256])
def test_atomic_writer_never_exposes_partial_files(tmp_path, n):
    from gradio import processing_utils as pu

    assert gradio_cache.install()
    assert gradio_cache.installed()
    res = race(pu.save_img_array_to_cache, _image(n), tmp_path, seconds=3)
    assert not res["errors"], res["errors"]
    assert res["reads"] > 50 and res["saves"] > 10, res
    assert res["bad"] == []
    # same path and file name as Gradio's own function, and no temporary files left behind
    (path,) = res["paths"]
    assert Path(path).name == "image.png" and Path(path).parent.parent == tmp_path.resolve()
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["image.png"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(gradio_cache.FILE_MODE)


def test_replacing_writes_are_atomic(tmp_path):
    """The write path itself (not the 'already there' shortcut): a reader of a file that is
    replaced again and again by contents of other sizes always sees one complete version."""
    target = tmp_path / "f.bin"
    versions = [bytes([i]) * (1000 + 37 * i) for i in range(1, 6)]
    stop = threading.Event()
    bad: list[int] = []
    reads = [0]
    gradio_cache.write_once_atomic(target, versions[0])

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            gradio_cache.write_once_atomic(target, versions[i % len(versions)])

    def reader() -> None:
        while not stop.is_set():
            with open(target, "rb") as f:
                data = f.read()
            reads[0] += 1
            if data not in versions:
                bad.append(len(data))

    ts = [threading.Thread(target=writer, daemon=True) for _ in range(2)] + [threading.Thread(target=reader,
                                                                                               daemon=True)]
    for t in ts:
        t.start()
    time.sleep(2)
    stop.set()
    for t in ts:
        t.join(60)
    assert reads[0] > 20 and bad == []
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_truncated_leftover_is_replaced_and_existing_file_reused(tmp_path):
    from gradio import processing_utils as pu

    gradio_cache.install()
    arr = _image(32)
    path = Path(pu.save_img_array_to_cache(arr, str(tmp_path), format="png"))
    good = path.read_bytes()
    path.write_bytes(good[:10])                       # a partial file left by a crash
    assert Path(pu.save_img_array_to_cache(arr, str(tmp_path), format="png")) == path
    assert path.read_bytes() == good
    ino = path.stat().st_ino
    os.utime(path, (1, 1))
    assert Path(pu.save_img_array_to_cache(arr, str(tmp_path), format="png")) == path
    st = path.stat()
    assert st.st_ino == ino and st.st_mtime > 1       # not rewritten, only touched (delete_cache age)
    # bytes outputs (gr.Audio / gr.Video / gr.File from bytes) take the same route
    p2 = Path(pu.save_bytes_to_cache(b"RIFF0000WAVEdata", "clip", str(tmp_path)))
    assert p2.name == "clip.wav" and p2.read_bytes() == b"RIFF0000WAVEdata"


def test_build_app_installs_atomic_cache_writes(gradio_own):
    from app.context import AppContext
    from app.main import build_app
    from tests.app.conftest import quiet_config

    assert not gradio_cache.installed()
    build_app(AppContext(quiet_config()))
    assert gradio_cache.installed()
    assert gradio_cache.install()                      # idempotent
