"""Per-slice outlines that follow landmark curves along Z: body (skin, fat, muscle layers,
pelvic cavity), sacrum and coccyx, iliac wings with the gluteal muscles, and the table."""
from __future__ import annotations

import numpy as np

from usam.phantom.labels import L
from usam.phantom.params import CaseParams
from usam.phantom.shapes import Canvas, Tube, ellipse2d, smoothstep, span_mask

FLAT = 0.90        # fraction of the half depth where the back is flattened by the table
FAT_PLANE = 1.6    # intermuscular fat around named muscles (mm)


def sacrum_front(cp: CaseParams, z):
    """Y (posterior +) of the anterior sacral/coccygeal surface at heights z."""
    p = cp.pelvis
    z = np.asarray(z, dtype=float)
    zd = p.coccyx_tip + p.sac_deep_frac * (p.s1_z - p.coccyx_tip)
    lo = p.sac_drop_lo * ((z - zd) / (zd - p.coccyx_tip)) ** 2
    hi = p.sac_drop_hi * ((z - zd) / (p.s1_z - zd)) ** 2
    return p.sac_y_deep - np.where(z < zd, np.minimum(lo, 2.0 * p.sac_drop_lo), hi)


def frac(z, z0, z1):
    """Position of z between z0 and z1, clipped to [0, 1]."""
    return float(np.clip((z - z0) / (z1 - z0), 0.0, 1.0))


def body_slice(cv: Canvas, cp: CaseParams, table: np.ndarray) -> np.ndarray:
    """Table, skin, subcutaneous fat, muscle compartment, gluteus maximus, rectus, pelvic fat."""
    b, p = cp.body, cp.pelvis
    z, xs, ys = cv.z, cv.xs, cv.ys
    lab = cv.lab
    lab[:] = table
    fold = p.fh_z - 62                                   # gluteal fold
    low = float(smoothstep((fold - z) / 35.0))
    waist = 1.0 - 0.08 * float(smoothstep((z - p.crest_z) / 40.0))
    ax = b.ax * waist * (1 - 0.72 * low)
    ay = b.ay * (1 - 0.45 * low)
    cy = b.cy - b.ay * 0.45 * low
    body = span_mask(xs, ys, 0.0, cy, ax, ay, b.power)
    skin_in = span_mask(xs, ys, 0.0, cy, ax - 2.0, ay - 2.0, b.power)
    sc_ay = ay - 0.5 * (b.sc_ant + b.sc_post)
    sc_cy = cy + 0.5 * (b.sc_ant - b.sc_post)
    inner = span_mask(xs, ys, 0.0, sc_cy, max(ax - b.sc_lat, 10), max(sc_ay, 10), b.power)
    if z < p.fh_z + 20:   # thighs
        grow = float(smoothstep((p.fh_z + 20 - z) / 30.0))
        for s in (-1, 1):
            tx, ty, tr = s * (p.fh_x + 22), p.fh_y + 14, b.thigh_r * (0.6 + 0.4 * grow)
            body |= span_mask(xs, ys, tx, ty, tr, tr * 0.92, 2.0)
            skin_in |= span_mask(xs, ys, tx, ty, tr - 2.0, tr * 0.92 - 2.0, 2.0)
            inner |= span_mask(xs, ys, tx, ty, tr - b.sc_lat * 0.6, tr * 0.92 - b.sc_lat * 0.6, 2.0)
    y_flat = b.cy + b.ay * FLAT - 0.0007 * xs[None, :] ** 2   # the back rests in the table's cradle
    body &= ys[:, None] <= y_flat
    skin_in &= ys[:, None] <= y_flat - 2.0
    inner &= skin_in
    lab[body] = L["skin"]
    lab[skin_in] = L["subcutaneous_fat"]
    lab[inner] = L["other_muscle"]
    X, Y = xs[None, :], ys[:, None]
    # gluteus maximus: a thick posterolateral layer under the fat, from the gluteal fold to S2
    if fold - 20 < z < p.s1_z - 15:
        g = b.glut_thick * (0.55 + 0.45 * float(smoothstep((p.s1_z - 15 - z) / 60.0)))
        deep = span_mask(xs, ys, 0.0, sc_cy, max(ax - b.sc_lat - g * 1.2, 5), max(sc_ay - g, 5), b.power)
        midline = 14 + 10 * float(smoothstep((z - p.coccyx_tip) / 60.0))
        deep2 = span_mask(xs, ys, 0.0, sc_cy, max(ax - b.sc_lat - g * 1.2 - 3, 5), max(sc_ay - g - 2.5, 5), b.power)
        post = (Y > cy + 0.05 * ay) & (np.abs(X) > midline)
        lab[inner & ~deep2 & post] = L["pelvic_fat"]
        lab[inner & ~deep & post] = L["gluteus_maximus"]
    sym_top = p.sym_bottom + p.sym_len
    y_ant_wall = sc_cy - sc_ay
    if z > sym_top - 8:   # rectus abdominis, paired, behind the anterior fat
        rect_ab = inner & (Y < y_ant_wall + 11) & (np.abs(X) > 3) & (np.abs(X) < 55 + 20 * float(smoothstep((z - sym_top) / 60)))
        lab[rect_ab] = L["rectus_abdominis"]
    # pelvic cavity fat: lesser pelvis between the obturator muscles, greater pelvis above
    up = float(smoothstep((z - (p.fh_z + 15)) / 50.0))
    half_w = (p.fh_x - p.fh_r - 17) * (1 - up) + (p.fh_x + 2) * up
    y_sym = p.fh_y - p.fh_r - 22
    in_sym = p.sym_bottom - 5 < z < sym_top + 5
    y_ant = (y_sym + 12) if in_sym else (y_ant_wall + 14)
    y_post = float(sacrum_front(cp, max(z, p.coccyx_tip))) + (0 if z > p.coccyx_tip else 8)
    if z > -12 and y_post > y_ant + 10:
        cav = span_mask(xs, ys, 0.0, 0.5 * (y_ant + y_post), half_w, 0.5 * (y_post - y_ant), 2.6) & inner
        if not in_sym:
            cav &= Y > y_ant_wall + 12
        lab[cav] = L["pelvic_fat"]
    return inner


