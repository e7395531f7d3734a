"""The 3D anatomy label map of a case: body, muscles, bones, organs, vessels, bowel, rectum.

Structures are 3D primitives (ellipsoids, capsule chains) or per-slice outlines that follow
landmark curves along Z, painted in anatomical order (later overwrites earlier) on every
axial slice of a fine Z grid; the scanner model averages the fine slices into thick ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from usam.phantom.content import RectumModel
from usam.phantom.labels import L
from usam.phantom.params import CaseParams
from usam.phantom.outlines import (FAT_PLANE, body_slice, ell, frac, iliac_wings_slice, sacrum_front,
                                       sacrum_slice)
from usam.phantom.shapes import Canvas, Ellipsoid, Tube, smoothstep


@dataclass
class Layer:
    """A 3D primitive painted with one label (optional cortex) and an optional wall/content."""
    shape: object
    label: int
    cortex: tuple[float, int] | None = None
    lumen: tuple[float, int] | None = None     # (wall thickness, content label) for hollow organs
    only_inner: bool = False                   # keep inside the body's muscle compartment
    fat_rim: bool = False                      # an intermuscular fat plane around it


@dataclass
class Anatomy:
    """Per-case geometry: landmark curves and the painted layers in order."""
    cp: CaseParams
    rectum: RectumModel
    before_bones: list = field(default_factory=list)
    bones: list = field(default_factory=list)
    organs: list = field(default_factory=list)
    bowel: list = field(default_factory=list)
    after: list = field(default_factory=list)


def build(cp: CaseParams) -> Anatomy:
    """Every 3D primitive of a case, from its parameters."""
    p, b, o = cp.pelvis, cp.body, cp.organs
    rect = RectumModel(cp, sacrum_front)
    an = Anatomy(cp, rect)
    R, fx, fy, fz = p.fh_r, p.fh_x, p.fh_y, p.fh_z
    sym_top = p.sym_bottom + p.sym_len
    y_sym = fy - R - 22
    cort = p.cortex
    sf = lambda z: float(sacrum_front(cp, z))  # noqa: E731
    for s in (-1, 1):
        # femoral triangle: fat around the femoral vessels in front of the hip
        an.before_bones.append(Layer(Ellipsoid.make((s * (fx - 16), fy - R - 20, fz - 25), (17, 13, 45)),
                                     L["pelvic_fat"], only_inner=True))
        # intermuscular septa of the thigh (anterior / medial / posterior compartments)
        for ang in (-2.2, 0.5, 1.9):
            ux, uy = s * math.cos(ang), math.sin(ang)
            c0 = (s * (fx + 38), fy + 6)
            tube = Tube.make([(c0[0] + 16 * ux, c0[1] + 16 * uy, 0.0), (c0[0] + 48 * ux, c0[1] + 48 * uy, 0.0)], 1.2)
            an.before_bones.append(Layer(_Prism(tube, -400.0, fz - 50), L["pelvic_fat"], only_inner=True))
        # --- muscles with their own 3D course
        an.before_bones.append(Layer(Tube.smooth(
            [(s * 40, sf(p.s1_z) + 8, p.crest_z + 40), (s * 48, sf(p.s1_z) + 2, p.s1_z),
             (s * (fx - 2), fy - R - 24, fz + 45), (s * (fx - 10), fy - R - 10, fz + 5),
             (s * (fx + 8), fy + 6, fz - 50)], 1.0), L["iliopsoas"], only_inner=True, fat_rim=True))
        an.before_bones[-1].shape.r[:] = np.interp(np.arange(len(an.before_bones[-1].shape.r)),
                                                   [0, len(an.before_bones[-1].shape.r) - 1], [17, 11])
        an.before_bones.append(Layer(Ellipsoid.make((s * (fx - R - 9), fy + 6, fz - 12), (8, R + 9, 36)),
                                     L["obturator_internus"], only_inner=True, fat_rim=True))
        zp = p.s1_z - 45
        an.before_bones.append(Layer(Tube.make(
            [(s * 16, sf(zp) + 6, zp), (s * (fx - 22), fy + R + 20, fz + 32), (s * (fx + 36), fy + 14, fz + 2)],
            [10, 9, 6]), L["piriformis"], only_inner=True, fat_rim=True))
        # --- vessels: common -> external iliac -> femoral, internal iliac; veins medial and behind
        zb = p.s1_z - 5
        for lab, dx, dy, r in ((L["iliac_artery"], 0.0, 0.0, 4.2), (L["iliac_vein"], -7.0, 6.0, 6.0)):
            r = r * o.vessels_r
            pts = [(s * (12 - dx * 0.5), sf(p.s1_z + 30) - 22 + dy, p.s1_z + 40), (s * (30 + dx), sf(zb) - 24 + dy, zb),
                   (s * (fx - 28 + dx), fy - R - 26 + dy, fz + 45), (s * (fx - 16 + dx), fy - R - 22 + dy, fz + 10),
                   (s * (fx - 12 + dx), fy - R - 20 + dy, fz - 70)]
            an.organs.append(Layer(Tube.smooth(pts, r), lab))
            ii = [(s * (30 + dx), sf(zb) - 24 + dy, zb), (s * (44 + dx), sf(p.s1_z - 55) - 12 + dy, p.s1_z - 55),
                  (s * (50 + dx), fy + 14 + dy, fz + 25)]
            an.organs.append(Layer(Tube.smooth(ii, r * 0.7), lab))
        # --- bones of the hip
        an.bones.append(Layer(Ellipsoid.make((s * (fx - 6), fy + 4, fz + R + 4), (21, 27, 20)),
                              L["iliac_wing"], (cort, L["iliac_wing_cortex"])))
        an.bones.append(Layer(_Shell((s * fx, fy, fz), R + 1.8, R + 9.0, s, fx, fz - 0.55 * R, fz + R + 9),
                              L["acetabulum"], (cort, L["acetabulum_cortex"])))
        an.bones.append(Layer(Tube.make([(s * (fx - 12), fy + R * 0.8, fz - 4), (s * (fx - 26), fy + R + 9, fz - 42)],
                                        [11, 12]), L["ischium"], (cort, L["ischium_cortex"])))
        an.bones.append(Layer(Ellipsoid.make((s * (fx - 27), fy + R + 11, fz - 46), (13, 16, 13)),
                              L["ischium"], (cort, L["ischium_cortex"])))
        an.bones.append(Layer(Tube.make([(s * (fx - 12), fy - R * 0.55, fz - 2), (s * 12, y_sym, sym_top - 8)], [9, 7.5]),
                              L["pubis"], (cort, L["pubis_cortex"])))
        an.bones.append(Layer(Tube.make([(s * 10, y_sym + 4, p.sym_bottom + 6), (s * (fx - 28), fy + R + 6, fz - 50)],
                                        [6.5, 6]), L["pubis"], (cort, L["pubis_cortex"])))
        an.bones.append(Layer(Ellipsoid.make((s * 11, y_sym, p.sym_bottom + p.sym_len / 2), (10, 10, p.sym_len / 2)),
                              L["pubis"], (cort, L["pubis_cortex"])))
        # femur
        an.bones.append(Layer(Ellipsoid.make((s * fx, fy, fz), (R + 1.8,) * 3), L["hip_joint"]))
        an.bones.append(Layer(Ellipsoid.make((s * fx, fy, fz), (R,) * 3), L["femoral_head"],
                              (cort, L["femoral_head_cortex"])))
        an.bones.append(Layer(Tube.make([(s * (fx + 6), fy + 2, fz - 4), (s * (fx + 36), fy + 6, fz - 27)], [15, 14]),
                              L["femoral_neck"], (cort + 0.5, L["femoral_neck_cortex"])))
        an.bones.append(Layer(Ellipsoid.make((s * (fx + 46), fy + 10, fz - 18), (15, 21, 24)),
                              L["greater_trochanter"], (cort, L["greater_trochanter_cortex"])))
        an.bones.append(Layer(Ellipsoid.make((s * (fx + 22), fy + 16, fz - 50), (9, 10, 10)),
                              L["greater_trochanter"], (cort, L["greater_trochanter_cortex"])))
        an.bones.append(Layer(Tube.make([(s * (fx + 36), fy + 8, fz - 36), (s * (fx + 40), fy + 4, fz - 330)], [15, 13]),
                              L["femoral_shaft"], (5.0, L["femoral_shaft_cortex"])))
    # pubic symphysis: fibrocartilage between the pubic bodies
    an.bones.append(Layer(Ellipsoid.make((0, y_sym, p.sym_bottom + p.sym_len / 2), (2.0, 8, p.sym_len / 2 - 2)),
                          L["pubic_symphysis"]))
    if cp.scanner.prosthesis != "none":
        s = -1 if cp.scanner.prosthesis == "right" else 1   # patient right = -X
        an.after += [Layer(_Shell((s * fx, fy, fz), R + 0.5, R + 4.0, s, fx, fz - 0.3 * R, fz + R + 4), L["prosthesis"]),
                     Layer(Ellipsoid.make((s * fx, fy, fz), (R - 1,) * 3), L["prosthesis"]),
                     Layer(Tube.make([(s * fx, fy, fz), (s * (fx + 34), fy + 6, fz - 30), (s * (fx + 38), fy + 6, fz - 160)],
                                     [6.5, 7.5, 5.5]), L["prosthesis"])]
    _organs(cp, an, y_sym, sym_top)
    _bowel(cp, an)
    return an


class _Prism:
    """A 2D section (of a shape at its own z) extruded between z0 and z1."""

    def __init__(self, shape, z0, z1):
        self.shape, self.z0, self.z1 = shape, z0, z1
        self.zref = float(shape.P[0, 2])

    def zrange(self):
        return self.z0, self.z1

    def bbox(self, z):
        return self.shape.bbox(self.zref) if self.z0 < z < self.z1 else None

    def sdf(self, X, Y, z):
        return self.shape.sdf(X, Y, self.zref)


class _Shell:
    """Hemispherical bone shell (acetabulum) open laterally, between radii r0 and r1."""

    def __init__(self, c, r0, r1, side, fx, z0, z1):
        self.c, self.r0, self.r1, self.side, self.fx, self.z0, self.z1 = np.asarray(c, float), r0, r1, side, fx, z0, z1

    def bbox(self, z):
        if not self.z0 < z < self.z1 or abs(z - self.c[2]) >= self.r1:
            return None
        h = math.sqrt(self.r1 ** 2 - (z - self.c[2]) ** 2)
        return self.c[0] - h, self.c[0] + h, self.c[1] - h, self.c[1] + h

    def sdf(self, X, Y, z):
        rho = np.sqrt((X - self.c[0]) ** 2 + (Y - self.c[1]) ** 2 + (z - self.c[2]) ** 2)
        d = np.maximum(rho - self.r1, self.r0 - rho)
        lateral = self.side * (X - self.c[0]) - 0.3 * self.r0      # open towards the femoral neck
        return np.maximum(d, lateral)


def _organs(cp: CaseParams, an: Anatomy, y_sym: float, sym_top: float) -> None:
    """Bladder, prostate and seminal vesicles or vagina, uterus and ovaries; mesorectal nodes."""
    o, rect = cp.organs, an.rectum
    bx, by, bz = o.bladder
    zb = sym_top - 6 + bz
    y_front = y_sym + 8
    _, ry, rr = rect.center(zb)
    y_back = ry - rr - 12
    by = float(np.clip(by, 10.0, max((y_back - y_front) / 2, 10.0)))
    an.organs.append(Layer(Ellipsoid.make((0, y_front + by, zb), (bx, by, bz)), L["urine"],
                           (o.bladder_wall, L["bladder_wall"])))
    if o.sex == "male":
        px_, py_, pz_ = o.prostate
        zp = cp.pelvis.sym_bottom + pz_ + 2
        _, ry, rr = rect.center(zp)
        an.organs.append(Layer(Ellipsoid.make((0, ry - rr - 3 - py_, zp), (px_, py_, pz_)), L["prostate"]))
        zs = zp + pz_ + 5
        _, ry, rr = rect.center(zs)
        for s in (-1, 1):
            an.organs.append(Layer(Ellipsoid.make((s * 17, ry - rr - 7, zs), (19, 6, 8), rx=-0.3, rz=s * 0.3),
                                   L["seminal_vesicle"]))
    else:
        _, ry0, rr0 = rect.center(0.0)
        _, ry1, rr1 = rect.center(45.0)
        yv0, yv1 = ry0 - rr0 - 8, ry1 - rr1 - 8
        tilt = math.atan2(yv1 - yv0, 45.0)
        an.organs.append(Layer(Ellipsoid.make((0, (yv0 + yv1) / 2, 15), (17, 6, 32), rx=-tilt), L["vagina"]))
        ux, uy, uz = o.uterus
        zc = 52.0
        _, ryc, rrc = rect.center(zc)
        cerv = np.array([0.0, ryc - rrc - 10, zc])
        ax = np.array([0.0, -math.sin(o.uterus_tilt), math.cos(o.uterus_tilt)])
        cen = cerv + ax * uz * 0.85
        an.organs.append(Layer(Ellipsoid.make(cen, (ux, uy, uz), rx=o.uterus_tilt), L["uterus"]))
        for s in (-1, 1):
            an.organs.append(Layer(Ellipsoid.make((s * 52, cen[1] + 18, cen[2] + 5), (11, 8, 15)), L["ovary"]))
    # small vessels in the mesorectum (superior rectal branches) and the pelvic fat
    vr = np.random.default_rng(cp.seed + 11)
    for _ in range(int(vr.integers(4, 9))):
        ang, frac = vr.uniform(0, 2 * np.pi), vr.uniform(0.3, 0.9)
        pts = []
        for z in np.linspace(5, cp.rectum.length + 5, 5):
            cx, cy, rr = rect.center(float(z))
            rad = rr + 2 + frac * cp.rectum.meso_margin
            a = ang + 0.01 * z
            pts.append((cx + rad * math.cos(a), cy + 0.9 * rad * math.sin(a), float(z)))
        an.organs.append(Layer(Tube.smooth(pts, float(vr.uniform(0.9, 1.8))),
                               L["iliac_vein"] if vr.random() < 0.5 else L["iliac_artery"]))
    for _ in range(int(vr.integers(3, 8))):
        s = vr.choice([-1, 1])
        x, y = s * vr.uniform(25, cp.pelvis.fh_x - cp.pelvis.fh_r - 20), vr.uniform(y_sym + 15, 40)
        z0 = vr.uniform(0, cp.pelvis.fh_z + 30)
        pts = [(x, y, z0), (x + vr.normal(0, 8), y + vr.normal(0, 8), z0 + 30), (x + vr.normal(0, 10), y + vr.normal(0, 10), z0 + 60)]
        an.before_bones.append(Layer(Tube.smooth(pts, float(vr.uniform(1.0, 2.5))), L["iliac_vein"], only_inner=True))
    for (z, ang, dist, r) in cp.rectum.nodes:
        cx, cy, rr = rect.center(z)
        rad = rr + dist + r
        an.organs.append(Layer(Ellipsoid.make((cx + rad * math.cos(ang), cy + 0.8 * rad * math.sin(ang), z),
                                              (r, r * 0.8, r * 1.3)), L["lymph_node"]))


def _bowel_layer(tube: Tube, wall_label: int, content: str, wall: float) -> Layer:
    """A bowel tube with wall and content (collapsed: all wall)."""
    lab = {"gas": L["bowel_gas"], "fluid": L["bowel_fluid"], "faeces": L["bowel_faeces"]}.get(content)
    return Layer(tube, wall_label, lumen=None if lab is None else (wall, lab))


def _bowel(cp: CaseParams, an: Anatomy) -> None:
    """Sigmoid colon from the rectosigmoid junction, small-bowel loops, and the distractor loop."""
    r, o, rect = cp.rectum, cp.organs, an.rectum
    x0, y0, r0 = rect.center(r.length)
    sig_r = r.sigmoid_r if r.sigmoid_content != "collapsed" else 9.0
    pts = [(x0, y0, r.length), (x0, y0 - 2, r.length + 8)] + [(x0 + p[0], y0 + p[1] - 10, p[2]) for p in r.sigmoid[1:]]
    an.bowel.append(_bowel_layer(Tube.smooth(pts, sig_r), L["sigmoid_wall"], r.sigmoid_content, 2.5))
    for pts, rad, content in zip(o.loops, o.loop_r, o.loop_content):
        rad = rad if content != "collapsed" else 7.0
        an.bowel.append(_bowel_layer(Tube.smooth(pts, rad), L["small_bowel_wall"], content, 2.0))
    if o.distractor:
        zd = o.distractor_z
        cx, cy, rr = rect.center(zd)
        rad = 11.0 if o.distractor_kind == "small_bowel" else 14.0
        content = str(np.random.default_rng(cp.seed + 17).choice(["gas", "fluid", "faeces", "collapsed"],
                                                                  p=[0.2, 0.3, 0.2, 0.3]))
        if content == "collapsed":
            rad = 9.0
        a = o.distractor_angle   # from anterior (-Y), towards patient left for a > 0
        ux, uy = math.sin(a), -math.cos(a)
        vx, vy = -uy, ux
        dist = rr + r.wall[0] + o.distractor_gap + rad + 3.0
        pts = [(cx + ux * (dist + 35) + vx * 10, cy + uy * (dist + 35) + vy * 10, zd + 50),
               (cx + ux * (dist + 6), cy + uy * (dist + 6), zd + 18),
               (cx + ux * dist, cy + uy * dist, zd),
               (cx + ux * (dist + 2) - vx * 18, cy + uy * (dist + 2) - vy * 18, zd - 10),
               (cx + ux * (dist + 30) - vx * 30, cy + uy * (dist + 30) - vy * 30, zd + 25)]
        lab = L["small_bowel_wall"] if o.distractor_kind == "small_bowel" else L["sigmoid_wall"]
        an.bowel.append(_bowel_layer(Tube.smooth(pts, rad), lab, content, 2.5))


def _paint(cv: Canvas, layer: Layer, inner: np.ndarray | None) -> None:
    w = cv.window(layer.shape.bbox(cv.z))
    if w is None:
        return
    sl, X, Y = w
    d = layer.shape.sdf(X, Y, cv.z)
    where = inner[sl] if (layer.only_inner and inner is not None) else None
    if layer.fat_rim:
        cv.fill(sl, d - FAT_PLANE, L["pelvic_fat"], None, where)
    cv.fill(sl, d, layer.label, layer.cortex, where)
    if layer.lumen is not None:
        t, lab = layer.lumen
        cv.fill(sl, d + t, lab, None, where)


def render_slice(an: Anatomy, cv: Canvas, table: np.ndarray) -> None:
    """Paint every structure of one axial slice into cv.lab."""
    cp = an.cp
    p = cp.pelvis
    z = cv.z
    inner = body_slice(cv, cp, table)
    rect = an.rectum
    cx, cy, rr = rect.center(z)
    # ischioanal fossae: fat beside the anal canal and lower rectum, below the levator
    if -cp.rectum.anal_len - 12 < z < p.fh_z - 12:
        k = frac(z, -cp.rectum.anal_len - 12, p.fh_z - 12)
        for s in (-1, 1):
            w = cv.window((s * 40 - 34, s * 40 + 34, cy - 40, cy + 55))
            if w:
                sl, X, Y = w
                cv.fill(sl, ell(X, Y, s * (24 + 18 * k), cy + 12, 18 + 6 * k, 32 - 8 * k), L["ischioanal_fat"],
                        where=inner[sl])
    for layer in an.before_bones:
        _paint(cv, layer, inner)
    # mesorectum: fat inside the mesorectal fascia, from the junction to the rectosigmoid
    if 0 <= z <= cp.rectum.length + 8:
        taper = float(smoothstep(z / 25.0)) * float(smoothstep((cp.rectum.length + 8 - z) / 18.0))
        m = 2 + cp.rectum.meso_margin * taper
        ext = cp.tumour.ext_mm if (cp.tumour.present and cp.tumour.extension) else 0.0
        ex, ey = rr + m + 0.5 * ext, rr + m * 1.15 + 0.5 * ext
        ecy = cy + 0.25 * m
        w = cv.window((cx - ex - 3, cx + ex + 3, ecy - ey - 3, ecy + ey + 3))
        if w:
            sl, X, Y = w
            d = ell(X, Y, cx, ecy, ex, ey)
            cv.fill(sl, d, L["mesorectal_fat"], (0.9, L["mesorectal_fascia"]))
    # levator ani: a funnel from the pelvic side walls down to the anorectal junction, open anteriorly
    if -14 < z < p.fh_z - 8:
        k = frac(z, -14, p.fh_z - 8)
        ax_ = min(rr + 7 + 55 * k, p.fh_x - p.fh_r - 14)
        ay_ = rr + 6 + 22 * k
        w = cv.window((cx - ax_ - 5, cx + ax_ + 5, cy - ay_ - 5, cy + ay_ + 8))
        if w:
            sl, X, Y = w
            d = np.abs(ell(X, Y, cx, cy + 3, ax_, ay_)) - 2.2
            ang = np.arctan2(X - cx, -(Y - cy))           # 0 = anterior
            cv.fill(sl, d, L["levator_ani"], where=(np.abs(ang) > 0.75) & inner[sl])
    sacrum_slice(cv, cp)
    iliac_wings_slice(cv, cp, inner)
    for layer in an.bones:
        _paint(cv, layer, None)
    for layer in an.organs:
        _paint(cv, layer, None)
    for layer in an.bowel:
        _paint(cv, layer, None)
    rect.paint(cv)
    for layer in an.after:
        _paint(cv, layer, None)
