"""Synthetic pelvic CT phantoms with ground truth labels (0 background, 1 normal rectum, 2 tumor).

Each case is drawn from one seed. Anatomy is built slice by slice from signed distance
functions in patient millimetres (X towards patient left, Y towards posterior, Z towards
superior, matching the canonical LPS+ array of usam.volumes), so partial volume at edges
comes from the analytic distance, then a scanner point-spread blur and correlated noise
are added. Z = 0 is the anorectal junction (lowest slice of the rectum label).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from usam.errors import VolumeError
from usam.volumes import Volume, canonical_affine, read_labelmap, read_volume, write_labelmap, write_volume

DEMO_SEED = 20230817
SIZES = ("small", "full")
TUMOR_FREE_FRACTION = 0.15
NPZ_WINDOW = (-160.0, 240.0)  # HU window of the DataV6 npz export (soft tissue)
NPZ_SIZE = 224


@dataclass
class PhantomCase:
    """One synthetic case: volume, label map (z, y, x) uint8 and its parameters."""

    case_id: str
    volume: Volume
    labels: np.ndarray
    info: dict


# ----------------------------------------------------------------------------- small helpers

def _smoothstep(t):
    """Cubic ramp 0 -> 1 on [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _plateau(z, lo, hi, ramp):
    """1 inside [lo, hi] with smooth ramps of width ramp outside (0 far away)."""
    return _smoothstep((z - lo) / ramp + 1.0) * _smoothstep((hi - z) / ramp + 1.0)


def _wrap(a):
    """Angle difference wrapped to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def _occ(d, px):
    """Partial-volume occupancy of a pixel from the signed distance (mm, negative inside)."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse_sdf(X, Y, cx, cy, ax, ay, angle=0.0):
    """Signed distance (mm) to an ellipse to first order, (q - 1) / |grad q|; exact for circles."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    q = np.maximum(np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2), 1e-6)
    grad = np.sqrt((dx / (ax * ax)) ** 2 + (dy / (ay * ay)) ** 2) / q
    return (q - 1.0) / np.maximum(grad, 1e-9)


def _superellipse_sdf(X, Y, cx, cy, ax, ay, p):
    """Approximate signed distance of a superellipse |x/a|^p + |y/b|^p = 1 (rounded box).

    X is a row and Y a column of coordinates, so the powers are taken on 1D vectors only; the
    distance is linearised around the boundary (exact sign, accurate where partial volume is).
    """
    Q = np.abs((X - cx) / ax) ** p + np.abs((Y - cy) / ay) ** p
    return (Q - 1.0) * np.float32(min(ax, ay) / p)


def _capsule_sdf(X, Y, x0, y0, x1, y1, r):
    """Signed distance to a thick line segment of radius r."""
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * vx + (Y - y0) * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
    return np.hypot(X - (x0 + t * vx), Y - (y0 + t * vy)) - r


def _arc_sdf(X, Y, cx, cy, radius, half_thick, a0, a1):
    """Signed distance to a circular arc band (angles a0 < a1 in radians, atan2(Y, X) convention)."""
    ang = np.arctan2(Y - cy, X - cx)
    mid, half = (a0 + a1) / 2.0, (a1 - a0) / 2.0
    rel = _wrap(ang - mid)
    rho = np.hypot(X - cx, Y - cy)
    d_band = np.abs(rho - radius) - half_thick
    # beyond the arc's ends: distance to the end caps
    ex = [cx + radius * math.cos(mid + s * half) for s in (-1, 1)]
    ey = [cy + radius * math.sin(mid + s * half) for s in (-1, 1)]
    d_end = np.minimum(np.hypot(X - ex[0], Y - ey[0]), np.hypot(X - ex[1], Y - ey[1])) - half_thick
    return np.where(np.abs(rel) <= half, d_band, d_end)


class _Slice:
    """One axial slice being painted: image in HU, pixel coordinates in mm."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, fill: float):
        self.xs, self.ys = xs, ys
        self.px = float(abs(xs[1] - xs[0]))
        self.img = np.full((len(ys), len(xs)), fill, dtype=np.float32)

    def window(self, x0, x1, y0, y1):
        """Index slices and local (Y, X) grids of a mm bounding box (None if outside)."""
        ix0 = int(np.searchsorted(self.xs, x0))
        ix1 = int(np.searchsorted(self.xs, x1))
        iy0 = int(np.searchsorted(self.ys, y0))
        iy1 = int(np.searchsorted(self.ys, y1))
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        sl = (slice(iy0, iy1), slice(ix0, ix1))
        return sl, self.xs[ix0:ix1][None, :], self.ys[iy0:iy1][:, None]

    def paint(self, sl, d, hu, rim=None):
        """Composite a shape with signed distance d; optional (thickness, hu) cortical rim."""
        occ = _occ(d, self.px)
        region = self.img[sl]
        if rim is not None:
            t, hu_rim = rim
            inner = _occ(d + t, self.px)
            val = hu_rim + inner * (np.asarray(hu, dtype=np.float32) - hu_rim)
        else:
            val = hu
        region += occ * (val - region)


# ----------------------------------------------------------------------------- parameters

def _draw_params(rng: np.random.Generator, size: str, has_tumor: bool | None) -> dict:
    """Every random parameter of a case."""
    u = rng.uniform
    p: dict = {}
    if size == "full":
        p["n_xy"] = 512
        p["px"] = float(round(u(0.68, 0.94), 4))
        p["dz"] = 1.25 if rng.random() < 0.7 else 0.625
    else:
        p["n_xy"] = 128
        p["px"] = float(round(u(0.68, 0.94) * 2.0, 4))  # a pelvic field of view of 175-240 mm
        p["dz"] = 3.75
    max_slices = 150 if size == "full" else 44
    margin_lo, margin_hi = u(12, 25), u(8, 20)
    max_len = min(160.0, max_slices * p["dz"] - margin_lo - margin_hi - 2)
    p["rect_len"] = float(u(60.0, max(60.0, max_len)))
    if p["rect_len"] > max_len:  # very thin slices: shorten the margins instead
        margin_lo = margin_hi = max(4.0, (max_slices * p["dz"] - p["rect_len"]) / 2 - 1)
    p["z_lo"], p["z_hi"] = -margin_lo, p["rect_len"] + margin_hi
    # body and pelvis
    p["body_ax"], p["body_ay"], p["body_p"] = u(150, 182), u(105, 128), u(2.0, 2.4)
    p["body_cy"] = u(-8, 4)
    p["sc_fat"] = u(10, 38)
    p["hu_fat"], p["hu_muscle"] = u(-115, -85), u(42, 62)
    p["fh_x"], p["fh_r"] = u(82, 98), u(21, 26)
    p["fh_z"], p["fh_y"] = u(25, 55), u(-12, 6)
    # sacrum: concave anterior surface, deepest near S3-S4, promontory far anterior
    p["coccyx_z"] = u(12, 28)
    p["s1_z"] = p["coccyx_z"] + u(115, 140)
    p["sac_zdeep"] = p["coccyx_z"] + u(0.3, 0.45) * (p["s1_z"] - p["coccyx_z"])
    p["sac_drop_lo"], p["sac_drop_hi"] = u(8, 16), u(35, 55)
    p["sac_ydeep"] = p["body_cy"] + p["body_ay"] - u(38, 52)
    # rectum
    p["rect_gap"] = u(7, 14)           # presacral / mesorectal fat between sacrum and rectum
    p["rect_r"] = u(13, 21)
    p["rect_r_var"] = u(0.05, 0.25)
    p["rect_ecc"] = u(0.0, 0.25)
    p["rect_x0"] = u(-8, 8)
    p["sigmoid_dir"] = u(-0.3, 0.9)   # lateral drift (mostly to patient left) at the top
    p["sigmoid_fwd"] = u(0.2, 0.8)    # anterior turn at the top
    p["wall"] = u(2.5, 5.0)
    p["wall_hu"] = u(32, 50)
    p["mucosa_hu"] = u(15, 35)
    p["folds"] = [(int(k), float(u(0.0, 0.06)), float(u(0, 2 * np.pi))) for k in range(2, 6)]
    p["lumen"] = str(rng.choice(["air", "air-fluid", "faeces"], p=[0.35, 0.35, 0.30]))
    p["fluid_hu"] = u(0, 25)
    # tumor
    p["has_tumor"] = bool(rng.random() >= TUMOR_FREE_FRACTION) if has_tumor is None else bool(has_tumor)
    ext = u(20, min(55.0, 0.6 * p["rect_len"]))
    zc = u(5 + ext / 2, p["rect_len"] - 5 - ext / 2)
    p["tumor_z"] = (float(zc - ext / 2), float(zc + ext / 2))
    p["tumor_circ"] = bool(rng.random() < 0.35)
    p["tumor_phi"] = u(-np.pi, np.pi)
    p["tumor_halfwidth"] = u(0.7, 1.9)
    p["tumor_thick"] = u(5, 13)
    p["tumor_out"] = u(0.3, 0.6)
    p["tumor_hu"] = p["wall_hu"] + u(35, 65)
    p["tumor_lobes"] = [(int(k), float(u(0.1, 0.3)), float(u(0, 2 * np.pi)), float(u(-0.08, 0.08)))
                        for k in (3, 5, 7)]
    # bladder and other soft tissue
    p["bladder"] = (u(-10, 10), u(38, 58), u(28, 45), u(28, 48))  # x, ax, ay, az
    p["bladder_z"] = p["fh_z"] - 8 + 0.9 * p["bladder"][3]
    p["bladder_gap"] = u(6, 16)
    p["urine_hu"] = u(2, 15)
    p["male"] = bool(rng.random() < 0.5)
    p["vessel_hu"] = u(140, 200)
    p["meso_margin"] = u(9, 18)
    p["meso_vessels"] = [(float(u(0, 2 * np.pi)), float(u(0.1, 0.9)), float(u(0.8, 1.6)))
                         for _ in range(int(rng.integers(2, 7)))]
    p["noise"] = u(8, 20)
    p["bowel"] = [(u(-45, 45), u(-60, -20), u(0.4, 1.0), u(10, 16), u(0, 2 * np.pi))
                  for _ in range(int(rng.integers(0, 4)))]
    p["table_gap"] = u(5, 25)
    return p


# ----------------------------------------------------------------------------- anatomy curves

def _sacrum_front(p: dict, z):
    """Y (mm, posterior +) of the anterior sacral surface, extended below the coccyx tip."""
    z = np.asarray(z, dtype=float)
    zd = p["sac_zdeep"]
    lo = p["sac_drop_lo"] * ((z - zd) / (zd - p["coccyx_z"])) ** 2
    hi = p["sac_drop_hi"] * ((z - zd) / (p["s1_z"] - zd)) ** 2
    return p["sac_ydeep"] - np.where(z < zd, np.minimum(lo, 2.0 * p["sac_drop_lo"]), hi)


def _rectum_centerline(p: dict, z):
    """Centre (X, Y) and outer semi-axes of the rectum at heights z (arrays)."""
    z = np.asarray(z, dtype=float)
    L = p["rect_len"]
    r = p["rect_r"] * (1.0 + p["rect_r_var"] * np.sin(2 * np.pi * z / max(L, 1) * 1.3 + 0.7))
    r = r * (0.75 + 0.25 * _smoothstep(z / 15.0))   # narrower at the anorectal junction
    top = _smoothstep((z - (L - 35.0)) / 35.0)     # rectosigmoid: turns anterior and lateral
    ay = r * (1.0 - p["rect_ecc"])
    ax = r * (1.0 + p["rect_ecc"])
    y = _sacrum_front(p, z) - p["rect_gap"] - ay - p["sigmoid_fwd"] * 30.0 * top ** 2
    x = p["rect_x0"] + p["sigmoid_dir"] * 30.0 * top ** 2
    # the labelled segment closes in a dome at its top instead of ending cut open
    cap = 0.8 * p["rect_r"]
    t = np.clip((z - (L - cap)) / (cap + 2.0), 0.0, 1.0)
    dome = np.sqrt(np.clip(1.0 - t * t, 0.02, 1.0))
    return x, y, ax * dome, ay * dome


def _tumor_thickness(p: dict, z: float, phi: np.ndarray) -> np.ndarray:
    """Tumor wall thickening (mm) at height z and polar angle phi."""
    if not p["has_tumor"]:
        return np.zeros_like(phi)
    z0, z1 = p["tumor_z"]
    prof = _plateau(z, z0 + 6.0, z1 - 6.0, 6.0)
    if prof <= 0:
        return np.zeros_like(phi)
    if p["tumor_circ"]:
        ang = np.ones_like(phi)
    else:
        rel = _wrap(phi - p["tumor_phi"])
        ang = _smoothstep((p["tumor_halfwidth"] - np.abs(rel)) / 0.45)
    lobes = 1.0
    for k, a, ph, dz in p["tumor_lobes"]:
        lobes = lobes + a * np.cos(k * phi + ph + dz * z)
    return p["tumor_thick"] * prof * ang * np.clip(lobes, 0.4, None)


# ----------------------------------------------------------------------------- rendering

def _texture(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Smooth unit-variance random field (drawn on a grid 3x coarser in-plane, then interpolated)."""
    coarse = (shape[0], max(shape[1] // 3, 2), max(shape[2] // 3, 2))
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32),
                                (sigma[0], sigma[1] / 3, sigma[2] / 3), truncate=3.0)
    f = ndimage.zoom(f, (1, shape[1] / coarse[1], shape[2] / coarse[2]), order=1, grid_mode=True, mode="nearest")
    f = f[:, : shape[1], : shape[2]]
    if f.shape != tuple(shape):
        f = np.pad(f, [(0, a - b) for a, b in zip(shape, f.shape)], mode="edge")
    return f / max(float(f.std()), 1e-6)


def _paint_rectum(s: _Slice, p: dict, z: float, geom, tex2d, lab: np.ndarray) -> None:
    """Rectal wall, tumor and lumen of one slice, with labels 1/2 from the same geometry."""
    cx, cy, ax, ay, tx, ty = geom
    stretch = min(math.sqrt(1.0 + tx * tx + ty * ty), 3.0)
    reach = max(ax, ay) * 1.2 * stretch + p["tumor_thick"] + 6
    w = s.window(cx - reach, cx + reach, cy - reach, cy + reach)
    if w is None:
        return
    sl, X, Y = w
    dx, dy = X - cx, Y - cy
    # undo the obliquity of the cut: coordinates perpendicular to the tube
    t2 = tx * tx + ty * ty
    if t2 > 1e-6:
        tn = math.sqrt(t2)
        ux, uy = tx / tn, ty / tn
        stretch = min(math.sqrt(1.0 + t2), 3.0)
        par = (dx * ux + dy * uy) / stretch
        perp = -dx * uy + dy * ux
        dx, dy = par * ux - perp * uy, par * uy + perp * ux
    rho = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    r_ell = ax * ay / np.sqrt((ay * np.cos(phi)) ** 2 + (ax * np.sin(phi)) ** 2)
    folds = 1.0
    for k, a, ph in p["folds"]:
        folds = folds + a * np.cos(k * phi + ph + 0.02 * z)
    r_out = r_ell * folds
    wall = p["wall"] * (1.0 + 0.15 * np.cos(3 * phi + 0.05 * z))
    tum = _tumor_thickness(p, z, phi)
    r_outer = r_out + p["tumor_out"] * tum
    r_inner = np.maximum(r_out - wall - (1.0 - p["tumor_out"]) * tum, 1.5)
    d_out = rho - r_outer
    d_in = rho - r_inner
    if not np.any(d_out < s.px):
        return
    is_tumor = tum > 1.5
    # wall HU: normal wall with brighter mucosa, tumor enhancing and heterogeneous
    wall_hu = p["wall_hu"] + p["mucosa_hu"] * np.clip(1.0 - d_in / 1.2, 0.0, 1.0)  # inner 1.2 mm
    tumor_hu = p["tumor_hu"] + 12.0 * tex2d[sl]
    hu = np.where(is_tumor, tumor_hu, wall_hu).astype(np.float32)
    s.paint(sl, d_out, hu)
    # lumen content
    mode = p["lumen"]
    if mode == "air":
        lum = np.full(d_in.shape, -960.0, np.float32)
    elif mode == "air-fluid":
        level = cy + 0.2 * ay
        lum = np.where(Y < level, -960.0, p["fluid_hu"]).astype(np.float32)
    else:
        lum = np.where(tex2d[sl] > 1.0, -900.0, -60.0 + 40.0 * tex2d[sl]).astype(np.float32)
    s.paint(sl, d_in, lum)
    region = lab[sl]
    in_wall = (d_out < 0) & (d_in >= 0)
    region[in_wall & ~is_tumor] = 1
    region[in_wall & is_tumor] = 2


def _render_slice(p: dict, z: float, xs, ys, rect_geom, tex2d, lab) -> np.ndarray:
    """Paint one axial slice at height z (mm)."""
    s = _Slice(xs, ys, -1000.0)
    hu_fat, hu_mus = p["hu_fat"], p["hu_muscle"]
    bcy = p["body_cy"]
    bay = p["body_ay"]
    # CT table below the patient's back
    ty = bcy + bay + p["table_gap"]
    w = s.window(-230, 230, ty, ty + 14)
    if w:
        sl, X, Y = w
        s.paint(sl, np.maximum(np.abs(Y - ty - 7) - 7, np.abs(X) - 220), -200.0, rim=(2.0, 250.0))
    # body: skin + subcutaneous fat, muscle layer, pelvic cavity fat
    widen = 1.0 + 0.05 * np.tanh((z - 40) / 40)
    bax = p["body_ax"] * widen
    sl, X, Y = s.window(-bax - 5, bax + 5, bcy - bay - 5, bcy + bay + 5)
    d_body = _superellipse_sdf(X, Y, 0.0, bcy, bax, bay, p["body_p"])
    d_body = np.where(Y > bcy + 0.6 * bay, np.maximum(d_body, Y - (bcy + bay - 3)), d_body)  # flat back
    s.paint(sl, d_body, hu_fat, rim=(2.0, 15.0))
    sc = p["sc_fat"]
    d_mus = _superellipse_sdf(X, Y, 0.0, bcy + 0.1 * sc, bax - sc, bay - sc * 0.8, p["body_p"])
    s.paint(sl, d_mus, hu_mus)
    # posterior midline: fat over the sacrum, the natal cleft below the coccyx
    y_back = float(_sacrum_front(p, z)) + 18
    s.paint(sl, _capsule_sdf(X, Y, 0.0, y_back, 0.0, bcy + bay, 8.0), hu_fat)
    if z < p["coccyx_z"]:
        depth = 15 + 20 * float(_smoothstep((p["coccyx_z"] - z) / 30))
        s.paint(sl, _capsule_sdf(X, Y, 0.0, bcy + bay, 0.0, bcy + bay - sc - depth, 2.5), hu_fat)
    # pelvic cavity: from behind the anterior abdominal wall to the sacrum
    y_sac = float(_sacrum_front(p, z))
    y_ant = bcy - bay + sc + 12
    y_post = min(y_sac + 3, bcy + bay - sc - 20)
    low = _smoothstep((z - (p["fh_z"] - 20)) / 50)  # false pelvis widens above the femoral heads
    cav_ax = (p["fh_x"] - p["fh_r"] - 14) * (0.85 + 0.35 * low)
    cav_cy, cav_ay = 0.5 * (y_ant + y_post), 0.5 * (y_post - y_ant)
    w = s.window(-cav_ax - 2, cav_ax + 2, y_ant - 2, y_post + 2)
    if w:
        sl, X, Y = w
        s.paint(sl, _superellipse_sdf(X, Y, 0.0, cav_cy, cav_ax, cav_ay, 2.4), hu_fat)
    # rectus abdominis above the pubis
    if z > p["fh_z"] - 5:
        for side in (-1, 1):
            w = s.window(side * 35 - 30, side * 35 + 30, y_ant - 25, y_ant)
            if w:
                sl, X, Y = w
                s.paint(sl, _ellipse_sdf(X, Y, side * 35, y_ant - 10, 24, 6), hu_mus)
    _paint_vessels(s, p, z)
    if 0.0 <= z <= p["rect_len"] + 5:
        _paint_mesorectum(s, p, z, rect_geom)
    _paint_bladder_and_organs(s, p, z, rect_geom)
    _paint_bowel(s, p, z)
    _paint_bones(s, p, z, y_sac, y_ant)
    cx, cy, ax, ay = rect_geom[:4]
    if -0.001 <= z <= p["rect_len"] + 0.001:
        _paint_rectum(s, p, z, rect_geom, tex2d, lab)
    elif z < 0:  # anal canal: muscular sphincter with a collapsed lumen, not labelled
        k = min(-z / 20.0, 1.0)
        acx, acy = cx, cy + 12 * k
        w = s.window(acx - 25, acx + 25, acy - 25, acy + 25)
        if w:
            sl, X, Y = w
            s.paint(sl, _ellipse_sdf(X, Y, acx, acy, 13, 12), hu_mus + 5)
            s.paint(sl, _ellipse_sdf(X, Y, acx, acy, 4, 1.2), -50.0)
    return s.img


def _paint_mesorectum(s: _Slice, p: dict, z: float, rect_geom) -> None:
    """Mesorectal fascia (a thin line around the mesorectal fat) and small rectal vessels in it."""
    cx, cy, ax, ay = rect_geom[:4]
    margin = p["meso_margin"] + p["tumor_out"] * p["tumor_thick"] * p["has_tumor"]
    ex, ey = ax + margin, ay + margin * 0.8
    w = s.window(cx - ex - 3, cx + ex + 3, cy - ey - 3, cy + ey + 3)
    if w is None:
        return
    sl, X, Y = w
    s.paint(sl, np.abs(_ellipse_sdf(X, Y, cx, cy, ex, ey)) - 0.5, 20.0)
    for ang, frac, r in p["meso_vessels"]:
        ang = ang + 0.01 * z
        vx = cx + (ax + 3 + frac * (margin - 5)) * math.cos(ang)
        vy = cy + (ay + 3 + frac * (margin - 5) * 0.8) * math.sin(ang)
        s.paint(sl, np.hypot(X - vx, Y - vy) - r, p["vessel_hu"] - 20)


def _paint_vessels(s: _Slice, p: dict, z: float) -> None:
    """Enhancing iliac / femoral arteries and veins (portal venous phase)."""
    t = float(_smoothstep((z - p["fh_z"]) / 60.0))  # 0 at femoral level, 1 higher up
    for side in (-1, 1):
        x = side * ((p["fh_x"] - 10) * (1 - t) + 62 * t)
        y = (p["fh_y"] - p["fh_r"] - 14) * (1 - t) + (-5) * t
        for dx, r, hu in ((-4, 4.0, p["vessel_hu"] + 20), (7, 6.0, p["vessel_hu"] - 20)):
            w = s.window(x + side * dx - 10, x + side * dx + 10, y - 10, y + 10)
            if w:
                sl, X, Y = w
                s.paint(sl, _ellipse_sdf(X, Y, x + side * dx, y, r, r), hu)


def _paint_bladder_and_organs(s: _Slice, p: dict, z: float, rect_geom) -> None:
    """Bladder anterior to the rectum; prostate or vagina between them at low levels."""
    bx, bax, bay, baz = p["bladder"]
    bz, by = p["bladder_z"], p["bladder_y"]
    t = 1.0 - ((z - bz) / baz) ** 2
    if t > 0:
        k = math.sqrt(t)
        w = s.window(bx - bax - 4, bx + bax + 4, by - bay - 4, by + bay + 4)
        if w:
            sl, X, Y = w
            d = _ellipse_sdf(X, Y, bx, by, bax * k + 0.1, bay * k + 0.1)
            s.paint(sl, d, p["urine_hu"], rim=(2.5, 38.0))
    cx, cy, ax, ay = rect_geom[:4]
    if p["male"]:
        pz, pr = 18.0, 17.0
        t = 1.0 - ((z - pz) / pr) ** 2
        if t > 0:
            k = math.sqrt(t)
            py = cy - ay - p["tumor_out"] * p["tumor_thick"] * p["has_tumor"] - 6 - 13
            w = s.window(cx - 25, cx + 25, py - 20, py + 16)
            if w:
                sl, X, Y = w
                s.paint(sl, _ellipse_sdf(X, Y, cx, py, 20 * k + 0.1, 13 * k + 0.1), 42.0)
        t = 1.0 - ((z - (pz + 26)) / 13.0) ** 2  # seminal vesicles: paired, behind the bladder base
        if t > 0:
            k = math.sqrt(t)
            py = cy - ay - p["tumor_out"] * p["tumor_thick"] * p["has_tumor"] - 5 - 6
            w = s.window(cx - 40, cx + 40, py - 14, py + 14)
            if w:
                sl, X, Y = w
                for side in (-1, 1):
                    d = _ellipse_sdf(X, Y, cx + side * 17, py, 16 * k + 0.1, 5.5 * k + 0.1, angle=-side * 0.35)
                    s.paint(sl, d, 35.0)
    elif -15 < z < 40:
        py = cy - ay - p["tumor_out"] * p["tumor_thick"] * p["has_tumor"] - 6 - 5
        w = s.window(cx - 30, cx + 30, py - 10, py + 10)
        if w:
            sl, X, Y = w
            s.paint(sl, _ellipse_sdf(X, Y, cx, py, 18, 4.5), 48.0, rim=(1.5, 30.0))


def _paint_bowel(s: _Slice, p: dict, z: float) -> None:
    """A few small-bowel loops above the bladder (thin wall, fluid or gas)."""
    top = p["bladder_z"] + p["bladder"][3]
    for i, (x, y, k, r, ph) in enumerate(p["bowel"]):
        zc = top + 5 + 12 * i
        if abs(z - zc) > r:
            continue
        rr = math.sqrt(max(r * r - (z - zc) ** 2, 0.0)) + 2
        w = s.window(x - 3 * r, x + 3 * r, y - 3 * r, y + 3 * r)
        if w:
            sl, X, Y = w
            d = _ellipse_sdf(X, Y, x, y, rr * (1 + k), rr, angle=ph)
            s.paint(sl, d, 10.0 if i % 2 else -900.0, rim=(1.5, 45.0))


def _paint_bones(s: _Slice, p: dict, z: float, y_sac: float, y_ant: float) -> None:
    """Sacrum/coccyx, iliac wings, acetabula, femoral heads and shafts, pubis and ischia."""
    cort, canc = 1000.0, 250.0
    cz, sz = p["coccyx_z"], p["s1_z"]
    if z > cz:
        f = min((z - cz) / (sz - cz), 1.0)
        half_w = 10 + 50 * f ** 0.8
        thick = 10 + 20 * f
        w = s.window(-half_w - 4, half_w + 4, y_sac - 6, y_sac + thick + 6)
        if w:
            sl, X, Y = w
            # anterior surface bowed (concave anteriorly across as well)
            yc = y_sac + thick / 2 + 0.15 * thick * (X / max(half_w, 1)) ** 2
            d = _ellipse_sdf(X, Y, 0.0, yc, half_w, thick / 2)
            s.paint(sl, d, canc, rim=(1.8, cort))
            if f > 0.3:  # sacral canal
                s.paint(sl, _ellipse_sdf(X, Y, 0.0, yc + thick * 0.15, 0.15 * half_w, 0.18 * thick), 20.0)
    # iliac wings above the acetabulum, joining the sacrum at the sacroiliac joints
    fz, fx, fr, fy = p["fh_z"], p["fh_x"], p["fh_r"], p["fh_y"]
    if z > fz + 15:
        g = min((z - fz - 15) / 60.0, 1.0)
        # each wing: an arc concave antero-medially (the iliac fossa) from the sacroiliac joint
        # sweeping laterally and anteriorly, further the higher the slice (built for the
        # patient's left, mirrored for the right)
        six, siy = 40 + 12 * g, y_sac + 12
        ccx, ccy = -20.0, y_sac - 110.0
        rad = math.hypot(six - ccx, siy - ccy)
        a_si = math.atan2(siy - ccy, six - ccx)
        a0 = a_si - (0.25 + 0.55 * g)
        x_lim = p["body_ax"] - p["sc_fat"] - 15
        if (x_lim - ccx) / rad < 1.0:  # keep the wing inside the muscles of a slim patient
            a0 = min(max(a0, math.acos(max((x_lim - ccx) / rad, -1.0))), a_si - 0.2)
        for side in (-1, 1):
            arcs = (a0, a_si) if side > 0 else (math.pi - a_si, math.pi - a0)
            cxs = side * ccx
            angs = np.linspace(arcs[0], arcs[1], 24)
            bx, by = cxs + rad * np.cos(angs), ccy + rad * np.sin(angs)
            w = s.window(bx.min() - 14, bx.max() + 14, by.min() - 14, by.max() + 14)
            if w:
                sl, X, Y = w
                d = _arc_sdf(X, Y, cxs, ccy, rad, 3.5 + 6 * (1 - g), *arcs)
                s.paint(sl, d, canc, rim=(1.8, cort))
    for side in (-1, 1):
        hx = side * fx
        # femoral head (sphere) and acetabular roof
        dz = z - fz
        if abs(dz) < fr + 9:
            rr = math.sqrt(max((fr + 9) ** 2 - dz * dz, 0.0))
            w = s.window(hx - rr - 4, hx + rr + 4, fy - rr - 4, fy + rr + 4)
            if w:
                sl, X, Y = w
                if dz > -fr * 0.2:  # acetabulum: shell medial and above the head
                    d_acet = _ellipse_sdf(X, Y, hx, fy, rr, rr)
                    d_acet = np.maximum(d_acet, side * (X - hx) - rr * 0.25)
                    s.paint(sl, d_acet, canc, rim=(2.0, cort))
                if abs(dz) < fr:
                    rh = math.sqrt(fr * fr - dz * dz)
                    s.paint(sl, _ellipse_sdf(X, Y, hx, fy, rh, rh), -50.0)  # joint space
                    s.paint(sl, _ellipse_sdf(X, Y, hx, fy, max(rh - 1.5, 0.1), max(rh - 1.5, 0.1)), canc + 50,
                            rim=(1.5, cort))
        # femoral neck and greater trochanter, then the shaft
        if fz - 45 < z < fz:
            t = (fz - z) / 45.0
            nx, ny = hx + side * (18 + 22 * t), fy + 4
            w = s.window(nx - 25, nx + 25, ny - 25, ny + 25)
            if w:
                sl, X, Y = w
                s.paint(sl, _ellipse_sdf(X, Y, nx, ny, 14 + 6 * (1 - t), 14), canc, rim=(2.5, cort))
        elif z <= fz - 45:  # femoral shaft: thick cortex around a fatty medullary cavity
            nx, ny = hx + side * 32, fy + 4
            w = s.window(nx - 20, nx + 20, ny - 20, ny + 20)
            if w:
                sl, X, Y = w
                s.paint(sl, _ellipse_sdf(X, Y, nx, ny, 13, 13), -40.0, rim=(4.5, cort + 200))
        # pubic rami and symphysis (anterior), ischium (posterior) below the femoral heads
        if fz - 40 < z < fz - 6:
            pub_y = max(y_ant + 8, fy - fr - 20)
            w = s.window(min(hx, 0) - 20, max(hx, 0) + 20, pub_y - 20, fy + 10)
            if w:
                sl, X, Y = w
                d = _capsule_sdf(X, Y, hx - side * fr * 0.8, fy - fr * 0.7, side * 5, pub_y, 7)
                s.paint(sl, d, canc, rim=(2.0, cort))
        if fz - 50 < z < fz - 5:
            ix, iy = side * (fx - 30), fy + fr + 8
            w = s.window(ix - 20, ix + 20, iy - 20, iy + 25)
            if w:
                sl, X, Y = w
                s.paint(sl, _ellipse_sdf(X, Y, ix, iy + 4, 11, 16), canc, rim=(2.5, cort))


# ----------------------------------------------------------------------------- generation

def _fit_bladder(p: dict) -> None:
    """Place the bladder anterior to the rectum with a fat gap at every height it spans."""
    bx, bax, bay, baz = p["bladder"]
    zs = np.linspace(p["bladder_z"] - baz, p["bladder_z"] + baz, 41)
    cx, cy, ax, ay = _rectum_centerline(p, np.clip(zs, 0, p["rect_len"]))
    front = cy - ay - p["tumor_out"] * p["tumor_thick"] * p["has_tumor"]
    k = np.sqrt(np.clip(1.0 - ((zs - p["bladder_z"]) / baz) ** 2, 0, 1))
    # bladder centre y such that centre + bay*k <= front - gap everywhere
    by = float(np.min(front - p["bladder_gap"] - bay * k))
    y_front = p["body_cy"] - p["body_ay"] + p["sc_fat"] + 16  # behind the anterior abdominal wall
    if by - bay < y_front:  # too deep for this pelvis: flatten, keeping the posterior edge
        post = by + bay
        bay = max((post - y_front) / 2.0, 12.0)
        by = post - bay
    p["bladder"] = (bx, bax, bay, baz)
    p["bladder_y"] = by


def _case_id(seed: int) -> str:
    """Case identifier from its seed."""
    return f"phantom_{seed}"


def generate_case(seed: int, size: str = "small", has_tumor: bool | None = None) -> PhantomCase:
    """Generate one synthetic pelvic CT case ('small' for tests, 'full' = 512x512) from a seed."""
    if size not in SIZES:
        raise VolumeError(f"phantom size must be one of {SIZES}, not {size!r}")
    rng = np.random.default_rng(int(seed))
    p = _draw_params(rng, size, has_tumor)
    _fit_bladder(p)
    n, px, dz = p["n_xy"], p["px"], p["dz"]
    nz = int(round((p["z_hi"] - p["z_lo"]) / dz)) + 1
    zs = p["z_lo"] + dz * np.arange(nz)
    # snap so that one slice sits at z = 0 (the anorectal junction)
    zs = zs - zs[np.argmin(np.abs(zs))]
    xs = ((np.arange(n) - (n - 1) / 2.0) * px).astype(np.float32)
    y_mid = p["body_cy"] * 0.5 + (8.0 if size == "full" else 18.0)
    ys = ((np.arange(n) - (n - 1) / 2.0) * px + y_mid).astype(np.float32)
    cx, cy, ax, ay = _rectum_centerline(p, zs)
    tx = np.gradient(cx, zs)
    ty = np.gradient(cy, zs)
    # texture for tumor / faeces: a smooth 3D field over the rectum's region only
    stretch = np.minimum(np.sqrt(1.0 + tx ** 2 + ty ** 2), 3.0)
    reach = float(np.max(np.maximum(ax, ay) * 1.2 * stretch)) + p["tumor_thick"] + 10
    ix = np.searchsorted(xs, [cx.min() - reach, cx.max() + reach])
    iy = np.searchsorted(ys, [cy.min() - reach, cy.max() + reach])
    tex = _texture(rng, (nz, max(iy[1] - iy[0], 1), max(ix[1] - ix[0], 1)),
                   (2.0 / dz, 3.0 / px, 3.0 / px))
    labels = np.zeros((nz, n, n), dtype=np.uint8)
    img = np.empty((nz, n, n), dtype=np.float32)
    for i, z in enumerate(zs):
        geom = (cx[i], cy[i], ax[i], ay[i], tx[i], ty[i])
        img[i] = _render_slice(p, float(z), xs, ys, geom, _CropTexture(tex[i], int(iy[0]), int(ix[0])), labels[i])
    # scanner: point-spread blur, correlated noise, integer HU
    # white noise added before the point-spread blur comes out correlated, like CT noise;
    # its amplitude is scaled by the blur's measured noise reduction
    psf = (0.0, 0.7, 0.7)  # in-plane only: each slice is sampled at its centre
    probe = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((16, 64, 64)).astype(np.float32),
                                    psf, truncate=3.0)
    gain = 1.0 / float(probe[4:-4, 8:-8, 8:-8].std())
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(p["noise"] * gain)
    img += noise
    del noise
    img = ndimage.gaussian_filter(img, psf, mode="nearest", truncate=3.0)
    np.clip(img, -1024, 3071, out=img)
    np.round(img, out=img)
    spacing = (float(dz), float(px), float(px))
    origin = (float(-xs[0] * 1.0), float(-ys[0]), float(zs[0]))  # RAS of voxel (0, 0, 0)
    affine = canonical_affine(spacing, origin)
    vol = Volume(array=img, spacing=spacing, affine=affine,
                 source={"format": "phantom", "name": _case_id(seed), "shape_on_disk": [n, n, nz],
                         "ornt_to_disk": [[0, 1], [1, 1], [2, 1]], "affine_on_disk": affine.tolist()})
    info = _case_info(labels, spacing, seed, p)
    return PhantomCase(case_id=_case_id(seed), volume=vol, labels=labels, info=info)


class _CropTexture:
    """A texture slice stored for a crop of the full grid, indexed with full-grid slices (0 outside)."""

    def __init__(self, field: np.ndarray, iy0: int, ix0: int):
        self.field, self.iy0, self.ix0 = field, iy0, ix0

    def __getitem__(self, sl) -> np.ndarray:
        out = np.zeros((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), dtype=np.float32)
        h, w = self.field.shape
        y0, y1 = max(sl[0].start - self.iy0, 0), min(sl[0].stop - self.iy0, h)
        x0, x1 = max(sl[1].start - self.ix0, 0), min(sl[1].stop - self.ix0, w)
        if y1 > y0 and x1 > x0:
            oy, ox = y0 + self.iy0 - sl[0].start, x0 + self.ix0 - sl[1].start
            out[oy:oy + y1 - y0, ox:ox + x1 - x0] = self.field[y0:y1, x0:x1]
        return out


def _case_info(labels: np.ndarray, spacing, seed: int, p: dict) -> dict:
    """Summary numbers of a case: slices with rectum / tumor and tumor volume."""
    zr = np.flatnonzero(labels.reshape(labels.shape[0], -1).max(axis=1) > 0)
    zt = np.flatnonzero((labels == 2).reshape(labels.shape[0], -1).any(axis=1))
    vox_ml = float(np.prod(spacing)) / 1000.0
    tumor_ml = float((labels == 2).sum()) * vox_ml
    return {"spacing": [float(s) for s in spacing], "shape": [int(s) for s in labels.shape],
            "tumor_ml": round(tumor_ml, 3), "rectum_ml": round(float((labels == 1).sum()) * vox_ml, 3),
            "has_tumor": bool(len(zt) > 0),
            "rectum_start": int(zr[0]) if len(zr) else -1, "rectum_end": int(zr[-1]) if len(zr) else -1,
            "tumor_start": int(zt[0]) if len(zt) else -1, "tumor_end": int(zt[-1]) if len(zt) else -1,
            "seed": int(seed)}


def demo_case(index: int = 0, size: str = "full") -> PhantomCase:
    """The fixed demo cases of the app and the study (always with a tumor)."""
    return generate_case(DEMO_SEED + int(index), size=size, has_tumor=True)


# ----------------------------------------------------------------------------- cohort

def _splits(n: int, seed: int) -> list[str]:
    """Deterministic train/val/test assignment, about 70/15/15, each split non-empty when n >= 3."""
    n_val = max(1, int(round(0.15 * n))) if n >= 3 else 0
    n_test = max(1, int(round(0.15 * n))) if n >= 3 else (1 if n == 2 else 0)
    n_train = n - n_val - n_test
    order = np.random.default_rng(int(seed) + 7919).permutation(n)
    splits = [""] * n
    for rank, i in enumerate(order):
        splits[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return splits


def _case_seed(seed: int, i: int) -> int:
    """Seed of case i of a cohort (distinct cohorts for distinct seeds)."""
    return int(seed) * 100003 + int(i)


MANIFEST_FIELDS = ("case_id", "image", "label", "split", "spacing", "shape", "tumor_ml", "has_tumor",
                   "rectum_start", "rectum_end", "tumor_start", "tumor_end", "seed")


def _npz_slices(case: PhantomCase) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """DataV6 slices of a case: (z, image windowed to [0,1] at 224, label 0/1/2), transposed (first axis = x)."""
    from PIL import Image

    lo, hi = NPZ_WINDOW
    out = []
    for z in np.flatnonzero(case.labels.reshape(case.labels.shape[0], -1).max(axis=1) > 0):
        img = np.clip((case.volume.array[z] - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        img = np.asarray(Image.fromarray(img).resize((NPZ_SIZE, NPZ_SIZE), Image.BILINEAR), dtype=np.float32)
        lab = np.asarray(Image.fromarray(case.labels[z]).resize((NPZ_SIZE, NPZ_SIZE), Image.NEAREST))
        if not lab.any():
            continue
        out.append((int(z), np.clip(img, 0, 1).T.copy(), lab.astype(np.float32).T.copy()))
    return out


def _write_npz_layout(out_dir: Path, case: PhantomCase, split: str, rows: dict) -> None:
    """Append one case's foreground slices to DataV6/{split}/{split}_npz and collect csv rows."""
    folder = out_dir / "DataV6" / split / f"{split}_npz"
    folder.mkdir(parents=True, exist_ok=True)
    for z, img, lab in _npz_slices(case):
        name = f"{case.case_id}_z{z:03d}"
        np.savez_compressed(folder / f"{name}.npz", image=img, label=lab)
        ii, jj = np.nonzero(lab > 0)  # bbox in the stored array's frame: x = second axis
        bbox = f"[{int(jj.min())}, {int(ii.min())}, {int(jj.max())}, {int(ii.max())}]"  # xyxy, as their loader
        rows.setdefault(split, []).append((name, bbox))


def generate_cohort(out_dir, cases: int, seed: int, size: str = "small", npz_layout: bool = False) -> Path:
    """Write a cohort (NIfTI pairs, manifest.json/.csv, optional DataV6 npz layout); returns the manifest path."""
    if cases < 1:
        raise VolumeError("a cohort needs at least one case")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    splits = _splits(cases, seed)
    rows, npz_rows = [], {}
    for i in range(cases):
        case = generate_case(_case_seed(seed, i), size=size)
        case.case_id = f"case_{i:03d}"
        image = Path("images") / f"{case.case_id}.nii.gz"
        label = Path("labels") / f"{case.case_id}.nii.gz"
        write_volume(case.volume, out_dir / image)
        write_labelmap(case.labels, case.volume, out_dir / label)
        info = case.info
        rows.append({"case_id": case.case_id, "image": image.as_posix(), "label": label.as_posix(),
                     "split": splits[i], "spacing": info["spacing"], "shape": info["shape"],
                     "tumor_ml": info["tumor_ml"], "has_tumor": info["has_tumor"],
                     "rectum_start": info["rectum_start"], "rectum_end": info["rectum_end"],
                     "tumor_start": info["tumor_start"], "tumor_end": info["tumor_end"], "seed": info["seed"]})
        if npz_layout:
            _write_npz_layout(out_dir, case, splits[i], npz_rows)
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps({"cohort_seed": int(seed), "size": size, "cases": rows}, indent=1))
    with open(out_dir / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_FIELDS)
        for r in rows:
            w.writerow([" ".join(map(str, r[k])) if isinstance(r[k], list) else r[k] for k in MANIFEST_FIELDS])
    for split, items in npz_rows.items():
        with open(out_dir / "DataV6" / split / f"{split}_bbox.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "bbox"])
            w.writerows(items)
    return manifest


def load_cohort(dir) -> list[dict]:
    """Manifest rows of a cohort folder (paths relative to the folder)."""
    path = Path(dir) / "manifest.json"
    if not path.is_file():
        raise VolumeError(f"no manifest.json in {dir}")
    try:
        rows = json.loads(path.read_text())["cases"]
    except (ValueError, KeyError, TypeError) as exc:
        raise VolumeError(f"unreadable cohort manifest {path}: {exc}") from None
    return rows


def load_case(dir, row: dict) -> tuple[Volume, np.ndarray]:
    """Read the image volume and label map of one manifest row."""
    vol = read_volume(Path(dir) / row["image"])
    return vol, read_labelmap(Path(dir) / row["label"], reference=vol)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m usam phantom`."""
    parser.add_argument("--cases", type=int, default=10, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (deterministic output)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", choices=SIZES, default="full", help="small (tests) or full (512x512)")
    parser.add_argument("--npz-layout", action="store_true", help="also write the public code's DataV6 npz layout")


def run(args: argparse.Namespace) -> int:
    """Write the cohort and print a one-line summary."""
    manifest = generate_cohort(args.out, args.cases, args.seed, size=args.size, npz_layout=args.npz_layout)
    rows = load_cohort(manifest.parent)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    print(f"wrote {len(rows)} cases to {manifest.parent} ({counts['train']} train / {counts['val']} val / "
          f"{counts['test']} test), {sum(r['has_tumor'] for r in rows)} with tumor; manifest {manifest}")
    return 0