def sacrum_slice(cv: Canvas, cp: CaseParams) -> None:
    """Sacrum (body, alae, canal, anterior foramina) and coccyx on one slice."""
    p = cp.pelvis
    z = cv.z
    z_c1 = p.coccyx_tip + 22
    if not p.coccyx_tip < z < p.s1_z:
        return
    yf = float(sacrum_front(cp, z))
    if z < z_c1:   # coccyx
        t = frac(z, p.coccyx_tip, z_c1)
        w = cv.window((-16, 16, yf - 2, yf + 20))
        if w:
            sl, X, Y = w
            cv.fill(sl, ell(X, Y, 0, yf + 4 + 3 * t, 6 + 6 * t, 4 + 3 * t), L["coccyx"], (1.6, L["coccyx_cortex"]))
        return
    s = frac(z, z_c1, p.s1_z)
    T = 16 + 26 * s
    W = 16 + (p.sac_width - 16) * float(smoothstep((s - 0.15) / 0.7))
    w = cv.window((-W - 4, W + 4, yf - 4, yf + T + 14 + 0.006 * W * W))
    if w is None:
        return
    sl, X, Y = w
    Yw = Y - 0.006 * X * X            # the alae sweep backwards
    d = ell(X, Yw, 0, yf + T / 2, W, T / 2)
    crest = ell(X, Y, 0, yf + T + 2, 5 + 3 * s, 6)
    cv.fill(sl, np.minimum(d, crest), L["sacrum"], (p.cortex, L["sacrum_cortex"]))
    cv.fill(sl, ell(X, Y, 0, yf + T * 0.68, 5 + 7 * s, 3 + 4 * s), L["sacral_canal"])
    for k, zk in enumerate((p.s1_z - 14, p.s1_z - 36, p.s1_z - 56, p.s1_z - 74)):
        if abs(z - zk) < 5 - 0.6 * k:
            for sd in (-1, 1):
                fx_ = sd * (W * 0.22 + 9 + 3 * s)
                cv.fill(sl, ell(X, Y, fx_, yf + T * 0.35, 3.5 + 1.5 * s, T * 0.33), L["sacral_foramen"])


