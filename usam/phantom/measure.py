"""Numbers measured on a generated case (what the manifest records and the tests check)."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from usam.phantom.labels import L
from usam.phantom.params import CaseParams

RECTUM = ("rectum_wall", "rectum_folds", "tumour", "rectum_gas", "rectum_fluid", "rectum_faeces")
BOWEL = ("sigmoid_wall", "small_bowel_wall", "bowel_gas", "bowel_fluid", "bowel_faeces")


def _is(anat: np.ndarray, names) -> np.ndarray:
    lut = np.zeros(256, bool)
    lut[[L[n] for n in names]] = True
    return lut[anat]


def nearest_bowel_mm(anat: np.ndarray, labels: np.ndarray, px: float, zs: np.ndarray, length: float) -> float | None:
    """Smallest in-plane distance (mm) from the labelled rectum to another bowel loop on the same slice.

    Slices within 10 mm of the rectosigmoid junction are left out: there the sigmoid is the
    rectum's own continuation, not a separate loop.
    """
    best = None
    zl = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    for z in zl:
        if zs[z] > length - 10:
            continue
        b = _is(anat[z], BOWEL)
        if not b.any():
            continue
        r = _is(anat[z], RECTUM)
        rp, bp = np.argwhere(r), np.argwhere(b)
        d, _ = cKDTree(bp).query(rp, k=1)
        v = max(float(d.min()) - 1.0, 0.0) * px    # pixel centres -> gap between the two surfaces
        best = v if best is None else min(best, v)
    return None if best is None else round(best, 2)


def gas_free_share(anat: np.ndarray, labels: np.ndarray) -> float:
    """Share of labelled rectal slices without any rectal gas."""
    zl = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    if len(zl) == 0:
        return float("nan")
    gas = (anat[zl] == L["rectum_gas"]).reshape(len(zl), -1).any(axis=1)
    return round(float(1.0 - gas.mean()), 4)


def case_info(labels: np.ndarray, anat: np.ndarray, spacing, cp: CaseParams, zs: np.ndarray) -> dict:
    """Summary numbers of a case: slice ranges, volumes, and the randomised parameters."""
    zr = np.flatnonzero(labels.reshape(labels.shape[0], -1).max(axis=1) > 0)
    zt = np.flatnonzero((labels == 2).reshape(labels.shape[0], -1).any(axis=1))
    vox_ml = float(np.prod(spacing)) / 1000.0
    sc, t = cp.scanner, cp.tumour
    has_t = bool(len(zt) > 0)
    return {"spacing": [float(s) for s in spacing], "shape": [int(s) for s in labels.shape],
            "tumor_ml": round(float((labels == 2).sum()) * vox_ml, 3),
            "rectum_ml": round(float((labels == 1).sum()) * vox_ml, 3), "has_tumor": has_t,
            "rectum_start": int(zr[0]) if len(zr) else -1, "rectum_end": int(zr[-1]) if len(zr) else -1,
            "tumor_start": int(zt[0]) if len(zt) else -1, "tumor_end": int(zt[-1]) if len(zt) else -1,
            "seed": int(cp.seed), "sex": cp.organs.sex, "content": list(cp.rectum.content),
            "gas_free_share": gas_free_share(anat, labels),
            "distractor": bool(cp.organs.distractor), "nearest_bowel_mm": nearest_bowel_mm(anat, labels, sc.px, zs, cp.rectum.length),
            "tumour_shape": t.shape if has_t else None, "tumour_extension": bool(t.extension) if has_t else None,
            "tumour_contrast_kind": t.contrast_kind if has_t else None,
            "tumour_contrast_hu": round(sc.hu["tumour"] - sc.hu["bowel_wall"], 1) if has_t else None,
            "mimic": cp.rectum.mimic >= 0, "slice_thickness": float(sc.thickness), "phase": sc.phase,
            "kernel_mm": round(sc.kernel_mm, 3), "noise_hu": round(sc.noise, 1), "prosthesis": sc.prosthesis,
            "z0_mm": round(float(zs[0]), 2)}
