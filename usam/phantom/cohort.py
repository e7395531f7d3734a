"""Cohort files of the phantom: writing (NIfTI image / labels / anatomy + manifest) and reading.

Folder: manifest.json (+ manifest.csv), images/<id>.nii.gz, labels/<id>.nii.gz (0/1/2),
anatomy/<id>.nii.gz (one label per structure, names in the manifest's "anatomy_labels"),
optionally the public code's DataV6 npz layout.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from usam.errors import VolumeError
from usam.volumes import Volume, read_labelmap, read_volume, write_labelmap, write_volume

NPZ_WINDOW = (-160.0, 240.0)  # HU window of the DataV6 npz export (soft tissue)
NPZ_SIZE = 224
MANIFEST_FIELDS = ("case_id", "image", "label", "anatomy", "split", "spacing", "shape", "tumor_ml", "has_tumor",
                   "rectum_start", "rectum_end", "tumor_start", "tumor_end", "seed", "sex", "content",
                   "gas_free_share", "distractor", "nearest_bowel_mm", "tumour_shape", "tumour_extension",
                   "tumour_contrast_kind", "tumour_contrast_hu", "mimic", "slice_thickness", "phase", "kernel_mm",
                   "noise_hu", "prosthesis")


def splits(n: int, seed: int) -> list[str]:
    """Deterministic train/val/test assignment, about 70/15/15, each split non-empty when n >= 3."""
    n_val = max(1, int(round(0.15 * n))) if n >= 3 else 0
    n_test = max(1, int(round(0.15 * n))) if n >= 3 else (1 if n == 2 else 0)
    n_train = n - n_val - n_test
    order = np.random.default_rng(int(seed) + 7919).permutation(n)
    out = [""] * n
    for rank, i in enumerate(order):
        out[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def case_seed(seed: int, i: int) -> int:
    """Seed of case i of a cohort (distinct cohorts for distinct seeds)."""
    return int(seed) * 100003 + int(i)


def _npz_slices(case) -> list[tuple[int, np.ndarray, np.ndarray]]:
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


def _write_npz_layout(out_dir: Path, case, split: str, rows: dict) -> None:
    """Append one case's foreground slices to DataV6/{split}/{split}_npz and collect csv rows."""
    folder = out_dir / "DataV6" / split / f"{split}_npz"
    folder.mkdir(parents=True, exist_ok=True)
    for z, img, lab in _npz_slices(case):
        name = f"{case.case_id}_z{z:03d}"
        np.savez_compressed(folder / f"{name}.npz", image=img, label=lab)
        ii, jj = np.nonzero(lab > 0)  # bbox in the stored array's frame: x = second axis
        bbox = f"[{int(jj.min())}, {int(ii.min())}, {int(jj.max())}, {int(ii.max())}]"  # xyxy, as their loader
        rows.setdefault(split, []).append((name, bbox))


def _csv_value(v):
    if isinstance(v, list):
        return " ".join(map(str, v))
    return "" if v is None else v


def generate_cohort(out_dir, cases: int, seed: int, size: str = "small", npz_layout: bool = False,
                    progress=None) -> Path:
    """Write a cohort (NIfTI image / labels / anatomy, manifest.json/.csv, optional DataV6); returns the manifest path."""
    from usam.phantom import generate_case
    from usam.phantom.labels import manifest_names

    if cases < 1:
        raise VolumeError("a cohort needs at least one case")
    out_dir = Path(out_dir)
    for sub in ("images", "labels", "anatomy"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    split_of = splits(cases, seed)
    rows, npz_rows = [], {}
    for i in range(cases):
        case = generate_case(case_seed(seed, i), size=size)
        case.case_id = f"case_{i:03d}"
        image = Path("images") / f"{case.case_id}.nii.gz"
        label = Path("labels") / f"{case.case_id}.nii.gz"
        anat = Path("anatomy") / f"{case.case_id}.nii.gz"
        write_volume(case.volume, out_dir / image)
        write_labelmap(case.labels, case.volume, out_dir / label)
        write_labelmap(case.anatomy, case.volume, out_dir / anat)
        row = {"case_id": case.case_id, "image": image.as_posix(), "label": label.as_posix(),
               "anatomy": anat.as_posix(), "split": split_of[i]}
        row.update({k: v for k, v in case.info.items() if k in MANIFEST_FIELDS})
        rows.append({k: row.get(k) for k in MANIFEST_FIELDS})
        if npz_layout:
            _write_npz_layout(out_dir, case, split_of[i], npz_rows)
        if progress is not None:
            progress(i + 1, cases)
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps({"cohort_seed": int(seed), "size": size, "generator": "usam.phantom (anatomy v2)",
                                    "anatomy_labels": manifest_names(), "cases": rows}, indent=1))
    with open(out_dir / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_FIELDS)
        for r in rows:
            w.writerow([_csv_value(r[k]) for k in MANIFEST_FIELDS])
    for split, items in npz_rows.items():
        with open(out_dir / "DataV6" / split / f"{split}_bbox.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "bbox"])
            w.writerows(items)
    return manifest


def load_manifest(dir) -> dict:
    """The whole manifest.json of a cohort folder."""
    path = Path(dir) / "manifest.json"
    if not path.is_file():
        raise VolumeError(f"no manifest.json in {dir}")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("cases"), list):
            raise KeyError("cases")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VolumeError(f"unreadable cohort manifest {path}: {exc}") from None
    return data


def load_cohort(dir) -> list[dict]:
    """Manifest rows of a cohort folder (paths relative to the folder)."""
    return load_manifest(dir)["cases"]


def load_case(dir, row: dict) -> tuple[Volume, np.ndarray]:
    """Read the image volume and label map of one manifest row."""
    vol = read_volume(Path(dir) / row["image"])
    return vol, read_labelmap(Path(dir) / row["label"], reference=vol)


def load_anatomy(dir, row: dict, reference: Volume) -> np.ndarray:
    """Read the anatomy label map of one manifest row (names in the manifest's anatomy_labels)."""
    return read_labelmap(Path(dir) / row["anatomy"], reference=reference)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m usam phantom`."""
    from usam.phantom.params import SIZES

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


if __name__ == "__main__":
    import sys

    ap = argparse.ArgumentParser(prog="python -m usam.phantom.cohort")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
