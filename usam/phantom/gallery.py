"""Gallery of phantom cases: axial slices at five levels, a sagittal and a coronal view.

`python -m usam.phantom.gallery --out docs/images` writes one PNG per case (soft-tissue window,
ground-truth outline: red = normal rectal wall, blue = tumour).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WINDOW = (-160.0, 240.0)
TILE = 300
CASES = {"male": (7, None), "female": (4, None), "collapsed": (None, "collapsed"), "prosthesis": (None, "prosthesis")}


def _gray(a: np.ndarray, window=WINDOW) -> np.ndarray:
    lo, hi = window
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _outline(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge pixels of label 1 and label 2."""
    out = []
    for v in (1, 2):
        m = lab == v
        e = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out.append(e)
    return out[0], out[1]


def _tile(img2d: np.ndarray, lab2d: np.ndarray, aspect: float, title: str, outline: bool) -> Image.Image:
    """One view: grey image, outline, resized to TILE wide keeping mm proportions (aspect = row mm / col mm)."""
    g = np.stack([_gray(img2d)] * 3, axis=-1)
    if outline:
        e1, e2 = _outline(lab2d)
        g[e1] = (255, 40, 40)
        g[e2] = (60, 120, 255)
    h, w = g.shape[:2]
    im = Image.fromarray(g)
    new_h = max(int(round(TILE * h * aspect / w)), 1)
    im = im.resize((TILE, new_h), Image.BILINEAR)
    canvas = Image.new("RGB", (TILE, max(new_h, TILE)), (0, 0, 0))
    canvas.paste(im, (0, (max(new_h, TILE) - new_h) // 2))
    ImageDraw.Draw(canvas).text((4, 4), title, fill=(255, 255, 0))
    return canvas


def case_panel(case, outline: bool = True) -> Image.Image:
    """Five axial levels + sagittal + coronal of one case, in one row-wrapped panel."""
    a, lab = case.volume.array, case.labels
    sz, sy, sx = case.volume.spacing
    z0 = case.info["z0_mm"]
    cp = case.params
    zmm = lambda z: int(np.clip(round((z - z0) / sz), 0, len(a) - 1))  # noqa: E731
    levels = [("anal canal", -18.0), ("junction", 8.0), ("femoral heads", cp.pelvis.fh_z),
              ("mid rectum", 0.65 * cp.rectum.length), ("sigmoid / S1", cp.rectum.length + 35)]
    tiles = [_tile(a[zmm(z)], lab[zmm(z)], 1.0, f"{name} z={zmm(z)}", outline) for name, z in levels]
    zr = np.flatnonzero(lab.reshape(len(lab), -1).any(axis=1))
    zc = zr[len(zr) // 2] if len(zr) else len(a) // 2
    ys, xs = np.nonzero(lab[zc]) if len(zr) else (np.array([a.shape[1] // 2]), np.array([a.shape[2] // 2]))
    xc, yc = int(np.median(xs)), int(np.median(ys))
    tiles.append(_tile(a[::-1, :, xc], lab[::-1, :, xc], sz / sy, f"sagittal x={xc}", outline))
    tiles.append(_tile(a[::-1, yc, :], lab[::-1, yc, :], sz / sx, f"coronal y={yc}", outline))
    hgt = max(t.size[1] for t in tiles)
    panel = Image.new("RGB", (TILE * 4, hgt * 2), (0, 0, 0))
    for i, t in enumerate(tiles):
        panel.paste(t, ((i % 4) * TILE, (i // 4) * hgt))
    info = case.info
    txt = (f"{case.case_id} {info['sex']} {info['slice_thickness']} mm {info['phase']} content={'/'.join(info['content'])} "
           f"tumour={info['tumour_shape']} {info['tumour_contrast_kind']} prosthesis={info['prosthesis']}")
    ImageDraw.Draw(panel).text((TILE * 3 + 4, hgt + hgt - 60), txt[:48], fill=(255, 255, 255))
    ImageDraw.Draw(panel).text((TILE * 3 + 4, hgt + hgt - 45), txt[48:96], fill=(255, 255, 255))
    ImageDraw.Draw(panel).text((TILE * 3 + 4, hgt + hgt - 30), txt[96:], fill=(255, 255, 255))
    return panel


def pick_seed(kind: str, start: int = 1) -> int:
    """First seed from `start` whose parameters give a case of that kind."""
    from usam.phantom.params import draw_params

    for s in range(start, start + 500):
        cp = draw_params(s, "full")
        if kind == "male" and cp.organs.sex == "male" and cp.scanner.prosthesis == "none":
            return s
        if kind == "female" and cp.organs.sex == "female" and cp.scanner.prosthesis == "none":
            return s
        if kind == "collapsed" and cp.rectum.content.count("collapsed") >= 2:
            return s
        if kind == "prosthesis" and cp.scanner.prosthesis != "none":
            return s
    raise ValueError(kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--size", default="full")
    ap.add_argument("--kinds", nargs="*", default=list(CASES))
    ap.add_argument("--start", type=int, default=1)
    args = ap.parse_args(argv)
    from usam.phantom import generate_case

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds:
        seed = pick_seed(kind, args.start)
        case = generate_case(seed, args.size)
        case_panel(case).save(out / f"phantom_{kind}.png")
        print(kind, seed, out / f"phantom_{kind}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
