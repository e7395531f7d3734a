"""Out-of-distribution checks: is this volume, or the model's output on it, unlike the training data?

Pure functions on arrays. Each returns a list of Finding; an empty list means nothing looked
unusual. The reference ranges are those of the training data of the shipped weights: the
synthetic pelvic phantom cohort (usam/phantom/params.py: 512^2 at 0.6-1.0 mm pixels, the small
test size 128^2 at 1.9-2.0 mm; 0.625-5 mm slices; at most 258 mm of pelvis, from below the anal
verge to above the sigmoid; rectum 75-125 mm long, tumours 18-55 mm long), widened to what a
pelvic CT of a patient (the CARE data of the paper) still plausibly shows. The phantom figures
in the comments are measured on the 40-case full cohort (seed 0) and 43 small cases. A finding is
a warning, never a verdict: the numbers stay on the page with the notice beside them.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from usam.preprocess import DEFAULT_WINDOW

# volume: intensities (HU) and geometry
HU_MIN, HU_MAX = -1100.0, 4000.0        # beyond the 0.5 / 99.5 percentiles: not CT numbers
MIN_HU_SPREAD = 300.0                   # p99.5 - p0.5 of a CT spans air to bone (phantom >= 1674)
BODY_HU = -500.0                        # voxels above this count as body
SOFT_WINDOW = DEFAULT_WINDOW            # the model's input window (usam.preprocess, defined once)
MIN_SOFT_SHARE = 0.60                   # share of body voxels inside it
TRAIN_SOFT_SHARE = (0.85, 0.97)         # ... in the phantom (full 0.85-0.96, small 0.86-0.97)
BODY_MEDIAN_RANGE = (-150.0, 150.0)     # median HU of the body
TRAIN_BODY_MEDIAN = (-54.0, 63.0)       # ... in the phantom (full -54..40, small -3..63)
PIXEL_MM = (0.5, 2.0)                   # in-plane spacing (phantom 0.6-1.0, small 1.9-2.0)
MAX_SLICE_MM = 5.0                      # slice spacing (phantom 0.625-5: 0.625/1/1.25/2/2.5/3/5)
MAX_COVERAGE_MM = 300.0                 # cranio-caudal coverage flagged beyond this
TRAIN_COVERAGE_MM = 258.0               # phantom at most (48 mm below the junction + 125 mm rectum + 80 mm + a slice)
# model output: uncertainty on the predicted foreground (the demo model retrained 2026-12-02 on the
# 6 validation phantoms, whole volumes without a prompt: mean normalised entropy 0.18-0.37, share of
# foreground pixels with max probability < 0.6 at 0.04-0.12); flagged beyond these, with a margin
MAX_MEAN_ENTROPY = 0.45
MAX_LOW_CONF_SHARE = 0.20
LOW_CONF = 0.6
# measurements: beyond these a rectal wall / rectal tumour is implausible
MAX_TUMOR_ML = 100.0
MAX_NORMAL_ML = 150.0
MAX_TUMOR_EXTENT_MM = 120.0
MAX_TUMOR_DIAMETER_MM = 100.0
MAX_RECTUM_EXTENT_MM = 200.0            # rectum and tumour together: the rectum is ~12-16 cm long


@dataclass(frozen=True)
class Finding:
    """One reason to distrust a result: what it concerns ('volume' | 'model' | 'measurement') and why."""

    concerns: str
    message: str


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).ravel()
    return a[np.isfinite(a)]


def _sample(a: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    """A strided subsample (statistics of a 512^2 x 300 volume need not read every voxel)."""
    flat = np.asarray(a).ravel()
    step = max(1, flat.size // max_voxels)
    return _finite(flat[::step])


def volume_findings(hu: np.ndarray, spacing: Sequence[float]) -> list[Finding]:
    """Intensity statistics and geometry of a (z, y, x) HU volume against the training range."""
    out: list[Finding] = []
    hu = np.asarray(hu)
    v = _sample(hu)
    if v.size == 0:
        return [Finding("volume", "The volume holds no finite values.")]
    p_lo, p_hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    if p_lo < HU_MIN or p_hi > HU_MAX:
        out.append(Finding("volume", f"Intensities span {p_lo:.0f} to {p_hi:.0f}, outside the CT range "
                                     "(-1024 to 3071 HU): the values may not be Hounsfield units."))
    elif p_hi - p_lo < MIN_HU_SPREAD:
        out.append(Finding("volume", f"Intensities span only {p_lo:.0f} to {p_hi:.0f}: a CT in Hounsfield "
                                     "units spans air to bone. This may be another modality or a "
                                     "normalised image."))
    body = v[v > BODY_HU]
    if body.size and not out:
        soft = float(np.mean((body > SOFT_WINDOW[0]) & (body < SOFT_WINDOW[1])))
        med = float(np.median(body))
        if soft < MIN_SOFT_SHARE:
            out.append(Finding("volume", f"Only {100 * soft:.0f} % of the body is soft tissue "
                                         f"({SOFT_WINDOW[0]:.0f} to {SOFT_WINDOW[1]:.0f} HU); the training "
                                         f"volumes have {100 * TRAIN_SOFT_SHARE[0]:.0f}-"
                                         f"{100 * TRAIN_SOFT_SHARE[1]:.0f} %."))
        elif not BODY_MEDIAN_RANGE[0] <= med <= BODY_MEDIAN_RANGE[1]:
            out.append(Finding("volume", f"The body's median intensity is {med:.0f} HU; the training "
                                         f"volumes have {TRAIN_BODY_MEDIAN[0]:.0f} to "
                                         f"{TRAIN_BODY_MEDIAN[1]:.0f} HU."))
    sz, sy, sx = (float(t) for t in spacing)
    px = max(sy, sx)
    if min(sy, sx) < PIXEL_MM[0] or px > PIXEL_MM[1]:
        out.append(Finding("volume", f"Pixel spacing {sx:.2f} × {sy:.2f} mm is outside the training range "
                                     f"({PIXEL_MM[0]:g}-{PIXEL_MM[1]:g} mm)."))
    if sz > MAX_SLICE_MM:
        out.append(Finding("volume", f"Slice spacing {sz:.2f} mm is coarser than the training volumes "
                                     f"(at most {MAX_SLICE_MM:g} mm)."))
    coverage = hu.shape[0] * sz if hu.ndim == 3 else 0.0
    if coverage > MAX_COVERAGE_MM:
        out.append(Finding("volume", f"The volume covers {coverage:.0f} mm cranio-caudally; the training "
                                     f"volumes cover the pelvis only (at most {TRAIN_COVERAGE_MM:.0f} mm). "
                                     "Structures outside the pelvis may be labelled as rectum or tumour."))
    return out


def uncertainty_stats(probs: Iterable[np.ndarray]) -> dict[str, float] | None:
    """Mean normalised entropy and low-max-probability share over the predicted foreground.

    probs: class probabilities (K, h, w) per slice (softmax, summing to 1); None when no slice
    has predicted foreground or the probabilities are not a distribution.
    """
    ent_sum, low, n = 0.0, 0, 0
    for p in probs:
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 3 or p.shape[0] < 2:
            continue
        fg = p.argmax(0) > 0
        if not fg.any():
            continue
        q = p[:, fg]
        if not np.allclose(q.sum(0), 1.0, atol=1e-3):
            continue  # not probabilities (a stand-in predictor): no statement
        qc = np.clip(q, 1e-12, 1.0)
        ent_sum += float((-(qc * np.log(qc)).sum(0) / math.log(p.shape[0])).sum())
        low += int((q.max(0) < LOW_CONF).sum())
        n += int(fg.sum())
    if n == 0:
        return None
    return {"mean_entropy": ent_sum / n, "low_conf_share": low / n, "pixels": float(n)}


def uncertainty_findings(stats: dict[str, float] | None) -> list[Finding]:
    """The model's own uncertainty on its predicted foreground, against what it shows on training-like data."""
    if not stats:
        return []
    ent, low = stats["mean_entropy"], stats["low_conf_share"]
    if ent > MAX_MEAN_ENTROPY or low > MAX_LOW_CONF_SHARE:
        return [Finding("model", f"The model is unsure of its own output: mean normalised entropy "
                                 f"{ent:.2f} (training-like data: at most {MAX_MEAN_ENTROPY:g}), "
                                 f"{100 * low:.0f} % of the predicted pixels below {LOW_CONF:g} "
                                 f"probability (at most {100 * MAX_LOW_CONF_SHARE:.0f} %).")]
    return []