def ell(X, Y, cx, cy, ax, ay):
    """Axis-aligned ellipse distance with the semi-axes kept above half a millimetre."""
    return ellipse2d(X, Y, cx, cy, max(ax, 0.5), max(ay, 0.5))


def iliac_wings_slice(cv: Canvas, cp: CaseParams, inner: np.ndarray) -> None:
    """Iliac wings with gluteus medius / minimus outside and iliacus inside, on one slice."""
    p, b = cp.pelvis, cp.body
    z = cv.z
    z0 = p.fh_z + p.fh_r - 2
    if not z0 < z < p.crest_z:
        return
    t = frac(z, z0, p.crest_z)
    yf = float(sacrum_front(cp, min(z, p.s1_z)))
    zc1 = p.coccyx_tip + 22
    s_ = frac(min(z, p.s1_z), zc1, p.s1_z)
    W = 16 + (p.sac_width - 16) * float(smoothstep((s_ - 0.15) / 0.7))
    T = 16 + 26 * s_
    si = float(smoothstep((z - (p.s1_z - 75)) / 25.0))     # SI joint above, sciatic notch below
    top = float(smoothstep((z - (p.crest_z - 30)) / 30.0))
    for s in (-1, 1):
        post_si = np.array([s * (W + 4.5), yf + 0.55 * T + 0.006 * W * W])
        post_low = np.array([s * (p.fh_x - 8), p.fh_y + p.fh_r + 4])
        P0 = si * post_si + (1 - si) * post_low
        P2 = np.array([s * (p.fh_x + 16 + 14 * t), p.fh_y - p.fh_r - 12 - 18 * t + 30 * top])
        P1 = 0.5 * (P0 + P2) + np.array([s * (14 + 16 * t), 6.0])
        rad = [7 + 5 * si, 3.2 + 2.5 * (1 - t), 5.5]
        pts = [(P0[0], P0[1], z), (P1[0], P1[1], z), (P2[0], P2[1], z)]
        wing = Tube.make(pts, rad)
        x0, x1, y0, y1 = wing.bbox(z)
        w = cv.window((x0 - 45, x1 + 45, y0 - 45, y1 + 45))
        if w is None:
            continue
        sl, X, Y = w
        d = wing.sdf(X, Y, z)
        # outward normal of the chord P0 -> P2 (away from the pelvic cavity)
        cx, cy = P2 - P0
        nx, ny = cy, -cx
        if nx * s < 0:
            nx, ny = -nx, -ny
        lateral = (X - P1[0] + 6 * s) * nx + (Y - P1[1]) * ny > 0
        inn = inner[sl]
        med_t = 24 * (1 - 0.5 * top) + 8
        if z > p.fh_z + 10:
            cv.fill(sl, d - med_t - FAT_PLANE, L["pelvic_fat"], where=lateral & inn)
            cv.fill(sl, d - med_t, L["gluteus_medius"], where=lateral & inn)
        if z < p.fh_z + 95:
            cv.fill(sl, d - 11 - FAT_PLANE, L["pelvic_fat"], where=lateral & inn)
            cv.fill(sl, d - 11, L["gluteus_minimus"], where=lateral & inn)
        if z > p.fh_z + 28:
            cv.fill(sl, d - 13, L["iliopsoas"], where=~lateral & inn)
        cv.fill(sl, d, L["iliac_wing"], (p.cortex, L["iliac_wing_cortex"]))


def table_template(cp: CaseParams, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The patient table (same on every slice): a curved shell with a foam core."""
    b = cp.body
    y_top = b.cy + b.ay * FLAT + b.table_gap
    Yc = ys[:, None] - y_top + 0.0007 * xs[None, :] ** 2
    wide = np.abs(xs[None, :]) < 215
    out = np.zeros((len(ys), len(xs)), np.uint8)
    out[(Yc >= 0) & (Yc < 14) & wide] = L["table"]
    out[(Yc >= 2.5) & (Yc < 11.5) & (np.abs(xs[None, :]) < 212)] = L["table_core"]
    return out
