"""Scanner model: anatomy label map -> CT image in HU (SynthSeg-style randomisation).

Per case: one mean HU per tissue inside its stated range (labels.TISSUE_HU, contrast phase),
tissue texture, slice thickness as the average of fine slices (partial volume along Z), a
kernel point spread, correlated noise, a slow bias with cupping, beam hardening between the
femoral heads, and streaks from a hip prosthesis.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from usam.phantom.labels import L, NAMES, TISSUE_OF
from usam.phantom.params import CaseParams


def tissue_lut(cp: CaseParams) -> tuple[np.ndarray, np.ndarray]:
    """(mean HU, texture SD) per anatomy label for this case."""
    hu = np.array([cp.scanner.hu[TISSUE_OF[n]] for n in NAMES], np.float32)
    tex = np.array([cp.scanner.texture.get(TISSUE_OF[n], 3.0) for n in NAMES], np.float32)
    tex[L["background"]] = 0.0
    tex[L["table"]] = tex[L["table_core"]] = 0.0
    return hu, tex


@functools.lru_cache(maxsize=32)
def _noise_gain(sigma_px: float) -> float:
    """1 / SD of unit white noise after the in-plane Gaussian (measured once per sigma)."""
    probe = np.random.default_rng(0).standard_normal((4, 96, 96)).astype(np.float32)
    f = ndimage.gaussian_filter(probe, (0, sigma_px, sigma_px), truncate=3.0)
    return 1.0 / float(f[:, 12:-12, 12:-12].std())


def _smooth_field(rng: np.random.Generator, shape, coarse: int) -> np.ndarray:
    """Unit-SD smooth random field, drawn `coarse` times coarser in-plane and interpolated."""
    nz, ny, nx = shape
    small = rng.standard_normal((nz, ny // coarse + 2, nx // coarse + 2)).astype(np.float32)
    small = ndimage.gaussian_filter(small, (0.7, 0.8, 0.8), truncate=2.0)
    small /= max(float(small.std()), 1e-6)
    f = ndimage.zoom(small, (1, coarse, coarse), order=1, grid_mode=False)
    return f[:, :ny, :nx]


def render(cp: CaseParams, anat_fine: np.ndarray, k: int, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """CT image (z, y, x) float32 HU of the thick slices (k fine slices each)."""
    sc = cp.scanner
    hu, tex = tissue_lut(cp)
    nzf, ny, nx = anat_fine.shape
    nz = nzf // k
    if k == 1:
        img = hu[anat_fine]
    else:
        img = np.zeros((nz, ny, nx), np.float32)
        for j in range(k):
            img += hu[anat_fine[j::k]]
        img /= np.float32(k)
    centre = anat_fine[k // 2::k]
    # tissue texture: a smooth field scaled by each tissue's SD (faeces: strongly mottled)
    field = _smooth_field(rng, img.shape, 4 if nx > 256 else 2)
    img += tex[centre] * field
    del field
    body = centre != L["background"]
    body &= (centre != L["table"]) & (centre != L["table_core"])
    # slow bias and cupping (centre of the body darker), inside the patient only
    X = (xs / 200.0).astype(np.float32)[None, None, :]
    Y = ((ys - cp.body.cy) / 150.0).astype(np.float32)[None, :, None]
    Z = ((zs - zs.mean()) / 150.0).astype(np.float32)[:, None, None]
    a = rng.uniform(-1, 1, 3).astype(np.float32)
    bias = sc.bias * (a[0] * X + a[1] * Y + a[2] * Z) - sc.cupping * np.clip(1.0 - (X * X + Y * Y) * 2.0, 0, 1)
    img += np.where(body, bias, 0.0).astype(np.float32)
    del bias
    _hardening_and_metal(cp, img, centre, xs, ys, zs, rng)
    # kernel point spread, then correlated noise (thicker slices are less noisy)
    sig = sc.kernel_mm / cp.scanner.px
    img = ndimage.gaussian_filter(img, (0, sig, sig), truncate=3.0, mode="nearest")
    g = sc.grain_mm / cp.scanner.px
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (0, g, g), truncate=3.0, mode="wrap")
    amp = sc.noise * math.sqrt(1.25 / max(sc.thickness, 0.625)) * _noise_gain(round(g, 3))
    img += np.float32(amp) * noise
    del noise
    np.clip(img, -1024, 3071, out=img)
    np.round(img, out=img)
    return img


def _hardening_and_metal(cp: CaseParams, img, centre, xs, ys, zs, rng) -> None:
    """Dark band between the femoral heads; streaks radiating from metal."""
    p, sc = cp.pelvis, cp.scanner
    X, Y = xs[None, :], ys[:, None]
    metal = L["prosthesis"]
    angles = rng.uniform(0, np.pi, 24)
    signs = np.where(rng.random(24) < 0.5, -1.0, 1.0)
    widths = rng.uniform(0.8, 2.5, 24)
    patterns: dict = {}
    for i, z in enumerate(zs):
        dz = abs(z - p.fh_z)
        m = centre[i] == metal
        has_metal = bool(m.any())
        if dz < p.fh_r:
            amp = sc.hardening * (1.0 - (dz / max(p.fh_r, 1)) ** 2) * (4.0 if has_metal else 1.0)
            band = np.exp(-0.5 * ((Y - p.fh_y) / (0.35 * p.fh_r)) ** 2) * (np.abs(X) < p.fh_x)
            img[i] -= np.float32(amp) * band.astype(np.float32)
        if has_metal:
            yy, xx = np.nonzero(m)
            key = (int(xs[xx].mean() // 12), int(ys[yy].mean() // 12))
            if key not in patterns:   # one streak pattern per 12 mm cell of the metal's centroid
                dx, dy = X - (key[0] + 0.5) * 12, Y - (key[1] + 0.5) * 12
                r = np.sqrt(dx * dx + dy * dy)
                pat = np.zeros(img.shape[1:], np.float32)
                for th, sg, wd in zip(angles, signs, widths):
                    perp = -dx * math.sin(th) + dy * math.cos(th)
                    pat += np.float32(sg) * np.exp(-0.5 * (perp / wd) ** 2).astype(np.float32)
                pat *= (1.0 / (1.0 + r / 60.0)).astype(np.float32)
                patterns[key] = pat
            area = float(m.sum()) * cp.scanner.px ** 2
            img[i] += np.float32(sc.streaks * min(math.sqrt(area / 1500.0), 1.5)) * patterns[key]
