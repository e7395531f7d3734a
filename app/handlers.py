"""What every UI event does, as plain functions on a Session (no Gradio; the UI and the bench call these)."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np

from app import measure
from app.context import SESSION_BYTES_PER_VOXEL, AppContext, AppLimits
from app.render import (WINDOW_PRESETS, Window, apply_window, overlay_rgba, png_data_url,
                        reformat_views)
from app.state import CLASS_CHOICES, MODES, PromptItem, Session, clamp_range
from usam.errors import PromptError, UsamError, VolumeError

log = logging.getLogger("usam.app")

DEMO_CASES = ("Demo phantom 1", "Demo phantom 2", "Demo phantom 3")
SESSION_FORMAT = "usam-studio-session"
Progress = Callable[[float, str], Any] | None


def as_number(v: Any, what: str) -> float:
    """A finite number from a UI / API value; a clear PromptError otherwise (nothing is changed)."""
    if v is None or isinstance(v, (list, tuple, dict)):
        raise PromptError(f"{what} must be a number")
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"{what} must be a number, not {str(v)[:20]!r}") from None
    if not math.isfinite(f):
        raise PromptError(f"{what} must be a finite number")
    return f


def _range_numbers(start: Any, end: Any) -> tuple[float | None, float | None]:
    return (None if start is None else as_number(start, "the first slice"),
            None if end is None else as_number(end, "the last slice"))


# --- loading ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def demo_case(index: int, size: str) -> Any:
    """A demo phantom case (usam.phantom), generated once per process and shared read-only."""
    from usam import phantom

    if hasattr(phantom, "demo_case"):
        return phantom.demo_case(index, size)
    return phantom.generate_case(seed=1000 + index, size=size)


def _volume_hash(volume: Any) -> str:
    """usam.volumes.volume_hash, with a local fallback of the same definition."""
    try:
        from usam.volumes import volume_hash

        return volume_hash(volume)
    except ImportError:
        h = hashlib.sha256(np.ascontiguousarray(volume.array, dtype=np.float32).tobytes())
        h.update(np.asarray(volume.spacing, dtype=np.float64).tobytes())
        return h.hexdigest()


def _limits(ctx: AppContext) -> AppLimits:
    """The start-up limits (AppLimits defaults for a context built without them)."""
    return getattr(getattr(ctx, "config", None), "limits", None) or AppLimits()


def check_session_memory(ctx: AppContext, shape: tuple[int, ...]) -> None:
    """Refuse a volume whose session (volume, label map, reference) would exceed the memory budget."""
    lim = _limits(ctx)
    need = int(np.prod(shape)) * SESSION_BYTES_PER_VOXEL
    if need > lim.session_memory_bytes:
        raise VolumeError(f"a {' × '.join(map(str, shape[::-1]))} volume needs about {need >> 20} MiB per session, "
                          f"over this server's limit of {lim.session_memory_mb} MiB")


# every session of this process, for the process-wide memory budget (AppLimits.total_memory_mb)
_LIVE: "weakref.WeakValueDictionary[int, Session]" = weakref.WeakValueDictionary()   # id -> session
_MEMORY_LOCK = threading.Lock()
_RESERVED = [0]          # bytes granted to reads in progress


def live_session_bytes() -> int:
    """Bytes held by the open sessions of this process (closed ones count 0)."""
    return sum(s.held_bytes() for s in list(_LIVE.values()))


@contextlib.contextmanager
def _memory_grant(ctx: AppContext):
    """Bytes one upload may use: the session budget, or less when the open sessions hold most of
    the process budget; refused when too little is left (other visitors' volumes are not evicted)."""
    lim = _limits(ctx)
    with _MEMORY_LOCK:
        free = (int(lim.total_memory_mb) << 20) - live_session_bytes() - _RESERVED[0]
        grant = min(lim.session_memory_bytes, free)
        if grant < min(64 << 20, lim.session_memory_bytes):
            raise VolumeError("the server holds too many volumes right now: try again in a few minutes")
        _RESERVED[0] += grant
    try:
        yield grant
    finally:
        with _MEMORY_LOCK:
            _RESERVED[0] -= grant


def start_session(ctx: AppContext, volume: Any, name: str, ground_truth: np.ndarray | None = None,
                  is_upload: bool = False) -> Session:
    """A fresh session on a volume: empty label map, new predictor, viewer on the middle slice."""
    arr = np.asarray(volume.array)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise VolumeError(f"expected a 3-D volume, got shape {arr.shape}")
    check_session_memory(ctx, arr.shape)
    lim = _limits(ctx)
    s = Session(volume=volume, volume_hash=_volume_hash(volume), name=name,
                labels=np.zeros(arr.shape, dtype=np.uint8), is_upload=is_upload, max_points=lim.max_points_per_slice,
                max_history=lim.max_history, max_history_bytes=lim.max_history_mb << 20)
    s.predictor = ctx.new_predictor(volume)
    if ground_truth is not None:
        s.ground_truth = np.asarray(ground_truth, dtype=np.uint8)
        s.reference, s.reference_name = s.ground_truth, "phantom ground truth"
        fg = np.flatnonzero(s.ground_truth.any(axis=(1, 2)))
        s.z = int(fg[len(fg) // 2]) if fg.size else arr.shape[0] // 2  # open where the rectum is
    else:
        s.z = arr.shape[0] // 2
    s.cross_xy = (arr.shape[2] // 2, arr.shape[1] // 2)
    s.actions.append({"op": "load", "volume_hash": s.volume_hash})
    _LIVE[id(s)] = s
    return s


def load_demo(ctx: AppContext, name_or_index: str | int = 0) -> Session:
    """Session on a demo phantom (by index or by its name in DEMO_CASES)."""
    if isinstance(name_or_index, str) and name_or_index not in DEMO_CASES:
        raise VolumeError(f"unknown demo case {name_or_index[:40]!r}; choose from {list(DEMO_CASES)}")
    index = DEMO_CASES.index(name_or_index) if isinstance(name_or_index, str) else int(name_or_index)
    if not 0 <= index < len(DEMO_CASES):
        raise VolumeError(f"there are {len(DEMO_CASES)} demo cases")
    case = demo_case(index, ctx.config.demo_size)
    return start_session(ctx, case.volume, DEMO_CASES[index], case.labels)


_NAME_CHARS = re.compile(r"[^\w .()+\-]+", re.UNICODE)


def upload_name(path: str | Path) -> str:
    """The name an upload is shown by: its file name only (no folder), printable, at most 80 characters."""
    base = re.split(r"[\\/]", str(path))[-1]
    clean = _NAME_CHARS.sub("_", base).strip(" ._") or "upload"
    return clean if len(clean) <= 80 else clean[:38] + "…" + clean[-38:]


def load_file(ctx: AppContext, path: str | Path, delete_after: bool = True) -> Session:
    """Session on an uploaded NIfTI / zipped DICOM / NRRD, named by its file name.

    delete_after: remove the file once read (privacy). The caller passes True only for a file
    this session uploaded itself, never for a path it was merely given (issue 13 §6)."""
    from usam.volumes import read_volume

    path = Path(path)
    try:
        with _memory_grant(ctx) as grant:
            try:
                volume = read_volume(path, limits=_limits(ctx).volume_limits(grant))
            except UsamError:
                raise
            except Exception as exc:  # a reader library's own error: say what the user can do; the log gets the rest
                log.warning("reading an upload failed:\n%s", traceback.format_exc())
                raise VolumeError(f"could not read {upload_name(path)!r} as NIfTI, zipped DICOM or NRRD") from exc
            return start_session(ctx, volume, upload_name(path), is_upload=True)
    finally:
        if delete_after:
            path.unlink(missing_ok=True)  # privacy: no copy of the upload outlives the read


def _md(text: str) -> str:
    """Text shown inside Markdown as typed (an upload's name is the visitor's)."""
    return re.sub(r"([\\`*_\[\]#|<>~])", r"\\\1", str(text))


def volume_summary(s: Session) -> str:
    """Markdown: dimensions, spacing, orientation, source of the loaded volume."""
    v = s.volume
    nz, ny, nx = s.labels.shape
    sz, sy, sx = (float(t) for t in v.spacing)
    src = v.source if isinstance(v.source, dict) else {}
    orient = "shown LPS+ (radiological: patient right on screen left, anterior up)"
    try:
        import nibabel as nib

        # orientation of the file's own voxel axes, from its on-disk affine
        disk_affine = src.get("affine_on_disk")
        ax = "".join(nib.aff2axcodes(np.asarray(disk_affine if disk_affine is not None else v.affine)))
        orient += f" · file axes {ax}"
    except Exception:
        pass
    on_disk = src.get("shape_on_disk")
    return (f"**{_md(s.name)}** · {nx} × {ny} × {nz} voxels (x × y × z) · spacing {sx:.2f} × {sy:.2f} × {sz:.2f} mm"
            f" · {orient}" + (f" · on disk {tuple(on_disk)}" if on_disk else "")
            + f" · hash `{s.volume_hash[:12]}`")


# --- prompts and predictions -----------------------------------------------------------------
def model_prompts(items: tuple[PromptItem, ...]) -> Any:
    """Session prompts -> usam.prompts.SlicePrompts in slice pixels (None if empty); the library converts."""
    from usam.prompts import SlicePrompts

    pts = [p for p in items if p.kind == "point"]
    boxes = [p for p in items if p.kind == "box"][-1:]  # one box per slice: the latest
    if not pts and not boxes:
        return None
    return SlicePrompts(points=[[p.x, p.y] for p in pts], point_labels=[p.label for p in pts],
                        point_classes=[p.cls for p in pts], boxes=[list(b.box) for b in boxes],
                        box_classes=[0] * len(boxes))  # union box, as U-SAM/B


def _predict(s: Session, z: int, items: tuple[PromptItem, ...]) -> np.ndarray:
    """Run the predictor on slice z; records the timing shown in the page."""
    t0 = time.perf_counter()
    res = s.predictor.predict(z, model_prompts(items))
    s.last_timing = {"z": z, "decoder_ms": float(res.decoder_ms), "encoder_ms": float(res.encoder_ms),
                     "cached": bool(res.cached), "predict_ms": (time.perf_counter() - t0) * 1000.0,
                     "prompts": len(items)}
    s.timings.append(s.last_timing)
    del s.timings[:-200]
    return np.asarray(res.labels, dtype=np.uint8)


def _check_z(s: Session, z: int | float | None) -> int:
    """The slice an action applies to (default: the current one), validated."""
    z = s.z if z is None else int(round(as_number(z, "the slice index")))
    if not 0 <= z < s.nz:
        raise PromptError(f"slice {z} is outside the volume (0..{s.nz - 1})")
    return z


def _check_xy(s: Session, x: float, y: float) -> tuple[float, float]:
    """A pixel position that must lie on the slice."""
    h, w = s.slice_shape
    x, y = as_number(x, "x"), as_number(y, "y")
    if not (math.isfinite(x) and math.isfinite(y)) or not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        raise PromptError(f"the point ({x:.1f}, {y:.1f}) is outside the {w} × {h} slice")
    return x, y


def _check_prompt_count(s: Session, z: int, kept: tuple[PromptItem, ...]) -> None:
    """At most s.max_points prompts on one slice (each one re-runs the decoder and adds an undo state)."""
    if len(kept) >= s.max_points:
        raise PromptError(f"slice {z} already has {len(kept)} prompts (at most {s.max_points}): "
                          "undo or clear some first")


def add_point(s: Session, x: float, y: float, positive: bool = True, cls: int = 1, z: int | None = None) -> None:
    """A positive / negative point of a class on a slice; the slice is re-predicted and locked."""
    z = _check_z(s, z)
    x, y = _check_xy(s, x, y)
    if int(cls) not in (1, 2):
        raise PromptError("the point class must be 1 (normal rectum) or 2 (tumor)")
    item = PromptItem("point", x, y, 1 if positive else 0, int(cls))
    _check_prompt_count(s, z, s.prompts(z))
    items = s.prompts(z) + (item,)
    labels = _predict(s, z, items)
    s.commit(z, items, labels, locked=True)
    s.z, s.cross_xy = z, (int(round(x)), int(round(y)))
    s.actions.append({"op": "point", "z": z, **item.to_dict()})


def add_box(s: Session, x0: float, y0: float, x1: float, y1: float, z: int | None = None) -> None:
    """A box on a slice (replaces that slice's previous box); re-predicted and locked."""
    z = _check_z(s, z)
    x0, y0 = _check_xy(s, x0, y0)
    x1, y1 = _check_xy(s, x1, y1)
    if abs(x1 - x0) < 1 or abs(y1 - y0) < 1:
        raise PromptError("the box is too small: drag across the structure")
    item = PromptItem.from_dict({"kind": "box", "box": [x0, y0, x1, y1]})
    _check_prompt_count(s, z, tuple(p for p in s.prompts(z) if p.kind != "box"))
    items = tuple(p for p in s.prompts(z) if p.kind != "box") + (item,)
    labels = _predict(s, z, items)
    s.commit(z, items, labels, locked=True)
    s.z, s.cross_xy = z, (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
    s.actions.append({"op": "box", "z": z, **item.to_dict()})


def undo(s: Session, z: int | None = None) -> bool:
    """Step back one action on a slice; False when there is nothing to undo."""
    z = _check_z(s, z)
    h = s.histories.get(z)
    snap = h.undo() if h else None
    if snap is None:
        return False
    s.restore(z, snap)
    s.z = z
    s.actions.append({"op": "undo", "z": z})
    return True


def redo(s: Session, z: int | None = None) -> bool:
    """Step forward one action on a slice; False when there is nothing to redo."""
    z = _check_z(s, z)
    h = s.histories.get(z)
    snap = h.redo() if h else None
    if snap is None:
        return False
    s.restore(z, snap)
    s.z = z
    s.actions.append({"op": "redo", "z": z})
    return True


def clear_slice(s: Session, z: int | None = None) -> None:
    """Remove a slice's prompts and mask (undoable); the slice is unlocked again."""
    z = _check_z(s, z)
    s.commit(z, (), np.zeros(s.slice_shape, np.uint8), locked=False)
    s.z = z
    s.actions.append({"op": "clear", "z": z})


def segment_slice(s: Session, z: int | None = None) -> None:
    """Segment one slice without prompts (undoable; replaces its prompts)."""
    z = _check_z(s, z)
    labels = _predict(s, z, ())
    s.commit(z, (), labels, locked=False)
    s.z = z
    s.actions.append({"op": "segment_slice", "z": z})


def _report(progress: Progress, done: int, total: int, what: str) -> None:
    """Forward progress (fraction, text) to the UI's progress bar when there is one."""
    if progress is not None:
        progress(done / max(total, 1), f"{what} {done}/{total}")


def segment_volume(s: Session, start: int | None = None, end: int | None = None,
                   progress: Progress = None, batch_size: int = 8) -> dict[str, Any]:
    """U-SAM without prompts over a slice range; locked (corrected) slices are kept."""
    lo, hi = clamp_range(*_range_numbers(start, end), s.nz)
    if hi < lo:
        lo, hi = hi, lo
    todo = [z for z in range(lo, hi + 1) if not s.locked(z)]
    t0 = time.perf_counter()
    if todo:
        # batched encoder over the unlocked slices; progress after each batch
        out = s.predictor.predict_volume(todo, batch_size=batch_size,
                                         progress=lambda done, total: _report(progress, done, total, "slices"))
        for z in todo:
            s.overwrite_unlocked(z, out[z])
    s.actions.append({"op": "segment_volume", "start": lo, "end": hi})
    return {"start": lo, "end": hi, "segmented": len(todo), "kept_locked": (hi - lo + 1) - len(todo),
            "seconds": time.perf_counter() - t0}


def propagate_box(s: Session, start: int | None = None, end: int | None = None,
                  progress: Progress = None, margin: float = 2.0) -> dict[str, Any]:
    """From the start slice's mask, box-prompt each next slice with the previous slice's mask box.

    Runs towards `end` (either direction); stops where the previous mask is empty; locked
    slices are kept and their masks seed the next slice.
    """
    from usam.prompts import box_from_mask

    lo, hi = clamp_range(*_range_numbers(start, end), s.nz)
    if not s.labels[lo].any():
        raise PromptError(f"slice {lo} has no mask to propagate from: segment or prompt it first")
    step = 1 if hi >= lo else -1
    zs = list(range(lo + step, hi + step, step))
    done, stopped_at = 0, None
    t0 = time.perf_counter()
    for i, z in enumerate(zs):
        prev = s.labels[z - step]
        if not prev.any():
            stopped_at = z
            break
        if not s.locked(z):
            prompts = box_from_mask(prev, margin=margin)
            t1 = time.perf_counter()
            res = s.predictor.predict(z, prompts)
            s.last_timing = {"z": z, "decoder_ms": float(res.decoder_ms), "encoder_ms": float(res.encoder_ms),
                             "cached": bool(res.cached), "predict_ms": (time.perf_counter() - t1) * 1000.0,
                             "prompts": 1}
            s.overwrite_unlocked(z, np.asarray(res.labels, np.uint8))
            done += 1
        _report(progress, i + 1, len(zs), "slices")
    s.actions.append({"op": "propagate", "start": lo, "end": hi, "margin": margin})
    return {"start": lo, "end": hi, "propagated": done, "stopped_at": stopped_at,
            "seconds": time.perf_counter() - t0}


# --- display settings ------------------------------------------------------------------------
def set_slice(s: Session, z: int | float) -> None:
    """Move the viewer to slice z (clipped)."""
    s.z = int(np.clip(int(round(as_number(z, "the slice index"))), 0, s.nz - 1))


def navigate(s: Session, delta: int | float) -> None:
    """Move the viewer by delta slices (keyboard / wheel)."""
    set_slice(s, s.z + int(delta))


def checked_window(width: Any, level: Any) -> Window:
    """A display window from any values: finite numbers, width at least 1 HU, else a PromptError."""
    width = as_number(width, "the window width")
    if width < 1:
        raise PromptError("the window width must be at least 1 HU")
    level = as_number(level, "the window level")
    if abs(width) > 1e6 or abs(level) > 1e6:
        raise PromptError("the window width and level must lie within ±1,000,000 HU")
    return Window(width, level)


def set_window(s: Session, width: float, level: float) -> None:
    """Manual display window (never changes the model input)."""
    s.window = checked_window(width, level)
    s.actions.append({"op": "window", "width": s.window.width, "level": s.window.level})


def set_window_preset(s: Session, name: str) -> None:
    """A named display window preset."""
    if name not in WINDOW_PRESETS:
        raise PromptError(f"unknown window preset {name!r}")
    set_window(s, *WINDOW_PRESETS[name])


def set_display(s: Session, opacity: float | None = None, visible: list[str] | tuple | None = None,
                mode: str | None = None, cls: str | int | None = None) -> None:
    """Overlay opacity, visible classes, prompt mode and point class."""
    opacity = None if opacity is None else float(np.clip(as_number(opacity, "the opacity"), 0.0, 1.0))
    if visible is not None:
        if isinstance(visible, str) or not isinstance(visible, (list, tuple)):
            raise PromptError("the visible classes must be a list of class names")
        bad = [v for v in visible if not isinstance(v, (str, int)) or (v not in CLASS_CHOICES and v not in (1, 2))]
        if bad:
            raise PromptError(f"unknown class {str(bad[0])[:30]!r}; choose from {list(CLASS_CHOICES)}")
    if cls is not None and (not isinstance(cls, (str, int)) or (cls not in CLASS_CHOICES and cls not in (1, 2))):
        raise PromptError(f"unknown class {str(cls)[:30]!r}; choose from {list(CLASS_CHOICES)}")
    if mode is not None and mode not in MODES:
        raise PromptError(f"unknown prompt mode {str(mode)[:30]!r}")
    if opacity is not None:
        s.opacity = opacity
    if visible is not None:
        s.visible = tuple(sorted(CLASS_CHOICES[v] if isinstance(v, str) else int(v) for v in visible))
    if mode is not None:
        if mode not in MODES:
            raise PromptError(f"unknown prompt mode {mode!r}")
        s.mode = mode
    if cls is not None:
        s.cls = CLASS_CHOICES[cls] if isinstance(cls, str) else int(cls)


# --- rendering -------------------------------------------------------------------------------
_MODE_KEYS = {MODES[0]: "pos", MODES[1]: "neg", MODES[2]: "box"}


def _slice_png(s: Session, z: int) -> str:
    """Windowed slice PNG, cached per (slice, window): scrolling back costs no re-encode."""
    cache = s.__dict__.setdefault("_png_cache", {})
    key = (z, s.window)
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = png_data_url(apply_window(np.asarray(s.volume.array[z]), s.window))
    return cache[key]


def viewer_payload(s: Session) -> dict[str, Any]:
    """Everything the browser canvas draws: slice, overlay, prompts, thumbnails, mode."""
    z = s.z
    h, w = s.slice_shape
    sz, sy, sx = (float(t) for t in s.volume.spacing)
    lab = s.labels[z]
    shown = bool(s.visible) and bool(np.isin(lab, s.visible).any())
    overlay = png_data_url(overlay_rgba(lab, s.visible)) if shown else ""
    views = reformat_views(np.asarray(s.volume.array), s.labels, s.volume.spacing, z,
                           s.cross_xy or (w // 2, h // 2), s.window, s.opacity, s.visible)
    s.view_nonce += 1
    hist = s.histories.get(z)
    return {
        "slice": _slice_png(s, z), "overlay": overlay, "w": w, "h": h, "z": z, "nz": s.nz,
        "sx": sx, "sy": sy, "sz": sz, "opacity": s.opacity,
        "points": [[p.x, p.y, p.label, p.cls] for p in s.prompts(z) if p.kind == "point"],
        "box": next((list(p.box) for p in reversed(s.prompts(z)) if p.kind == "box"), None),
        "mode": _MODE_KEYS.get(s.mode, "pos"), "cls": s.cls, "locked": s.locked(z),
        "can_undo": bool(hist and hist.can_undo), "can_redo": bool(hist and hist.can_redo),
        "window": [s.window.width, s.window.level],
        "sag": png_data_url(views["sagittal"]), "cor": png_data_url(views["coronal"]),
        "cross": list(s.cross_xy) if s.cross_xy else None, "ack": s.ack,
        "name": s.name, "nonce": s.view_nonce,
    }


def timing_text(s: Session, server_ms: float | None = None) -> str:
    """One line about the last prediction's server time."""
    t = s.last_timing
    if not t:
        return "No prediction yet: click on the slice (positive / negative point) or drag a box."
    enc = "features cached" if t.get("cached") else f"encoder {t.get('encoder_ms', 0):.0f} ms (first visit)"
    parts = [f"slice {t['z']}", f"decoder **{t['decoder_ms']:.1f} ms**", enc]
    if server_ms is not None:
        parts.append(f"server total {server_ms:.0f} ms")
    return "Server time: " + " · ".join(parts)


def slice_status(s: Session) -> str:
    """Slice number, lock state and prompt count."""
    z = s.z
    n = len(s.prompts(z))
    lock = " · **corrected, locked** (batch runs keep it)" if s.locked(z) else ""
    return (f"Slice **{z}** (slices 0–{s.nz - 1}, {s.nz} in all){lock} · {n} prompt{'s' if n != 1 else ''} "
            "on this slice")


# --- results, export, reference --------------------------------------------------------------
def results(s: Session) -> dict[str, Any]:
    """Measurements of the current label map."""
    return measure.measurements(s.labels, tuple(float(t) for t in s.volume.spacing))


def _safe_stem(s: Session) -> str:
    """A file stem without user-provided text (uploaded names can hold patient data)."""
    stem = "upload" if s.is_upload else (re.sub(r"[^A-Za-z0-9]+", "_", s.name).strip("_").lower() or "volume")
    return f"{stem}_{s.volume_hash[:8]}"


def export_nifti(s: Session, out_dir: Path | None = None) -> Path:
    """Multi-label NIfTI (0/1/2) with the input's affine, via usam.volumes.write_labelmap."""
    from usam.volumes import write_labelmap

    out = Path(out_dir or s.tmpdir()) / f"{_safe_stem(s)}_usam_labels.nii.gz"
    return Path(write_labelmap(s.labels, s.volume, out))


def export_measurements(s: Session, ctx: AppContext | None = None, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Measurements as CSV and JSON."""
    m = results(s)
    extra = {"volume_sha256": s.volume_hash}
    if ctx is not None:
        info = ctx.weights_info()
        extra.update({"model_sha256": info.sha256, "weights": info.label})
    if s.reference is not None:
        m["reference_metrics"] = reference_metrics(s)
    d = Path(out_dir or s.tmpdir())
    csv_path = d / f"{_safe_stem(s)}_measurements.csv"
    csv_path.write_text(measure.measurements_csv(m, extra))
    json_path = d / f"{_safe_stem(s)}_measurements.json"
    json_path.write_text(json.dumps({**m, **extra}, indent=2, default=_json_default))
    return csv_path, json_path


def _json_default(o: Any) -> Any:
    """numpy scalars and NaN-safe floats for json.dumps."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def labels_sha256(labels: np.ndarray) -> str:
    """sha256 of a label map (to check that a replay re-creates it)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()


def session_dict(s: Session, ctx: AppContext) -> dict[str, Any]:
    """The session as JSON: volume hash, model hash, every action with its prompts, the window."""
    info = ctx.weights_info()
    return {
        "format": SESSION_FORMAT, "version": 1,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "volume": {"sha256": s.volume_hash, "name": s.name, "shape": list(s.labels.shape),
                   "spacing": [float(t) for t in s.volume.spacing]},
        "model": {"sha256": info.sha256, "weights_kind": info.kind, "weights": info.label},
        "window": {"width": s.window.width, "level": s.window.level},
        "display": {"opacity": s.opacity, "visible": list(s.visible)},
        "actions": s.actions,
        "result": {"labels_sha256": labels_sha256(s.labels),
                   "voxels": {str(c): int((s.labels == c).sum()) for c in (1, 2)}},
    }


def export_session(s: Session, ctx: AppContext, out_dir: Path | None = None) -> Path:
    """Write the session JSON."""
    out = Path(out_dir or s.tmpdir()) / f"{_safe_stem(s)}_session.json"
    out.write_text(json.dumps(session_dict(s, ctx), indent=2, default=_json_default))
    return out


def read_session_file(path: str | Path, max_bytes: int = AppLimits().max_session_file_kb << 10) -> dict[str, Any]:
    """Parse and check a session JSON file (its size first: it is read whole)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise VolumeError(f"the session file is {size >> 10} KB, over the limit of {max_bytes >> 10} KB")
        d = json.loads(path.read_text(encoding="utf-8"))
    except VolumeError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise VolumeError("not a U-SAM Studio session file (it is not readable JSON)") from None
    if not isinstance(d, dict) or d.get("format") != SESSION_FORMAT or not isinstance(d.get("actions"), list):
        raise VolumeError("not a U-SAM Studio session file (format field missing)")
    vol = d.get("volume")
    if not isinstance(vol, dict) or not isinstance(vol.get("sha256"), str):
        raise VolumeError("not a U-SAM Studio session file (the volume's sha256 is missing)")
    for key in ("model", "result", "window"):
        if key in d and not isinstance(d[key], dict):
            raise VolumeError(f"the session file's {key!r} entry is malformed")
    return d


# op -> the keys its recorded action must carry
ACTION_KEYS = {"load": (), "point": ("x", "y", "label", "z"), "box": ("box", "z"), "undo": ("z",), "redo": ("z",),
               "clear": ("z",), "segment_slice": ("z",), "segment_volume": ("start", "end"),
               "propagate": ("start", "end"), "window": ("width", "level")}


def _action_cost(s: Session, a: dict[str, Any]) -> int:
    """Model runs an action costs (a range: its slices); checks the action's form on the way."""
    if not isinstance(a, dict):
        raise VolumeError("a session action is not an object")
    op = a.get("op")
    if not isinstance(op, str) or op not in ACTION_KEYS:
        raise VolumeError(f"unknown action {str(op)[:30]!r} in the session file")
    missing = [k for k in ACTION_KEYS[op] if k not in a]
    if missing:
        raise VolumeError(f"a {op!r} action lacks {', '.join(missing)}")
    if op == "box" and (not isinstance(a["box"], (list, tuple)) or len(a["box"]) != 4):
        raise VolumeError("a 'box' action needs four coordinates")
    if op in ("segment_volume", "propagate"):
        lo, hi = clamp_range(*_range_numbers(a["start"], a["end"]), s.nz)
        return abs(hi - lo) + 1
    return 1 if op in ("point", "box", "segment_slice") else 0


def apply_action(s: Session, a: dict[str, Any]) -> None:
    """Re-apply one recorded action to a session (the replay step), through the live handlers' checks."""
    _action_cost(s, a)
    op = a["op"]
    if op == "load":
        return
    if op == "point":
        if a["label"] not in (0, 1, True, False) or a.get("cls", 1) not in (1, 2):
            raise PromptError("a point's label must be 0 or 1 and its class 1 or 2")
        add_point(s, a["x"], a["y"], bool(a["label"]), int(a.get("cls", 1)), z=a["z"])
    elif op == "box":
        add_box(s, *a["box"], z=a["z"])
    elif op == "undo":
        undo(s, a["z"])
    elif op == "redo":
        redo(s, a["z"])
    elif op == "clear":
        clear_slice(s, a["z"])
    elif op == "segment_slice":
        segment_slice(s, a["z"])
    elif op == "segment_volume":
        segment_volume(s, a["start"], a["end"])
    elif op == "propagate":
        propagate_box(s, a["start"], a["end"], margin=as_number(a.get("margin", 2.0), "the propagation margin"))
    elif op == "window":
        set_window(s, a["width"], a["level"])


def replay_session(ctx: AppContext, data: dict[str, Any], base: Session) -> tuple[Session, dict[str, Any]]:
    """Re-create a session's masks on the same volume from its JSON; reports whether they match.

    Every action goes through the live handlers' validation; the whole file is checked (form,
    window, number of model runs against AppLimits.max_replay_actions) before the first one runs."""
    vol_hash = data.get("volume", {}).get("sha256") if isinstance(data.get("volume"), dict) else None
    if vol_hash != base.volume_hash:
        raise VolumeError("this session was recorded on a different volume: load that volume first "
                          f"(session volume {str(vol_hash)[:12]}, loaded {base.volume_hash[:12]})")
    actions = data.get("actions")
    if not isinstance(actions, list):
        raise VolumeError("not a U-SAM Studio session file (no actions)")
    limit = _limits(ctx).max_replay_actions
    if len(actions) > limit:
        raise VolumeError(f"the session file holds {len(actions)} actions, over the limit of {limit}")
    cost = sum(_action_cost(base, a) for a in actions)
    if cost > limit:
        raise VolumeError(f"replaying the session file would run the model {cost} times, over the limit of {limit}")
    window = None
    if "window" in data:
        w = data["window"]
        window = checked_window(w.get("width"), w.get("level"))
    s = start_session(ctx, base.volume, base.name, base.ground_truth, is_upload=base.is_upload)
    s.reference, s.reference_name = base.reference, base.reference_name
    try:
        for i, a in enumerate(actions):
            try:
                apply_action(s, a)
            except UsamError as exc:
                raise VolumeError(f"action {i + 1} of the session file ({a.get('op')}) was refused: {exc}") from None
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.warning("replay action %d malformed: %r", i + 1, exc)
                raise VolumeError(f"action {i + 1} of the session file ({str(a.get('op'))[:20]}) is malformed") from None
    except Exception:
        s.close()
        raise
    if window is not None:
        s.window = window
    info = ctx.weights_info()
    report = {
        "actions": len(actions),
        "same_model": data.get("model", {}).get("sha256") == info.sha256,
        "labels_match": data.get("result", {}).get("labels_sha256") == labels_sha256(s.labels),
    }
    return s, report


def load_reference(s: Session, path: str | Path, delete_after: bool = True, limits: Any = None) -> None:
    """Use an uploaded label map (same grid as the volume) as the reference (limits: usam VolumeLimits)."""
    from usam.volumes import read_labelmap

    path = Path(path)
    try:
        ref = read_labelmap(path, reference=s.volume, limits=limits)
    except UsamError:
        raise
    except Exception as exc:
        log.warning("reading a reference failed:\n%s", traceback.format_exc())
        raise VolumeError(f"could not read {upload_name(path)!r} as a label map") from exc
    finally:
        if delete_after:
            path.unlink(missing_ok=True)
    ref = np.asarray(ref)
    if ref.shape != s.labels.shape:
        raise VolumeError(f"the reference has shape {ref.shape}, the volume {s.labels.shape}")
    s.reference, s.reference_name = ref.astype(np.uint8), "uploaded label map"


def reference_metrics(s: Session, nsd_tolerance_mm: float = 2.0) -> dict[str, Any]:
    """Dice / IoU / NSD of the current labels against the reference."""
    from usam.metrics import case_metrics

    if s.reference is None:
        raise VolumeError("no reference label map: upload one first")
    return case_metrics(s.labels, s.reference, tuple(float(t) for t in s.volume.spacing),
                        nsd_tolerance_mm=nsd_tolerance_mm)


def metric_rows(m: dict[str, Any]) -> list[list[Any]]:
    """Table rows (class, Dice, IoU, NSD, HD95, predicted mL, reference mL)."""
    def f(v: Any, nd: int = 3) -> Any:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), nd)

    rows = []
    for c, name in ((1, "Normal rectum"), (2, "Tumor")):
        r = m["per_class"].get(c) or m["per_class"].get(str(c)) or {}
        rows.append([name, f(r.get("dice")), f(r.get("iou")), f(r.get("nsd")), f(r.get("hd95"), 2),
                     f(r.get("vol_pred_ml"), 2), f(r.get("vol_gt_ml"), 2)])
    mm = m.get("mean", {})
    rows.append(["Mean", f(mm.get("dice")), f(mm.get("iou")), f(mm.get("nsd")), f(mm.get("hd95"), 2), None, None])
    return rows
