"""Prompt types (points with label and class, boxes) and automatic prompts from label maps.

Two frames, two types. `SlicePrompts` hold what callers pass: slice pixels, x = column and
y = row, box corners the first and last pixel covered (as a user drags them). `Prompts` hold
the 224 model frame the network reads. `SlicePrompts.to_model` is the one conversion
(slice_to_model / model_to_slice do the arithmetic), as SamPredictor converts at its edge.
The label-map helpers (points_from_mask, box_from_mask) give model-frame Prompts for training
and evaluation; slice_points_from_mask and slice_box_from_mask give the same in slice pixels
for predictor callers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from usam.errors import PromptError
from usam.preprocess import SIZE as MODEL_SIZE  # the model frame's side, defined once
CLASSES = (1, 2)  # 1 normal rectum, 2 tumor
_FIELDS = ("points", "point_labels", "point_classes", "boxes", "box_classes")


def _f32(a, shape_tail: tuple[int, ...]) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).reshape((-1,) + shape_tail)


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


@dataclass
class _PromptArrays:
    """N points (x, y) with label 1/0 and class 0..2, M boxes (x0, y0, x1, y1) with class; frame set by the subclass."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    point_classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.points = _f32(self.points, (2,))
        self.point_labels = _i64(self.point_labels)
        self.point_classes = _i64(self.point_classes)
        self.boxes = _f32(self.boxes, (4,))
        self.box_classes = _i64(self.box_classes)
        if len(self.point_classes) == 0 and len(self.points):
            self.point_classes = np.zeros(len(self.points), np.int64)
        if len(self.box_classes) == 0 and len(self.boxes):
            self.box_classes = np.zeros(len(self.boxes), np.int64)
        self.validate()

    @classmethod
    def empty(cls):
        """No prompt at all (the public code's default mode)."""
        return cls()

    @property
    def is_empty(self) -> bool:
        """True when there is neither a point nor a box."""
        return len(self.points) == 0 and len(self.boxes) == 0

    @property
    def signature(self) -> tuple[int, int]:
        """(number of points, number of boxes): prompts with equal signatures decode as one batch."""
        return len(self.points), len(self.boxes)

    def _check_content(self) -> None:
        """Raise PromptError for inconsistent lengths, bad labels/classes, non-finite or inverted boxes."""
        n, m = len(self.points), len(self.boxes)
        if len(self.point_labels) != n or len(self.point_classes) != n:
            raise PromptError(f"{n} points but {len(self.point_labels)} labels / {len(self.point_classes)} classes")
        if len(self.box_classes) != m:
            raise PromptError(f"{m} boxes but {len(self.box_classes)} box classes")
        if n and not np.isin(self.point_labels, (0, 1)).all():
            raise PromptError("point labels must be 1 (positive) or 0 (negative)")
        if not np.isin(self.point_classes, (0,) + CLASSES).all() or not np.isin(self.box_classes, (0,) + CLASSES).all():
            raise PromptError("prompt classes must be 0 (unknown/union), 1 (normal rectum) or 2 (tumor)")
        coords = np.concatenate([self.points.reshape(-1), self.boxes.reshape(-1)])
        if coords.size and not np.isfinite(coords).all():
            raise PromptError("prompt coordinates must be finite numbers")
        if m and ((self.boxes[:, 2] < self.boxes[:, 0]) | (self.boxes[:, 3] < self.boxes[:, 1])).any():
            raise PromptError("a box needs x0 <= x1 and y0 <= y1")

    def validate(self) -> None:
        """Raise PromptError for inconsistent content."""
        self._check_content()

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {k: getattr(self, k).tolist() for k in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of to_dict."""
        return cls(**{k: d.get(k, []) for k in _FIELDS})

    def __add__(self, other):
        """Points and boxes of both (of the same frame)."""
        if type(other) is not type(self):
            raise PromptError(f"cannot add {type(other).__name__} to {type(self).__name__}: different frames")
        return type(self)(np.concatenate([self.points, other.points]),
                       np.concatenate([self.point_labels, other.point_labels]),
                       np.concatenate([self.point_classes, other.point_classes]),
                       np.concatenate([self.boxes, other.boxes]),
                       np.concatenate([self.box_classes, other.box_classes]))


@dataclass
class Prompts(_PromptArrays):
    """Prompts for one slice in the 224 model frame; N points and M boxes (M = 1 union box or one per class)."""

    def validate(self, size: int = MODEL_SIZE) -> None:
        """Raise PromptError for inconsistent lengths, bad labels/classes or coordinates off the frame."""
        self._check_content()
        coords = np.concatenate([self.points.reshape(-1), self.boxes.reshape(-1)])
        if coords.size and (coords.min() < -0.5 or coords.max() > size - 0.5):
            raise PromptError(f"prompt coordinates must lie inside the {size}x{size} model frame")


@dataclass
class SlicePrompts(_PromptArrays):
    """Prompts for one slice in its own pixels: x = column, y = row (what a user clicks).

    A point lies on the slice (-0.5 <= x < w, -0.5 <= y < h: pixel centres at integers, and a
    click anywhere on the last pixel still counts). A box (x0, y0, x1, y1) runs from its first
    to its last pixel, both included (as box_from_mask); it may be dragged past the slice's
    edge (it is clipped) but must overlap the slice.
    """

    def validate(self, shape_hw: tuple[int, int] | None = None) -> None:
        """Content checks; with the slice shape (h, w) also that points lie on it and boxes overlap it."""
        self._check_content()
        if shape_hw is None:
            return
        h, w = (int(v) for v in shape_hw)
        if len(self.points):
            x, y = self.points[:, 0], self.points[:, 1]
            if ((x < -0.5) | (x >= w) | (y < -0.5) | (y >= h)).any():
                raise PromptError(f"a point lies outside the {w} x {h} slice")
        if len(self.boxes):
            b = self.boxes
            if ((b[:, 2] < -0.5) | (b[:, 0] >= w) | (b[:, 3] < -0.5) | (b[:, 1] >= h)).any():
                raise PromptError(f"a box lies outside the {w} x {h} slice")

    def to_model(self, shape_hw: tuple[int, int], size: int = MODEL_SIZE) -> Prompts:
        """The same prompts in the model frame of a slice of shape (h, w): the one slice -> 224 conversion.

        Pixel centres map onto pixel centres of the bilinear resize (slice_to_model); points are
        kept inside the frame (at most half a slice pixel moves), boxes are clipped to the
        slice's pixels and then to the frame's, as box_from_mask.
        """
        self.validate(shape_hw)
        h, w = (int(v) for v in shape_hw)
        points = np.clip(slice_to_model(self.points, (h, w), size), -0.5, size - 0.5)
        boxes = self.boxes.copy()
        if len(boxes):
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w - 1)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h - 1)
            boxes = np.clip(slice_to_model(boxes.reshape(-1, 2), (h, w), size).reshape(-1, 4), 0, size - 1)
        return Prompts(points, self.point_labels, self.point_classes, boxes, self.box_classes)


def to_model_frame(prompts: Prompts | SlicePrompts | None, shape_hw: tuple[int, int]) -> Prompts | None:
    """Model-frame prompts for a slice of shape (h, w): SlicePrompts are converted, Prompts pass (validated)."""
    if prompts is None:
        return None
    if isinstance(prompts, SlicePrompts):
        return prompts.to_model(shape_hw)
    if not isinstance(prompts, Prompts):
        raise PromptError(f"prompts must be SlicePrompts (slice pixels) or Prompts (model frame), "
                          f"not {type(prompts).__name__}")
    prompts.validate()
    return prompts


def slice_to_model(xy, slice_shape_hw: tuple[int, int], size: int = MODEL_SIZE) -> np.ndarray:
    """Pixel (x, y) of a slice (h, w) -> (x, y) in the 224 frame (pixel centres, as bilinear resize)."""
    xy = np.asarray(xy, dtype=np.float64)
    h, w = slice_shape_hw
    scale = np.array([size / w, size / h])
    return ((xy.reshape(-1, 2) + 0.5) * scale - 0.5).reshape(xy.shape).astype(np.float32)


def model_to_slice(xy, slice_shape_hw: tuple[int, int], size: int = MODEL_SIZE) -> np.ndarray:
    """Inverse of slice_to_model."""
    xy = np.asarray(xy, dtype=np.float64)
    h, w = slice_shape_hw
    scale = np.array([w / size, h / size])
    return ((xy.reshape(-1, 2) + 0.5) * scale - 0.5).reshape(xy.shape).astype(np.float32)


def _evenly_spaced(n: int, k: int) -> np.ndarray:
    """Reference test protocol: max(10, 2k) evenly spaced slots in raster order, even slots, first k."""
    slots = np.linspace(0, n - 1, max(10, 2 * k)).round().astype(np.int64)
    return slots[0::2][:k]


def points_from_mask(labels2d: np.ndarray, k: int, rng: np.random.Generator | None = None,
                     negatives: int = 0) -> Prompts:
    """k positive points per present class (class-tagged), plus optional negative background points.

    rng None: deterministic, evenly spaced in raster order (the reference test protocol);
    otherwise uniform random pixels. Negatives come from background within the foreground's
    bounding box grown by 10 px (far-away background tells the model nothing).
    """
    labels2d = np.asarray(labels2d)
    if labels2d.ndim != 2:
        raise PromptError(f"points_from_mask needs a 2-D label map, got shape {labels2d.shape}")
    pts, lab, cls = [], [], []
    for c in CLASSES:
        rows, cols = np.nonzero(labels2d == c)  # raster order
        if len(rows) == 0 or k <= 0:
            continue
        idx = _evenly_spaced(len(rows), k) if rng is None else rng.choice(len(rows), size=min(k, len(rows)), replace=False)
        pts += list(zip(cols[idx], rows[idx]))
        lab += [1] * len(idx)
        cls += [c] * len(idx)
    if negatives > 0:
        fg = labels2d > 0
        if fg.any():
            rows, cols = np.nonzero(fg)
            h, w = labels2d.shape
            r0, r1 = max(rows.min() - 10, 0), min(rows.max() + 10, h - 1)
            c0, c1 = max(cols.min() - 10, 0), min(cols.max() + 10, w - 1)
            bg = np.zeros_like(fg)
            bg[r0:r1 + 1, c0:c1 + 1] = True
            rows, cols = np.nonzero(bg & ~fg)
            if len(rows):
                idx = (_evenly_spaced(len(rows), negatives) if rng is None
                       else rng.choice(len(rows), size=min(negatives, len(rows)), replace=False))
                pts += list(zip(cols[idx], rows[idx]))
                lab += [0] * len(idx)
                cls += [0] * len(idx)
    if not pts:
        return Prompts.empty()
    xy = slice_to_model(np.asarray(pts, dtype=np.float64), labels2d.shape)
    return Prompts(points=xy, point_labels=lab, point_classes=cls)


def slice_points_from_mask(labels2d: np.ndarray, k: int, rng: np.random.Generator | None = None,
                           negatives: int = 0) -> SlicePrompts:
    """points_from_mask in slice pixels (x = column, y = row), for callers of the predictor.

    The same pixels as points_from_mask (rng None: evenly spaced in raster order), so
    `.to_model(shape)` gives its Prompts; the choice is made there once and mapped back here
    (the round trip moves a pixel index by < 1e-3, rounded away).
    """
    p = points_from_mask(labels2d, k, rng, negatives=negatives)
    if p.is_empty:
        return SlicePrompts.empty()
    xy = np.rint(model_to_slice(p.points, np.asarray(labels2d).shape))
    return SlicePrompts(points=xy, point_labels=p.point_labels, point_classes=p.point_classes)


def _mask_extents(labels2d: np.ndarray, per_class: bool, name: str) -> list[tuple[int, int, int, int, int]]:
    """(class, first col, first row, last col, last row) of the union foreground (class 0) or each present class."""
    labels2d = np.asarray(labels2d)
    if labels2d.ndim != 2:
        raise PromptError(f"{name} needs a 2-D label map, got shape {labels2d.shape}")
    groups = [(c, labels2d == c) for c in CLASSES] if per_class else [(0, labels2d > 0)]
    out = []
    for c, m in groups:
        if m.any():
            rows, cols = np.nonzero(m)
            out.append((c, int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())))
    return out


def box_from_mask(labels2d: np.ndarray, margin: float = 2, per_class: bool = False) -> Prompts:
    """Union box of all foreground (class 0) or one box per present class, margin in the 224 frame."""
    labels2d = np.asarray(labels2d)
    boxes, classes = [], []
    for c, x0, y0, x1, y1 in _mask_extents(labels2d, per_class, "box_from_mask"):
        corners = slice_to_model([[x0, y0], [x1, y1]], labels2d.shape)
        box = np.concatenate([corners[0] - margin, corners[1] + margin])
        boxes.append(np.clip(box, 0, MODEL_SIZE - 1))
        classes.append(c)
    if not boxes:
        return Prompts.empty()
    return Prompts(boxes=np.asarray(boxes, np.float32), box_classes=classes)


def slice_box_from_mask(labels2d: np.ndarray, margin: float = 2, per_class: bool = False) -> SlicePrompts:
    """box_from_mask in slice pixels, for callers of the predictor (prompts cross the library's edge in slice pixels).

    `margin` is still counted in 224-frame pixels (margin * w / 224 slice columns, margin * h / 224
    rows), so `.to_model(shape)` gives box_from_mask's box; the box is clipped to the slice's pixels.
    On a slice smaller than 224 a box touching the slice's edge stops at its outermost pixel centre
    (to_model's clipping), where box_from_mask would reach the frame's edge (half a slice pixel at most).
    """
    labels2d = np.asarray(labels2d)
    extents = _mask_extents(labels2d, per_class, "slice_box_from_mask")
    h, w = labels2d.shape
    mx, my = margin * w / MODEL_SIZE, margin * h / MODEL_SIZE
    boxes, classes = [], []
    for c, x0, y0, x1, y1 in extents:
        boxes.append([max(x0 - mx, 0), max(y0 - my, 0), min(x1 + mx, w - 1), min(y1 + my, h - 1)])
        classes.append(c)
    if not boxes:
        return SlicePrompts.empty()
    return SlicePrompts(boxes=np.asarray(boxes, np.float32), box_classes=classes)