def measurement_findings(m: dict[str, Any], labels: np.ndarray | None = None,
                         spacing: Sequence[float] | None = None) -> list[Finding]:
    """Measurements (app.measure.measurements) that no rectum or rectal tumour has."""
    out: list[Finding] = []

    def num(key: str) -> float:
        v = m.get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else 0.0

    tml, nml = num("tumor_ml"), num("normal_rectum_ml")
    ext, dia = num("tumor_craniocaudal_extent_mm"), num("tumor_max_axial_diameter_mm")
    limits = ((tml, MAX_TUMOR_ML, "Tumour volume {v:.1f} mL is implausible for a rectal tumour (> {lim:g} mL)."),
              (nml, MAX_NORMAL_ML, "Normal rectal wall volume {v:.1f} mL is implausible (> {lim:g} mL)."),
              (ext, MAX_TUMOR_EXTENT_MM, "Tumour extent {v:.0f} mm is longer than a rectum (> {lim:g} mm)."),
              (dia, MAX_TUMOR_DIAMETER_MM, "Tumour diameter {v:.0f} mm is implausible (> {lim:g} mm)."))
    out.extend(Finding("measurement", text.format(v=v, lim=lim)) for v, lim, text in limits if v > lim)
    if labels is not None and spacing is not None:
        zs = np.flatnonzero(np.asarray(labels).any(axis=(1, 2)))
        if zs.size:
            span = float(zs[-1] - zs[0] + 1) * float(spacing[0])
            if span > MAX_RECTUM_EXTENT_MM:
                out.append(Finding("measurement", f"Rectum and tumour together span {span:.0f} mm "
                                                  f"cranio-caudally; a rectum is 12-16 cm long "
                                                  f"(> {MAX_RECTUM_EXTENT_MM:g} mm flagged)."))
    return out


def notice_html(findings: Sequence[Finding], what: str = "these results") -> str:
    """The page's notice: a warning box listing the findings ('' when there are none)."""
    if not findings:
        return ""
    items = "".join(f"<li>{html.escape(f.message)}</li>" for f in findings)
    return ('<div class="usam-ood" role="alert"><b>⚠ Unlike the training data: treat '
            f'{html.escape(what)} with caution.</b><ul>{items}</ul>'
            'The model was trained on synthetic pelvic phantoms; the numbers are not measurements '
            'to rely on.</div>')
