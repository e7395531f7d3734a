"""Scoring of a submitted annotation against the locked ground truth: 3D over start..end with
the case spacing (Dice, IoU, NSD at a printed tolerance, HD95, volumes). Pure functions."""
from __future__ import annotations

import hashlib
import math
import zlib

import numpy as np

from study.errors import InvalidInput

CLASS_NAMES = {1: "normal", 2: "tumor"}
METRICS = ("dice", "iou", "nsd", "hd95")


def encode_mask(labels: np.ndarray) -> bytes:
    """zlib of a uint8 label map (values 0/1/2); label maps compress ~100x."""
    return zlib.compress(np.ascontiguousarray(labels, dtype=np.uint8).tobytes(), 6)


def decode_mask(data: bytes, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Inverse of encode_mask."""
    return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(tuple(shape)).copy()


def check_labels(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (h, w) uint8 label map with values in {0, 1, 2}, else InvalidInput (nothing stored)."""
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise InvalidInput(f"Mask shape {arr.shape} does not match the slice {tuple(shape)}.")
    if arr.dtype.kind not in "biu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidInput("Mask values must be the labels 0, 1 or 2.")
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise InvalidInput("Mask values must be the labels 0, 1 or 2.")
    return arr.astype(np.uint8)


def labels_sha256(labels: np.ndarray, spacing) -> str:
    """sha256 of a label array and its spacing: locks the ground truth against silent edits."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    h.update(str(tuple(labels.shape)).encode())
    h.update(np.asarray(spacing, dtype=np.float64).tobytes())
    return h.hexdigest()


def _json_num(x: float) -> float | None:
    # NaN (undefined) and inf (one mask empty) are not valid JSON in PostgreSQL: store None
    x = float(x)
    return x if math.isfinite(x) else None


def score_case(pred: np.ndarray, gt: np.ndarray, spacing, nsd_tolerance_mm: float = 2.0) -> dict:
    """Flat JSON-safe scores of one annotation (both arrays already cropped to start..end).

    Keys: '<metric>_<normal|tumor|mean>' for dice/iou/nsd/hd95, 'vol_pred_<cls>_ml',
    'vol_gt_<cls>_ml', 'nsd_tolerance_mm', 'undefined' (classes empty in both), 'hd95_inf'
    (classes with exactly one mask empty). Undefined or infinite values are None."""
    from usam.metrics import case_metrics

    m = case_metrics(np.asarray(pred), np.asarray(gt), tuple(float(s) for s in spacing),
                     nsd_tolerance_mm=nsd_tolerance_mm)
    out: dict = {"nsd_tolerance_mm": float(nsd_tolerance_mm), "undefined": list(m["undefined"]),
                 "hd95_inf": []}
    for c, name in CLASS_NAMES.items():
        pc = m["per_class"][c]
        for k in METRICS:
            out[f"{k}_{name}"] = _json_num(pc[k])
        if math.isinf(pc["hd95"]):
            out["hd95_inf"].append(c)
        out[f"vol_pred_{name}_ml"] = float(pc["vol_pred_ml"])
        out[f"vol_gt_{name}_ml"] = float(pc["vol_gt_ml"])
    for k in METRICS:
        out[f"{k}_mean"] = _json_num(m["mean"][k])
    return out


def pairwise_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over classes 1 and 2 of the Dice between two label maps (inter-observer agreement)."""
    vals = []
    for c in (1, 2):
        pa, pb = a == c, b == c
        s = int(pa.sum()) + int(pb.sum())
        if s:
            vals.append(2.0 * int(np.logical_and(pa, pb).sum()) / s)
    return float(np.mean(vals)) if vals else float("nan")
