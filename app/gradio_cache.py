"""Atomic writes into Gradio's file cache (workaround for a race in gradio 6.x, seen on 6.31.0).

Why: `gradio.processing_utils.save_pil_to_cache` (behind every numpy / PIL output of gr.Image,
gr.ImageEditor, gr.Gallery, gr.AnnotatedImage) and `save_bytes_to_cache` store the file under a
content-hash path and call `Path.write_bytes` on it unconditionally. When two requests produce
the same image at the same time (the study tab: every reader on a slice gets the same windowed
background and often the same empty layer), the second call truncates and rewrites the file
that the server is already streaming to the first client: the response announces the size from
`stat` and then sends 0 bytes ("peer closed connection without sending complete message body"
in gradio_client, a broken image in the browser). Gradio's own `save_file_to_cache` already
writes under a temporary name and renames; this module gives the two functions above the same
behaviour:

- the file already exists with the expected size: it is not rewritten (same hash, same bytes),
  only touched, so that `delete_cache` (which ages files by ctime) does not drop a file that is
  being handed out again;
- otherwise the bytes go to a temporary file in the same directory, then `os.replace` moves it
  into place: a reader sees either the old complete file or the new complete file, never a
  truncated one.

The paths and file names are exactly Gradio's (same hash function, same names), so nothing else
changes. `install()` is called by app.main.build_app; it is idempotent. When a future Gradio
writes atomically itself this module can go (tests/app/test_gradio_cache.py shows the race).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("usam.app")

_LOCK = threading.Lock()
_INSTALLED = False
_NAMES = ("save_pil_to_cache", "save_bytes_to_cache")
_ORIGINALS: dict = {}      # Gradio's own functions, kept for tests and uninstall()
FILE_MODE = 0o644          # what write_bytes gives under the usual umask (mkstemp makes 0o600)


def write_once_atomic(path: str | Path, data: bytes) -> str:
    """Put `data` at `path` (a content-addressed cache path) without ever exposing a partial file.

    Returns the resolved path as a string (what Gradio's functions return)."""
    path = Path(path)
    try:
        if path.stat().st_size == len(data):
            os.utime(path)                      # keep it alive for delete_cache (ctime ageing)
            return str(path.resolve())
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return str(path.resolve())


def _make_replacements(pu):
    """Drop-in replacements of processing_utils.save_pil_to_cache / save_bytes_to_cache."""

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        bytes_data = pu.encode_pil_to_bytes(img, format)
        temp_dir = Path(cache_dir) / pu.hash_bytes(bytes_data)
        temp_dir.mkdir(exist_ok=True, parents=True)
        return write_once_atomic((temp_dir / f"{name}.{format}").resolve(), bytes_data)

    def save_bytes_to_cache(data: bytes, file_name: str, cache_dir: str) -> str:
        path = Path(cache_dir) / pu.hash_bytes(data)
        path.mkdir(exist_ok=True, parents=True)
        if not Path(file_name).suffix:
            file_name = file_name + pu.detect_audio_format(data)
        return write_once_atomic(path / Path(file_name).name, data)

    save_pil_to_cache.__usam_atomic__ = True          # type: ignore[attr-defined]
    save_bytes_to_cache.__usam_atomic__ = True        # type: ignore[attr-defined]
    from gradio.profiling import traced_sync        # keep Gradio's profiling phases (gradio 6.31 pinned)

    save_pil_to_cache_t = traced_sync("postprocess_save_pil_to_cache")(save_pil_to_cache)
    save_bytes_to_cache_t = traced_sync("postprocess_save_bytes_to_cache")(save_bytes_to_cache)
    save_pil_to_cache_t.__usam_atomic__ = True    # type: ignore[attr-defined]
    save_bytes_to_cache_t.__usam_atomic__ = True  # type: ignore[attr-defined]
    return save_pil_to_cache_t, save_bytes_to_cache_t


def install() -> bool:
    """Replace Gradio's non-atomic cache writers in this process. True when they are in place.

    Callers in gradio look the functions up on the module at call time
    (`processing_utils.save_pil_to_cache(...)`, and save_img_array_to_cache calls the module
    global), so replacing the module attributes covers every component."""
    global _INSTALLED
    from gradio import processing_utils as pu

    with _LOCK:
        if _INSTALLED and installed():
            return True
        needed = ("save_pil_to_cache", "save_bytes_to_cache", "encode_pil_to_bytes", "hash_bytes",
                  "detect_audio_format")
        missing = [n for n in needed if not hasattr(pu, n)]
        if missing:   # a Gradio that reorganised these: keep it as it is, but say so
            log.warning("gradio_cache: gradio.processing_utils lacks %s; atomic cache writes not installed", missing)
            return False
        for n in _NAMES:
            f = getattr(pu, n)
            if not getattr(f, "__usam_atomic__", False):
                _ORIGINALS[n] = f
        pu.save_pil_to_cache, pu.save_bytes_to_cache = _make_replacements(pu)
        _INSTALLED = True
        return True


def installed() -> bool:
    from gradio import processing_utils as pu

    return all(getattr(getattr(pu, n, None), "__usam_atomic__", False) for n in _NAMES)


def uninstall() -> None:
    """Put Gradio's own functions back (tests)."""
    global _INSTALLED
    from gradio import processing_utils as pu

    with _LOCK:
        for n, f in _ORIGINALS.items():
            setattr(pu, n, f)
        _INSTALLED = False
