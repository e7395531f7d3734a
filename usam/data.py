"""Training / evaluation data: cohort readers (NIfTI manifest, phantom, the public code's npz
layout), the in-memory 224 slice cache and prompt sampling (training and evaluation).
Augmentation and the training dataset live in usam/training/augment.py."""
from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usam.errors import UsamError, VolumeError
from usam.preprocess import DEFAULT_WINDOW  # one window for training and inference
from usam.preprocess import SIZE as MODEL_SIZE  # the model frame, defined once

SPLITS = ("train", "val", "test", "all")
LABEL_RESIZE = ("nearest", "onehot")


# ----------------------------------------------------------------------------- cohorts


@dataclass
class CaseData:
    """One volume with its label map, read into memory."""

    case_id: str
    split: str
    image: np.ndarray  # float32 HU (z, y, x); for npz slices already in [0, 1]
    labels: np.ndarray  # uint8 (z, y, x) 0/1/2
    spacing: tuple[float, float, float]
    info: dict = field(default_factory=dict)
    volume: object | None = None  # usam.volumes.Volume when read from a file
    prewindowed: bool = False  # True for npz slices (image already windowed to [0, 1])


def detect_format(data_dir: str | Path) -> str:
    """'manifest' for a cohort folder with manifest.json/csv, 'npz' for the public code's layout."""
    d = Path(data_dir)
    if not d.is_dir():
        raise UsamError(f"data folder not found: {d}")
    if (d / "manifest.json").exists() or (d / "manifest.csv").exists():
        return "manifest"
    if (d / "train" / "train_bbox.csv").exists() or (d / "test" / "test_bbox.csv").exists():
        return "npz"
    raise UsamError(
        f"{d} is neither a cohort folder (manifest.json / manifest.csv with case_id,image,label,split) "
        "nor the public code's npz layout ({train,test}/{split}_bbox.csv + {split}_npz/)"
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsamError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _read_manifest(d: Path) -> list[dict]:
    """manifest.json ({'cases': [...]}, the phantom cohort) or a plain manifest.csv."""
    if (d / "manifest.json").exists():
        from usam.phantom import load_cohort

        return load_cohort(d)
    with open(d / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"case_id", "image", "label", "split"} - set(rows[0] if rows else {})
    if missing:
        raise UsamError(f"{d / 'manifest.csv'} lacks the columns {sorted(missing)}")
    return rows


def list_cases(data_dir: str | Path, split: str = "all") -> list[dict]:
    """Manifest rows of a cohort folder for one split, with absolute image/label paths."""
    _check_split(split)
    d = Path(data_dir)
    out = []
    for row in _read_manifest(d):
        if split != "all" and row.get("split") != split:
            continue
        row = dict(row)
        row["image"] = str((d / row["image"]).resolve())
        row["label"] = str((d / row["label"]).resolve())
        if row.get("anatomy"):   # the phantom's label map of every structure (SynthSeg-style use)
            row["anatomy"] = str((d / row["anatomy"]).resolve())
        out.append(row)
    if not out:
        raise UsamError(f"no cases with split {split!r} in {d}")
    return out


def load_case(row: dict) -> CaseData:
    """Read one manifest row (image + label NIfTI) in canonical (z, y, x) orientation."""
    from usam.volumes import read_labelmap, read_volume

    volume = read_volume(row["image"])
    labels = read_labelmap(row["label"], reference=volume)
    if labels.shape != volume.array.shape:
        raise VolumeError(
            f"label map {row['label']} has shape {labels.shape}, image has {volume.array.shape}"
        )
    labels = np.minimum(labels, 2).astype(np.uint8)  # >2 -> tumour, as the public code does
    return CaseData(
        case_id=str(row["case_id"]),
        split=str(row.get("split", "")),
        image=np.asarray(volume.array, dtype=np.float32),
        labels=labels,
        spacing=tuple(float(s) for s in volume.spacing),
        info=row,
        volume=volume,
    )


def eval_z_range(labels: np.ndarray, info: dict | None = None) -> tuple[int, int] | None:
    """Slices [z0, z1) a case is evaluated on: the annotated region (rectum_start..rectum_end,
    inclusive, from the manifest) or else the z extent of the ground-truth foreground."""
    info = info or {}
    start, end = info.get("rectum_start"), info.get("rectum_end")
    if start not in (None, "") and end not in (None, ""):
        z0, z1 = int(start), int(end) + 1
        return max(0, z0), min(labels.shape[0], z1)
    zs = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return None
    return int(zs[0]), int(zs[-1]) + 1


# ----------------------------------------------------------------------------- npz layout


def read_npz_slice(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One slice of the public code's npz layout -> (image in [0,1], labels uint8), both (y, x).

    The arrays are stored transposed (first axis = x), so they are transposed back to the
    radiological display orientation used everywhere else."""
    try:
        with np.load(path) as npz:
            image = np.asarray(npz["image"], dtype=np.float32)
            label = np.asarray(npz["label"])
    except (OSError, KeyError, ValueError) as exc:
        raise VolumeError(f"cannot read npz slice {path}: {exc}") from exc
    if image.ndim != 2 or image.shape != label.shape:
        raise VolumeError(f"{path}: expected 2D image and label of one shape, got {image.shape}, {label.shape}")
    label = np.clip(np.rint(label), 0, 2).astype(np.uint8)  # float labels; >2 -> 2
    return np.ascontiguousarray(image.T), np.ascontiguousarray(label.T)


def _npz_names(root: Path, part: str) -> list[str]:
    csv_path = root / part / f"{part}_bbox.csv"
    if not csv_path.exists():
        return []
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    names = [r[0] for r in rows if r and r[0]]
    if names and not (root / part / f"{part}_npz" / f"{names[0]}.npz").exists():
        names = names[1:]  # a header row
    return names


def _in_val(name: str, val_fraction: float) -> bool:
    # Stable hash of the case part of the name (before the first '_'), so that slices of one
    # case stay together when names look like '<case>_<slice>'.
    case = name.split("_")[0]
    h = int(hashlib.sha256(case.encode()).hexdigest()[:8], 16)
    return (h % 10000) < val_fraction * 10000


def list_npz_slices(root: str | Path, split: str = "all", val_fraction: float = 0.1) -> list[Path]:
    """npz files of a split: test = test/; val = val/ when present, else a stable fraction of
    train/ (grouped by the case part of the name); train = the rest of train/."""
    _check_split(split)
    root = Path(root)
    has_val_dir = bool(_npz_names(root, "val"))
    out: list[Path] = []
    if split in ("train", "val", "all"):
        for name in _npz_names(root, "train"):
            is_val = (not has_val_dir) and _in_val(name, val_fraction)
            if split == "all" or (split == "val") == is_val:
                out.append(root / "train" / "train_npz" / f"{name}.npz")
    if split in ("val", "all") and has_val_dir:
        out += [root / "val" / "val_npz" / f"{n}.npz" for n in _npz_names(root, "val")]
    if split in ("test", "all"):
        out += [root / "test" / "test_npz" / f"{n}.npz" for n in _npz_names(root, "test")]
    if not out:
        raise UsamError(f"no npz slices for split {split!r} under {root}")
    return out


def iter_npz_cases(root: str | Path, split: str, val_fraction: float = 0.1) -> Iterator[CaseData]:
    """Each npz slice as a one-slice 'case' (prewindowed image, unknown spacing)."""
    for path in list_npz_slices(root, split, val_fraction):
        image, label = read_npz_slice(path)
        yield CaseData(
            case_id=path.stem, split=split, image=image[None], labels=label[None],
            spacing=(1.0, 1.0, 1.0), info={}, prewindowed=True,
        )


def iter_cases(data_dir: str | Path, split: str = "all", fmt: str = "auto",
               val_fraction: float = 0.1) -> Iterator[CaseData]:
    """Cases of any supported layout, one at a time (volumes are large)."""
    fmt = detect_format(data_dir) if fmt == "auto" else fmt
    if fmt == "npz":
        yield from iter_npz_cases(data_dir, split, val_fraction)
    elif fmt == "manifest":
        for row in list_cases(data_dir, split):
            yield load_case(row)
    else:
        raise UsamError(f"unknown data format {fmt!r}; choose auto, manifest or npz")


# ----------------------------------------------------------------------------- 224 slices


def resize_labels(labels: np.ndarray, size: int = MODEL_SIZE, method: str = "nearest") -> np.ndarray:
    """Label maps (n, h, w) -> (n, size, size) uint8.

    nearest: pixel-centre nearest neighbour (what a resized label file holds);
    onehot: area-weighted one-hot then argmax, which keeps thin structures (the rectal wall is
    1-3 px at 224) where nearest sampling drops or thickens them at random."""
    if method not in LABEL_RESIZE:
        raise UsamError(f"unknown label resize {method!r}; choose {', '.join(LABEL_RESIZE)}")
    lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))
    if lab.shape[-2:] == (size, size):
        return lab.numpy().copy()
    if method == "nearest":
        out = F.interpolate(lab[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0]
        return out.to(torch.uint8).numpy()
    onehot = F.one_hot(lab.long(), 3).permute(0, 3, 1, 2).float()
    soft = F.interpolate(onehot, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return soft.argmax(1).to(torch.uint8).numpy()


def model_input(images: np.ndarray, window: tuple[float, float], prewindowed: bool = False) -> torch.Tensor:
    """(n, h, w) slices -> (n, 3, 224, 224) normalized model input via usam.preprocess."""
    from usam.preprocess import preprocess_slices

    # prewindowed npz slices are already in [0, 1]: a (0, 1) window leaves them unchanged
    return preprocess_slices(np.asarray(images, dtype=np.float32), window=(0.0, 1.0) if prewindowed else tuple(window))


@dataclass
class SliceSet:
    """Preprocessed 224 slices held in memory so that CPU training is not I/O bound."""

    images: torch.Tensor  # (N, 224, 224) float16: channel 0 of the normalized model input
    labels: torch.Tensor  # (N, 224, 224) uint8
    case_ids: list[str]
    z: np.ndarray  # (N,) slice index within its case

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        return self.images.numel() * self.images.element_size() + self.labels.numel()


def slices_of_case(case: CaseData, window: tuple[float, float], include_empty: bool = False,
                   label_resize: str = "nearest", chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Model-ready 224 slices of one case: (images float16 (n,224,224), labels uint8, z indices)."""
    has_fg = case.labels.reshape(case.labels.shape[0], -1).any(axis=1)
    zs = np.arange(case.labels.shape[0]) if include_empty else np.flatnonzero(has_fg)
    imgs, labs = [], []
    for i in range(0, len(zs), chunk):
        part = zs[i:i + chunk]
        x = model_input(case.image[part], window, case.prewindowed)
        imgs.append(x[:, 0].to(torch.float16))  # the three channels are identical
        labs.append(torch.from_numpy(resize_labels(case.labels[part], MODEL_SIZE, label_resize)))
    if not imgs:
        empty = torch.zeros((0, MODEL_SIZE, MODEL_SIZE))
        return empty.to(torch.float16), empty.to(torch.uint8), zs
    return torch.cat(imgs), torch.cat(labs), zs


def build_slice_set(data_dir: str | Path, split: str, window: tuple[float, float] = DEFAULT_WINDOW,
                    include_empty: bool = False, label_resize: str = "nearest", fmt: str = "auto",
                    val_fraction: float = 0.1, progress: bool = False) -> SliceSet:
    """Read every case of a split and cache its preprocessed 224 slices."""
    cases = iter_cases(data_dir, split, fmt, val_fraction)
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc=f"loading {split}", unit="case")
    images, labels, ids, zs = [], [], [], []
    for case in cases:
        im, lab, z = slices_of_case(case, window, include_empty, label_resize)
        images.append(im)
        labels.append(lab)
        ids += [case.case_id] * len(z)
        zs.append(z)
    if not ids:
        raise UsamError(f"split {split!r} of {data_dir} has no slices with foreground")
    return SliceSet(torch.cat(images), torch.cat(labels), ids, np.concatenate(zs))


# ----------------------------------------------------------------------------- prompts

PROMPT_MODES = ("none", "points", "box", "box+points", "mixed")
# The concrete (kind, points per class) a 'mixed' batch draws from: every evaluation row.
MIXED_CHOICES: tuple[tuple[str, int], ...] = (
    ("none", 0), ("points", 1), ("points", 3), ("points", 5), ("box", 0), ("box+points", 3),
)


def choose_batch_mode(mode: str, k: int, rng: np.random.Generator) -> tuple[str, int]:
    """The concrete prompt kind and points per class of one batch."""
    if mode not in PROMPT_MODES:
        raise UsamError(f"unknown prompt mode {mode!r}; choose {', '.join(PROMPT_MODES)}")
    if mode == "mixed":
        return MIXED_CHOICES[int(rng.integers(0, len(MIXED_CHOICES)))]
    return mode, k


def merge_prompts(a, b):
    """Points and boxes of both (box+points prompts)."""
    return a + b


def jitter_box(prompts, rng: np.random.Generator, max_margin: int, size: int = MODEL_SIZE):
    """Grow each side of the box by an independent random 0..max_margin px (training)."""
    if len(prompts.boxes) == 0 or max_margin <= 0:
        return prompts
    boxes = prompts.boxes.astype(np.float32).copy()
    grow = rng.integers(0, max_margin + 1, size=(len(boxes), 4)).astype(np.float32)
    boxes[:, :2] -= grow[:, :2]
    boxes[:, 2:] += grow[:, 2:]
    # the model frame ends at size - 1 (pixel centres), like box_from_mask's clipping
    prompts.boxes = np.clip(boxes, 0, size - 1)
    return prompts


def sample_prompts(label2d: np.ndarray, kind: str, k: int, rng: np.random.Generator,
                   negatives: int = 0, max_margin: int = 4, box_per_class: bool = False):
    """Training prompts of one 224 label slice: random points per present class (x, y, with
    class identity, plus optional negatives) and/or a foreground box with random margins."""
    from usam.prompts import Prompts, box_from_mask, points_from_mask

    label2d = np.asarray(label2d)
    if kind == "none" or not label2d.any():
        return Prompts.empty()
    out = Prompts.empty()
    if kind in ("points", "box+points"):
        out = points_from_mask(label2d, k, rng, negatives=negatives)
    if kind in ("box", "box+points"):
        box = jitter_box(box_from_mask(label2d, margin=0, per_class=box_per_class), rng, max_margin)
        out = merge_prompts(out, box)
    elif kind != "points":
        raise UsamError(f"unknown prompt kind {kind!r}")
    return out


def eval_prompts(label2d: np.ndarray, mode: str):
    """Deterministic test prompts of one ground-truth slice for an evaluation row
    ('none', 'points1', 'points3', 'points5', 'box')."""
    from usam.prompts import Prompts, box_from_mask, points_from_mask

    if mode == "none" or not np.asarray(label2d).any():
        return Prompts.empty()
    if mode.startswith("points"):
        return points_from_mask(label2d, int(mode[len("points"):]), None)
    if mode == "box":
        return box_from_mask(label2d, margin=2)
    raise UsamError(f"unknown evaluation prompt {mode!r}")


def describe_data(data_dir: str | Path, fmt: str, sets: dict[str, SliceSet]) -> dict:
    """Provenance of the training data: folder, format, slice and case counts, manifest hash."""
    d = Path(data_dir)
    manifest = next((p for p in (d / "manifest.json", d / "manifest.csv") if p.exists()), None)
    return {
        "path": str(d.resolve()),
        "format": fmt,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest else None,
        "splits": {k: {"slices": len(v), "cases": len(set(v.case_ids))} for k, v in sets.items()},
    }


def to_json(obj) -> str:
    """Compact JSON with numpy scalars converted."""
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))
