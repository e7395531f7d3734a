"""Typed parameters of one phantom case, and their random draw from a seed.

Anatomy and content are drawn first and do not depend on the size, so 'small' and 'full'
cases of a seed show the same patient; the scanner is drawn last.
Distances in mm, patient frame: X towards patient left, Y towards posterior, Z towards
superior, Z = 0 at the anorectal junction (lowest labelled slice).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SIZES = ("small", "full")
TUMOR_FREE_FRACTION = 0.15
CONTENT_KINDS = ("gas", "fluid", "faeces", "collapsed")
CONTENT_P = (0.22, 0.18, 0.22, 0.38)      # per rectal segment
DISTRACTOR_FRACTION = 0.55                # a bowel loop placed within 2 cm of the rectum
MIMIC_FRACTION = 0.25                     # non-tumour wall thickening of one segment
PROSTHESIS_FRACTION = 0.12
PV_FRACTION = 0.65                        # portal venous (else non-contrast)
TUMOR_CONTRAST = {"enhancing": ((18.0, 45.0), 0.40), "mild": ((9.0, 18.0), 0.30), "iso": ((-6.0, 6.0), 0.30)}
THICKNESS_P = {0.625: 0.05, 1.0: 0.10, 1.25: 0.20, 2.0: 0.10, 2.5: 0.15, 3.0: 0.20, 5.0: 0.20}
SMALL_THICKNESS = (2.5, 3.0, 5.0)         # the small (test) size keeps thick slices only
SEGMENTS = 3                              # lower / mid / upper rectum


@dataclass
class Body:
    """Habitus: trunk outline, subcutaneous fat, muscle layers."""
    ax: float          # half width of the trunk at the hips
    ay: float          # half depth (AP)
    cy: float          # trunk centre (Y)
    power: float       # superellipse exponent (2 = ellipse, larger = boxier)
    sc_lat: float      # subcutaneous fat, lateral
    sc_ant: float
    sc_post: float
    glut_thick: float  # gluteus maximus thickness
    thigh_r: float
    table_gap: float


@dataclass
class Pelvis:
    """Bony landmarks."""
    fh_x: float; fh_y: float; fh_z: float; fh_r: float    # femoral heads (half distance, centre, radius)
    coccyx_tip: float; s1_z: float; crest_z: float
    sac_y_deep: float; sac_drop_lo: float; sac_drop_hi: float; sac_deep_frac: float
    sac_width: float; sym_len: float; sym_bottom: float; cortex: float


@dataclass
class Rectum:
    """The labelled rectum and its content."""
    length: float                       # anorectal junction -> rectosigmoid junction
    x0: float; gap: float               # lateral offset; presacral fat between sacrum and rectum
    radius: list[float]                 # outer radius per segment (distended or collapsed)
    wall: list[float]                   # wall thickness per segment
    content: list[str]                  # per segment: gas / fluid / faeces / collapsed
    fluid_level: list[float]            # gas segments: fraction of the lumen filled with fluid
    ecc: float
    folds: list[tuple[int, float, float]]
    meso_margin: float                  # mesorectal fat beyond the wall
    anal_len: float                     # anal canal below the junction
    nodes: list[tuple[float, float, float, float]]   # (z, angle, distance beyond wall, radius)
    mimic: int                          # segment with non-tumour thickening, -1 none
    sigmoid: list[tuple[float, float, float]]        # control points above the junction
    sigmoid_r: float
    sigmoid_content: str


@dataclass
class Tumour:
    present: bool
    z0: float; z1: float
    shape: str                # 'annular' | 'eccentric' | 'polypoid'
    angle: float; halfwidth: float; thick: float
    extension: bool           # into the mesorectal fat (T3)
    ext_mm: float
    contrast_kind: str        # 'enhancing' | 'mild' | 'iso'
    contrast: float           # HU, tumour mean minus wall mean
    lobes: list[tuple[int, float, float]]


@dataclass
class Organs:
    sex: str
    bladder: tuple[float, float, float]      # semi-axes (x, y, z)
    bladder_wall: float
    prostate: tuple[float, float, float]
    uterus_tilt: float
    uterus: tuple[float, float, float]
    vessels_r: float
    loops: list[list[tuple[float, float, float]]]    # small-bowel control points
    loop_r: list[float]
    loop_content: list[str]
    distractor: bool
    distractor_angle: float; distractor_gap: float; distractor_z: float; distractor_kind: str


@dataclass
class Scanner:
    px: float                  # in-plane spacing
    n: int                     # matrix
    thickness: float           # slice thickness = slice interval
    z_lo: float; z_hi: float   # z range of the scan
    phase: str                 # 'non-contrast' | 'portal-venous'
    kernel_mm: float           # point spread (sigma, mm): larger = softer kernel
    noise: float               # noise SD (HU) at 1.25 mm
    grain_mm: float            # noise correlation length
    bias: float                # slow additive bias amplitude (HU)
    cupping: float
    prosthesis: str            # 'none' | 'left' | 'right'
    streaks: float             # metal streak amplitude
    hardening: float           # beam hardening dark band between the femoral heads (HU)
    x_off: float; y_off: float # field-of-view centre
    hu: dict[str, float] = field(default_factory=dict)     # per-tissue mean HU of this case
    texture: dict[str, float] = field(default_factory=dict)


@dataclass
class CaseParams:
    seed: int
    size: str
    body: Body
    pelvis: Pelvis
    rectum: Rectum
    tumour: Tumour
    organs: Organs
    scanner: Scanner

    def to_dict(self) -> dict:
        """Plain-data copy (for the manifest and tests)."""
        return asdict(self)


def _curve(rng, start, n, step, drift, box):
    """Control points of a meandering bowel loop inside a (x0, x1, y0, y1, z0, z1) box."""
    pts = [tuple(start)]
    d = np.asarray(drift, float)
    for _ in range(n - 1):
        d = 0.6 * d + 0.8 * rng.normal(size=3)
        d /= max(np.linalg.norm(d), 1e-6)
        p = np.asarray(pts[-1]) + step * d
        lo, hi = np.array(box[0::2]), np.array(box[1::2])
        p = np.clip(p, lo, hi)
        pts.append(tuple(float(v) for v in p))
    return pts


def draw_params(seed: int, size: str = "full", has_tumor: bool | None = None) -> CaseParams:
    """Every random parameter of one case."""
    rng = np.random.default_rng(int(seed))
    u = rng.uniform
    body = Body(ax=u(145, 185), ay=u(100, 130), cy=u(-6, 6), power=u(2.1, 2.6), sc_lat=u(12, 40),
                sc_ant=u(10, 38), sc_post=u(10, 35), glut_thick=u(22, 40), thigh_r=u(72, 92),
                table_gap=u(0, 3))
    fh_r = u(21, 26)
    coccyx = u(5, 18)
    s1 = coccyx + u(125, 150)
    pel = Pelvis(fh_x=u(80, 96), fh_y=u(-14, 2), fh_z=u(36, 54), fh_r=fh_r, coccyx_tip=coccyx, s1_z=s1,
                 crest_z=s1 + u(15, 40), sac_y_deep=body.cy + body.ay - body.sc_post - u(32, 45),
                 sac_drop_lo=u(8, 16), sac_drop_hi=u(35, 55), sac_deep_frac=u(0.3, 0.45),
                 sac_width=u(48, 58), sym_len=u(36, 46), sym_bottom=u(-8, 6), cortex=u(1.5, 2.8))
    length = u(75, 125)
    content = [str(c) for c in rng.choice(CONTENT_KINDS, size=SEGMENTS, p=CONTENT_P)]
    radius, wall = [], []
    for c in content:
        if c == "collapsed":
            radius.append(u(8, 12)); wall.append(u(4, 6.5))
        else:
            radius.append(u(13, 24)); wall.append(u(2.0, 4.0))
    mimic = int(rng.integers(0, SEGMENTS)) if rng.random() < MIMIC_FRACTION else -1
    sig_pts = []
    # rectosigmoid: up and forward, then a loop towards patient left and up to the descending colon
    z = length
    sig_pts.append((u(-5, 5), 0.0, z))
    for k in range(5):
        sig_pts.append((float(u(-35, 45)), float(u(-70, -5)), float(z + u(10, 30))))
        z = sig_pts[-1][2]
    sig_pts.append((float(u(55, 75)), float(u(-10, 20)), float(z + u(20, 40))))
    rect = Rectum(length=length, x0=u(-8, 8), gap=u(6, 14), radius=radius, wall=wall, content=content,
                  fluid_level=[float(u(0.0, 0.5)) for _ in range(SEGMENTS)], ecc=u(0.0, 0.25),
                  folds=[(int(k), float(u(0.0, 0.07)), float(u(0, 2 * np.pi))) for k in range(3, 7)],
                  meso_margin=u(8, 18), anal_len=u(25, 40),
                  nodes=[(float(u(10, length - 5)), float(u(0, 2 * np.pi)), float(u(2, 9)), float(u(2.5, 6)))
                         for _ in range(int(rng.integers(0, 7)))],
                  mimic=mimic, sigmoid=sig_pts, sigmoid_r=u(12, 20),
                  sigmoid_content=str(rng.choice(CONTENT_KINDS, p=CONTENT_P)))
    present = bool(rng.random() >= TUMOR_FREE_FRACTION) if has_tumor is None else bool(has_tumor)
    ext = u(18, min(55.0, 0.6 * length))
    zc = u(4 + ext / 2, length - 4 - ext / 2)
    kinds = list(TUMOR_CONTRAST)
    kind = str(rng.choice(kinds, p=[TUMOR_CONTRAST[k][1] for k in kinds]))
    lo, hi = TUMOR_CONTRAST[kind][0]
    shape = str(rng.choice(["annular", "eccentric", "polypoid"], p=[0.35, 0.45, 0.20]))
    tum = Tumour(present=present, z0=float(zc - ext / 2), z1=float(zc + ext / 2), shape=shape,
                 angle=u(-np.pi, np.pi), halfwidth=u(0.6, 1.8), thick=u(5, 14),
                 extension=bool(rng.random() < 0.4), ext_mm=u(3, 10), contrast_kind=kind,
                 contrast=float(u(lo, hi)),
                 lobes=[(int(k), float(u(0.1, 0.3)), float(u(0, 2 * np.pi))) for k in (3, 5, 7)])
    sex = "male" if rng.random() < 0.5 else "female"
    fill = u(0.2, 1.0)
    loops, loop_r, loop_content = [], [], []
    for _ in range(int(rng.integers(3, 8))):
        start = (u(-70, 70), u(-80, -25), u(length + 10, length + 70))
        # small bowel stays above the mid rectum and in front of it (the distractor is placed on purpose)
        loops.append(_curve(rng, start, int(rng.integers(5, 10)), u(18, 28), rng.normal(size=3),
                            (-80, 80, -95, -20, max(45.0, 0.7 * length), 260)))
        loop_r.append(float(u(9, 14)))
        loop_content.append(str(rng.choice(["fluid", "gas", "collapsed", "fluid"])))
    org = Organs(sex=sex, bladder=(u(30, 55) * (0.6 + 0.4 * fill), u(22, 42) * (0.5 + 0.5 * fill),
                                   u(20, 45) * (0.5 + 0.5 * fill)),
                 bladder_wall=u(2.0, 4.5) * (1.3 - 0.5 * fill), prostate=(u(18, 26), u(13, 19), u(14, 22)),
                 uterus_tilt=u(0.2, 1.0), uterus=(u(22, 32), u(16, 24), u(30, 45)), vessels_r=u(0.85, 1.15),
                 loops=loops, loop_r=loop_r, loop_content=loop_content,
                 distractor=bool(rng.random() < DISTRACTOR_FRACTION),
                 distractor_angle=float(rng.choice([-1, 1]) * u(0.2, 1.4)), distractor_gap=u(0.0, 15.0),
                 distractor_z=u(0.35, 0.85) * length,
                 distractor_kind=str(rng.choice(["sigmoid", "small_bowel"])))
    # scanner: last, so that the anatomy of a seed is the same at both sizes
    if size == "full":
        ts = list(THICKNESS_P)
        thickness = float(rng.choice(ts, p=[THICKNESS_P[t] for t in ts]))
        n, px = 512, float(round(u(0.6, 1.0), 4))
    else:
        thickness = float(rng.choice(SMALL_THICKNESS))
        n, px = 128, float(round(u(1.9, 2.0), 4))   # 243-256 mm: a central field of view
        rng.random(); rng.random()  # keep the stream aligned with 'full'
    z_lo = -u(5, 48)   # may start below the anal verge
    z_hi = length + u(15, 80)   # may end above the sigmoid
    max_span = (150 if size == "full" else 70) * max(thickness, 1.25 if size == "full" else 2.5)
    z_hi = min(z_hi, z_lo + max_span)
    phase = "portal-venous" if rng.random() < PV_FRACTION else "non-contrast"
    kernel = u(0.35, 0.9)
    prosth = "none"
    if rng.random() < PROSTHESIS_FRACTION:
        prosth = str(rng.choice(["left", "right"]))
    sc = Scanner(px=px, n=n, thickness=thickness, z_lo=float(z_lo), z_hi=float(z_hi), phase=phase,
                 kernel_mm=kernel, noise=u(7, 22) * (1.0 + 0.6 * (0.9 - kernel)), grain_mm=u(0.5, 1.2),
                 bias=u(0, 25), cupping=u(0, 30), prosthesis=prosth, streaks=u(150, 450),
                 hardening=u(15, 60), x_off=u(-10, 10), y_off=u(-10, 15))
    from usam.phantom.labels import TISSUE_HU

    ph = 1 if phase == "portal-venous" else 0
    for tissue, ranges in TISSUE_HU.items():
        a, b = ranges[ph]
        sc.hu[tissue] = float(u(a, b))
    sc.texture = {"fat": u(4, 12), "muscle": u(4, 10), "cancellous": u(30, 70), "faeces": u(60, 110),
                  "bowel_wall": u(3, 8), "tumour": u(6, 16), "cortical": u(60, 150)}
    if ph == 0 and kind == "enhancing":  # without contrast a tumour hardly stands out
        tum.contrast_kind, tum.contrast = "mild", float(u(8, 16))
    sc.hu["tumour"] = float(np.clip(sc.hu["bowel_wall"] + tum.contrast, *TISSUE_HU["tumour"][ph]))
    return CaseParams(seed=int(seed), size=size, body=body, pelvis=pel, rectum=rect, tumour=tum,
                      organs=org, scanner=sc)
