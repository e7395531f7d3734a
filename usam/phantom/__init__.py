"""Synthetic pelvic CT phantoms: anatomy label map, CT image and ground truth (0/1/2) from a seed.

Built in the spirit of SynthSeg (Billot et al., MedIA 2023): a 3D anatomical label map
(anatomy.py, content.py) turned into CT by a randomised scanner model (scanner.py); every
parameter is drawn from the seed (params.py). Cohort files: cohort.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from usam.errors import VolumeError
from usam.phantom import anatomy, outlines, scanner
from usam.phantom.cohort import (add_arguments, generate_cohort, load_anatomy, load_case, load_cohort,
                                     load_manifest, run)
from usam.phantom.labels import L, NAMES, manifest_names
from usam.phantom.params import SIZES, CaseParams, draw_params
from usam.phantom.shapes import Canvas
from usam.volumes import Volume, canonical_affine

DEMO_SEED = 20230817


@dataclass
class PhantomCase:
    """One synthetic case: volume, label map (z, y, x) uint8 0/1/2, anatomy map and parameters."""

    case_id: str
    volume: Volume
    labels: np.ndarray
    info: dict
    anatomy: np.ndarray | None = None    # (z, y, x) uint8, names in labels.NAMES
    params: CaseParams | None = None


def _fine_grid(cp: CaseParams) -> tuple[np.ndarray, int]:
    """Fine Z positions (k per thick slice, k odd) with one thick slice centred at Z = 0."""
    sc = cp.scanner
    step_max = 1.25 if cp.size == "full" else 2.5
    k = max(int(math.ceil(sc.thickness / step_max - 1e-6)), 1)
    if k % 2 == 0:
        k += 1
    n0 = int(math.floor(-sc.z_lo / sc.thickness))
    n1 = int(math.floor(sc.z_hi / sc.thickness))
    centres = sc.thickness * np.arange(-n0, n1 + 1)
    offs = (np.arange(k) - (k - 1) / 2) * (sc.thickness / k)
    return (centres[:, None] + offs[None, :]).ravel(), k


def generate_case(seed: int, size: str = "small", has_tumor: bool | None = None) -> PhantomCase:
    """Generate one synthetic pelvic CT case ('small' for tests, 'full' = 512x512) from a seed."""
    if size not in SIZES:
        raise VolumeError(f"phantom size must be one of {SIZES}, not {size!r}")
    cp = draw_params(int(seed), size, has_tumor)
    sc = cp.scanner
    n, px = sc.n, sc.px
    xs = ((np.arange(n) - (n - 1) / 2.0) * px + sc.x_off).astype(np.float32)
    ys = ((np.arange(n) - (n - 1) / 2.0) * px + cp.body.cy + sc.y_off + 0.06 * n * px).astype(np.float32)
    zf, k = _fine_grid(cp)
    an = anatomy.build(cp)
    table = outlines.table_template(cp, xs, ys)
    fine = np.zeros((len(zf), n, n), np.uint8)
    for i, z in enumerate(zf):
        anatomy.render_slice(an, Canvas(xs, ys, float(z), fine[i]), table)
    zs = zf[k // 2::k]
    rng = np.random.default_rng([int(seed), 2])
    img = scanner.render(cp, fine, k, xs, ys, zs, rng)
    anat = np.ascontiguousarray(fine[k // 2::k])
    del fine
    labels = ground_truth(anat, zs, cp.rectum.length)
    spacing = (float(sc.thickness), float(px), float(px))
    origin = (float(-xs[0]), float(-ys[0]), float(zs[0]))   # RAS of voxel (0, 0, 0)
    affine = canonical_affine(spacing, origin)
    cid = f"phantom_{seed}"
    vol = Volume(array=img, spacing=spacing, affine=affine,
                 source={"format": "phantom", "name": cid, "shape_on_disk": [n, n, len(zs)],
                         "ornt_to_disk": [[0, 1], [1, 1], [2, 1]], "affine_on_disk": affine.tolist()})
    from usam.phantom.measure import case_info

    info = case_info(labels, anat, spacing, cp, zs)
    return PhantomCase(case_id=cid, volume=vol, labels=labels, info=info, anatomy=anat, params=cp)


def ground_truth(anat: np.ndarray, zs: np.ndarray, length: float) -> np.ndarray:
    """Labels 0/1/2 from the anatomy map: wall and folds -> 1, tumour -> 2, Z in [0, rectum length]."""
    lut = np.zeros(len(NAMES), np.uint8)
    lut[L["rectum_wall"]] = lut[L["rectum_folds"]] = 1
    lut[L["tumour"]] = 2
    lab = lut[anat]
    outside = (zs < -1e-6) | (zs > length + 1e-6)
    lab[outside] = 0
    return lab


def demo_case(index: int = 0, size: str = "full") -> PhantomCase:
    """The fixed demo cases of the app and the study (always with a tumour)."""
    return generate_case(DEMO_SEED + int(index), size=size, has_tumor=True)


__all__ = ["DEMO_SEED", "SIZES", "PhantomCase", "generate_case", "demo_case", "ground_truth", "manifest_names",
           "generate_cohort", "load_cohort", "load_case", "load_anatomy", "load_manifest", "add_arguments", "run",
           "CaseParams", "draw_params", "L", "NAMES"]
