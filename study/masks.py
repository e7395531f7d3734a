"""Label maps between the study page and the server, and shape-based interpolation. Pure functions.

The page sends a slice's label map at the slice's own size, never through an image:
    "rle:H:W:v,n,v,n,..."   run-length pairs (label v repeated n times, row-major)
    "b64:H:W:<base64>"      the H*W uint8 labels, base64 (for noisy masks where RLE is longer)
decode_labels() checks the size named in the header against the case's slice size before it
allocates anything, so a payload for another size (or a huge one) costs only its own text.
"""
from __future__ import annotations

import base64
import binascii
import re

import numpy as np

from study.errors import InvalidInput

LABELS = (0, 1, 2)               # background, normal rectal wall, tumor
_HEAD = re.compile(r"(rle|b64):(\d{1,6}):(\d{1,6}):")
_RLE_BODY = re.compile(r"[0-9,]*")
_B64_BODY = re.compile(r"[A-Za-z0-9+/=]*")

# sources of a stored slice and what the slice strip shows for them
ANCHOR_SOURCES = ("manual", "model", "copy")     # the reader's own work (interpolation anchors)
INTERPOLATED = "interpolated"


def encode_labels(labels: np.ndarray) -> str:
    """The page's text form of an (h, w) label map: run-length pairs."""
    arr = np.ascontiguousarray(labels, dtype=np.uint8)
    h, w = arr.shape
    flat = arr.ravel()
    if flat.size == 0:
        return f"rle:{h}:{w}:"
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    counts = np.diff(np.r_[starts, flat.size])
    pairs = np.empty(2 * len(starts), np.int64)
    pairs[0::2], pairs[1::2] = flat[starts], counts
    return f"rle:{h}:{w}:" + ",".join(map(str, pairs.tolist()))


def decode_labels(text: object, hw: tuple[int, int]) -> np.ndarray:
    """The (h, w) uint8 label map of a page payload, refused unless it is exactly hw and 0/1/2.

    Cost is bounded by hw: the header's size is compared first; the body may be at most
    what an h*w map can need (RLE: two numbers per pixel; base64: exactly h*w bytes)."""
    h, w = int(hw[0]), int(hw[1])
    if not isinstance(text, str):
        raise InvalidInput("The mask could not be read (it must be the page's mask text).")
    m = _HEAD.match(text)
    if m is None:
        raise InvalidInput("The mask could not be read (unknown format).")
    kind, mh, mw = m.group(1), int(m.group(2)), int(m.group(3))
    if (mh, mw) != (h, w):
        raise InvalidInput(f"The mask is {mh}×{mw} pixels but this slice is {h}×{w}: nothing was saved.")
    body = text[m.end():]
    n = h * w
    if kind == "b64":
        if len(body) != 4 * ((n + 2) // 3) or _B64_BODY.fullmatch(body) is None:
            raise InvalidInput("The mask could not be read (its length does not match the slice).")
        try:
            flat = np.frombuffer(base64.b64decode(body, validate=True), np.uint8)
        except (binascii.Error, ValueError):
            raise InvalidInput("The mask could not be read (bad base64).") from None
        if flat.size != n:
            raise InvalidInput("The mask could not be read (its length does not match the slice).")
    else:
        # at most one run per pixel: 2 numbers of <= len(str(n)) digits each, plus commas
        if len(body) > 2 * n * (len(str(n)) + 1) or _RLE_BODY.fullmatch(body) is None:
            raise InvalidInput("The mask could not be read (bad run-length text).")
        if not body:
            raise InvalidInput("The mask could not be read (no runs).")
        pairs = _int_list(body)
        if pairs is None or len(pairs) % 2 or len(pairs) > 2 * n:
            raise InvalidInput("The mask could not be read (bad run-length text).")
        vals, counts = pairs[0::2], pairs[1::2]
        if counts.min() < 1 or counts.max() > n or int(counts.sum()) != n:
            raise InvalidInput("The mask does not cover the slice exactly: nothing was saved.")
        if vals.max() > max(LABELS):
            raise InvalidInput("The mask may only hold the labels 0 (background), 1 (wall) and 2 (tumor).")
        flat = np.repeat(vals.astype(np.uint8), counts)
    if flat.size and flat.max() > max(LABELS):
        raise InvalidInput("The mask may only hold the labels 0 (background), 1 (wall) and 2 (tumor).")
    return flat.reshape(h, w).copy()


def _int_list(body: str) -> np.ndarray | None:
    """Comma-separated non-negative integers (already checked to be digits and commas), or None."""
    import warnings

    if body.startswith(",") or body.endswith(",") or ",," in body:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # numpy warns (not raises) on unread text
        try:
            arr = np.fromstring(body, dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning):
            return None
    return arr if arr.size == body.count(",") + 1 else None


# ------------------------------------------------------------------ shape-based interpolation
def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance to the mask's boundary: negative inside, positive outside."""
    from scipy.ndimage import distance_transform_edt

    m = np.asarray(mask, bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    if m.all():
        return np.full(m.shape, -np.inf)
    # half-pixel offset: a one-pixel structure stays present at the anchor itself
    return distance_transform_edt(~m) - distance_transform_edt(m) + np.where(m, 0.5, -0.5)


def interpolate_labels(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Label map between a (t=0) and b (t=1): per class, the zero level of the blended signed distance.

    A class present on one side only is kept from that side while t < 0.5 (it ends halfway).
    Where both classes claim a pixel the tumor wins (as tumor paint covers the wall)."""
    a, b = np.asarray(a, np.uint8), np.asarray(b, np.uint8)
    if a.shape != b.shape:
        raise InvalidInput("Both slices must have the same size.")
    t = float(t)
    out = np.zeros(a.shape, np.uint8)
    for c in LABELS[1:]:
        ma, mb = a == c, b == c
        if not ma.any() and not mb.any():
            continue
        if not ma.any() or not mb.any():
            if (t < 0.5) == bool(ma.any()):
                d = signed_distance(ma if ma.any() else mb)
            else:
                continue
        else:
            d = (1.0 - t) * signed_distance(ma) + t * signed_distance(mb)
        out[d < 0] = c                            # classes in label order: 2 (tumor) last
    return out


def plan_interpolation(states: dict[int, tuple[str, bool]], start: int, end: int) -> list[tuple[int, int, list[int]]]:
    """Gaps to fill: (z_a, z_b, [z...]) for consecutive anchors with slices between them.

    states: {z: (source, has_labels)} of the stored slices. Anchors are slices the reader
    saved (ANCHOR_SOURCES or an explicit 'empty'); slices filled are the untouched ones and
    earlier unconfirmed interpolations, between two anchors of which at least one has labels."""
    anchors = sorted(z for z, (src, _) in states.items()
                     if start <= z <= end and src != INTERPOLATED)
    out = []
    for za, zb in zip(anchors, anchors[1:]):
        if zb - za < 2 or not (states[za][1] or states[zb][1]):
            continue
        fill = [z for z in range(za + 1, zb) if z not in states or states[z][0] == INTERPOLATED]
        if fill:
            out.append((za, zb, fill))
    return out


def slice_strip(states: dict[int, tuple[str, bool]], start: int, end: int) -> list[str]:
    """Per slice start..end: 'saved', 'nothing', 'interpolated' or 'untouched' (the page's strip)."""
    out = []
    for z in range(start, end + 1):
        if z not in states:
            out.append("untouched")
        elif states[z][0] == INTERPOLATED:
            out.append("interpolated")
        else:
            out.append("saved" if states[z][1] else "nothing")
    return out
