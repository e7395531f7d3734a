"""What the viewer shows of a session: the payload its canvas draws, the slice status and timing lines."""
from __future__ import annotations

from typing import Any

import numpy as np

from app.render import apply_window, overlay_rgba, png_data_url, reformat_views
from app.segment.session import MODES, Session

_MODE_KEYS = {MODES[0]: "pos", MODES[1]: "neg", MODES[2]: "box"}
PNG_CACHE_SLICES = 64   # windowed slice PNGs kept per session (scrolling back costs no re-encode)


def slice_png(s: Session, z: int) -> str:
    """Windowed slice PNG, cached per (slice, window)."""
    key = (z, s.window)
    if key not in s.png_cache:
        if len(s.png_cache) > PNG_CACHE_SLICES:
            s.png_cache.clear()
        s.png_cache[key] = png_data_url(apply_window(np.asarray(s.volume.array[z]), s.window))
    return s.png_cache[key]


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
    inter = s.interactive
    items = inter.prompts(z)
    return {
        "slice": slice_png(s, z), "overlay": overlay, "w": w, "h": h, "z": z, "nz": s.nz,
        "sx": sx, "sy": sy, "sz": sz, "opacity": s.opacity,
        "points": [[p.x, p.y, p.label, p.cls] for p in items if p.kind == "point"],
        "box": next((list(p.box) for p in reversed(items) if p.kind == "box"), None),
        "mode": _MODE_KEYS.get(s.mode, "pos"), "cls": s.cls, "locked": inter.locked(z),
        "can_undo": inter.can_undo(z), "can_redo": inter.can_redo(z), "rules": s.rules,
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
    """Slice number, lock state, prompt count and, when on, the prompt rules (post-processing is never hidden)."""
    z = s.z
    n = len(s.interactive.prompts(z))
    lock = " · **corrected, locked** (range runs keep it, propagation stops at it)" if s.interactive.locked(z) else ""
    rules = f" · **prompt rules: {s.rules}** (post-processing on)" if s.rules != "none" else ""
    return (f"Slice **{z}** (slices 0–{s.nz - 1}, {s.nz} in all){lock} · {n} prompt{'s' if n != 1 else ''} "
            f"on this slice{rules}")
