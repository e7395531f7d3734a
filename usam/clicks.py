"""The class-aware corrective click simulator of training and evaluation (pure numpy/scipy).

A simulated user looks at a slice's prediction and clicks where it is most wrong. The error
kinds of class c are disjoint: a POSITIVE click of class c where the ground truth is c and the
prediction is not (missed, or drawn as another class: tumour drawn as normal wall gives a
positive tumour click), a NEGATIVE click of class c where the ground truth is background and
the prediction is c. The click goes to the largest connected error component over all kinds
(8-connected, so a one-pixel wall that runs diagonally stays one component) and, inside it,
to the maximum of its Euclidean distance transform with the slice's border counting as
outside, so clicks keep off the edges as in RITM. Ties are broken deterministically: the
component whose first pixel comes first in (kind, row, column) order, then the first maximum
of the distance transform in raster order. Kind order: positives of `classes` in order, then
negatives in order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from usam.errors import PromptError

_EIGHT = np.zeros((3, 3, 3), dtype=bool)  # 8-connected within a slice, never across the stacked axis
_EIGHT[1] = True


@dataclass(frozen=True)
class Click:
    """One simulated click in slice pixels: x = column, y = row; cls 1/2; positive or negative."""

    x: int
    y: int
    cls: int
    positive: bool


def _check(preds: np.ndarray, gts: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    preds, gts = np.asarray(preds), np.asarray(gts)
    if preds.shape != gts.shape or preds.ndim != 3:
        raise PromptError(f"prediction {preds.shape} and ground truth {gts.shape} must be equal (B, h, w) stacks")
    if not classes or any(int(c) <= 0 for c in classes):
        raise PromptError(f"click classes must be foreground labels (1, 2), got {tuple(classes)}")
    return preds, gts


def error_kinds(preds: np.ndarray, gts: np.ndarray, classes: Sequence[int] = (1, 2)) -> np.ndarray:
    """Bool (2 * len(classes), B, h, w): positive errors of each class, then negative errors of each class."""
    preds, gts = _check(preds, gts, classes)
    bg = gts == 0
    pos = [(gts == c) & (preds != c) for c in classes]
    neg = [bg & (preds == c) for c in classes]
    return np.stack(pos + neg)


def next_clicks(preds: np.ndarray, gts: np.ndarray, classes: Sequence[int] = (1, 2)) -> list[Click | None]:
    """next_click for each slice of (B, h, w) stacks of predicted and true label maps (one labelling pass)."""
    classes = tuple(int(c) for c in classes)
    kinds = error_kinds(preds, gts, classes)
    n_kinds, b, h, w = kinds.shape
    out: list[Click | None] = [None] * b
    if not kinds.any():
        return out
    # slices of all kinds stacked on one axis (kind-major), labelled in one call without linking slices;
    # only stacked slices with an error, cropped to the errors' common bounding box (labelling is the cost)
    stack = kinds.reshape(n_kinds * b, h, w)
    keep = np.flatnonzero(stack.any(axis=(1, 2)))
    rows_any, cols_any = kinds.any(axis=(0, 1, 3)), kinds.any(axis=(0, 1, 2))
    r0, c0 = int(np.argmax(rows_any)), int(np.argmax(cols_any))
    r1, c1 = h - int(np.argmax(rows_any[::-1])), w - int(np.argmax(cols_any[::-1]))
    lab, n = ndimage.label(stack[keep, r0:r1, c0:c1], structure=_EIGHT)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    boxes = ndimage.find_objects(lab)
    stack_idx = keep[np.fromiter((bx[0].start for bx in boxes), dtype=np.int64, count=n)]
    slice_of, kind_of = stack_idx % b, stack_idx // b
    # per slice: the largest component; among equal sizes the lowest label id, i.e. first in (kind, raster) order
    order = np.lexsort((np.arange(n), -sizes, slice_of))
    first = order[np.r_[True, slice_of[order][1:] != slice_of[order][:-1]]]
    for i in first:
        plane, rows, cols = boxes[i]
        comp = lab[plane.start, rows, cols] == i + 1
        # the one-pixel False frame makes the slice border (and the box edge) count as outside
        dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        k = int(kind_of[i])
        out[int(slice_of[i])] = Click(x=int(c0 + cols.start + c), y=int(r0 + rows.start + r),
                                      cls=classes[k % len(classes)], positive=k < len(classes))
    return out


def next_click(pred: np.ndarray, gt: np.ndarray, classes: Sequence[int] = (1, 2)) -> Click | None:
    """The corrective click of one 2D slice (any resolution), or None when the prediction has no error."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2:
        raise PromptError(f"next_click needs 2-D label maps, got shape {pred.shape}")
    return next_clicks(pred[None], gt[None], classes)[0]


def clicks_to_arrays(clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N, 2) float32 as (x, y), labels (N,) 1/0 and classes (N,): the fields of usam.prompts' types."""
    pts = np.array([[c.x, c.y] for c in clicks], dtype=np.float32).reshape(-1, 2)
    labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int64)
    classes = np.array([c.cls for c in clicks], dtype=np.int64)
    return pts, labels, classes


def click_prompts(clicks: Sequence[Click]):
    """The clicks as usam.prompts.SlicePrompts (slice pixels; convert with .to_model(shape))."""
    from usam.prompts import SlicePrompts

    pts, labels, classes = clicks_to_arrays(clicks)
    return SlicePrompts(points=pts, point_labels=labels, point_classes=classes)
