"""Prompt-consistent output: what a prompt says about where each class may appear.

The network reads prompts as tokens and may still paint a class where the user's prompt rules
it out (a tumor blob far outside the drawn box). These rules turn the prompt's explicit
statements into hard constraints on the 224 logits, before they are resized:

- box: foreground lies inside the box. A union box (class 0) keeps every foreground class
  inside the union of such boxes (plus `box_margin` px); a box of class c keeps class c inside
  the boxes of class c.
- class gate: when every positive point carries a class (1 normal rectum, 2 tumor), the
  classes clicked are the classes present on the slice; a foreground class with no positive
  point is not predicted there. This is how the evaluation prompts are made (points per present
  class, USAM_SPEC.md) and what a reader means by "the rectum here, the tumor there".
  Points of unknown class (0) or negative points alone gate nothing.
- select: a clicked class keeps only its connected regions (8-connected, at 224) that hold or
  touch (within `select_radius` px) one of its positive points: SAM's "the object at the
  click". Regions it loses go to the next most likely class.

Background is always allowed, so every pixel keeps a label. Pure functions, no model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from usam.errors import PromptError
from usam.prompts import MODEL_SIZE, Prompts

RULES = ("none", "box", "gate", "select", "all")
DEFAULT_BOX_MARGIN = 4.0  # px at 224: the test boxes carry 2 px, users draw loosely
DEFAULT_SELECT_RADIUS = 3  # px at 224: a click on the edge of a thin wall still selects it
SUPPRESSED = -1.0e4  # a logit no softmax picks; finite so bilinear resizing stays finite


def parse_rules(rules: str | None) -> tuple[bool, bool, bool]:
    """'none', one rule, a comma list of rules, or 'all' -> (box on, gate on, select on)."""
    names = {n.strip() for n in (rules or "none").lower().split(",") if n.strip()} or {"none"}
    bad = names - set(RULES)
    if bad or ("none" in names and len(names) > 1):
        raise PromptError(f"unknown prompt rules {rules!r}; choose from {', '.join(RULES)} or a comma list")
    if "all" in names:
        return True, True, True
    return "box" in names, "gate" in names, "select" in names


def _box_region(boxes: np.ndarray, size: int, margin: float) -> np.ndarray:
    """(size, size) bool: pixels whose centre lies inside any box grown by margin."""
    ys = np.arange(size, dtype=np.float32)[:, None]
    xs = np.arange(size, dtype=np.float32)[None, :]
    inside = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (xs >= x0 - margin) & (xs <= x1 + margin) & (ys >= y0 - margin) & (ys <= y1 + margin)
    return inside


def allowed_mask(prompts: Prompts | None, num_classes: int = 3, size: int = MODEL_SIZE, box: bool = True,
                 gate: bool = True, box_margin: float = DEFAULT_BOX_MARGIN) -> np.ndarray | None:
    """(num_classes, size, size) bool: where class k may be predicted; None when nothing is constrained."""
    if prompts is None or prompts.is_empty or not (box or gate):
        return None
    allowed = np.ones((num_classes, size, size), dtype=bool)
    touched = False
    if box and len(prompts.boxes):
        union = prompts.boxes[prompts.box_classes == 0]
        if len(union):
            allowed[1:] &= _box_region(union, size, box_margin)[None]
            touched = True
        for c in range(1, num_classes):
            own = prompts.boxes[prompts.box_classes == c]
            if len(own):
                allowed[c] &= _box_region(own, size, box_margin)
                touched = True
    if gate:
        pos = prompts.point_labels == 1
        classes = prompts.point_classes[pos]
        if len(classes) and (classes > 0).all():
            for c in range(1, num_classes):
                if c not in classes:
                    allowed[c] = False
                    touched = True
    return allowed if touched else None


def selected_regions(labels: np.ndarray, prompts: Prompts | None, num_classes: int = 3,
                     radius: int = DEFAULT_SELECT_RADIUS) -> np.ndarray | None:
    """(num_classes, H, W) bool: for each clicked class, the pixels of its regions in labels (H, W at 224)
    that a positive point of that class lies in or within radius px of; unclicked classes all True."""
    from scipy import ndimage

    if prompts is None or not len(prompts.points):
        return None
    h, w = labels.shape
    keep = np.ones((num_classes,) + labels.shape, dtype=bool)
    touched = False
    pos = prompts.point_labels == 1
    for c in range(1, num_classes):
        pts = prompts.points[pos & (prompts.point_classes == c)]
        if not len(pts):
            continue
        regions, n = ndimage.label(labels == c, structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        chosen = set()
        for x, y in pts:
            cx, cy = int(round(float(x))), int(round(float(y)))
            window = regions[max(cy - radius, 0):min(cy + radius + 1, h), max(cx - radius, 0):min(cx + radius + 1, w)]
            chosen.update(int(v) for v in np.unique(window) if v)
        keep[c] = np.isin(regions, sorted(chosen)) | (regions == 0)
        touched = touched or len(chosen) < n
    return keep if touched else None


def apply_prompt_rules(logits: torch.Tensor, prompts: list[Prompts | None], box: bool = True, gate: bool = True,
                       select: bool = True, box_margin: float = DEFAULT_BOX_MARGIN,
                       select_radius: int = DEFAULT_SELECT_RADIUS) -> torch.Tensor:
    """(B, K, H, W) logits in the prompts' frame -> logits with ruled-out classes set to SUPPRESSED.

    Defaults = rules "all". Returns a copy, or the input itself when no prompt rules anything out.
    """
    if len(prompts) != logits.shape[0]:
        raise PromptError(f"{logits.shape[0]} logit maps but {len(prompts)} prompts")
    b, k, h, w = logits.shape
    if h != w:
        raise PromptError("prompt rules need square logits in the model frame")
    out = logits
    for i, p in enumerate(prompts):
        m = allowed_mask(p, k, MODEL_SIZE, box, gate, box_margin)
        if select and p is not None and len(p.points):
            current = out[i] if m is None else out[i].masked_fill(~_to_logit_grid(m, h, w, logits.device), SUPPRESSED)
            lab = current.argmax(0)
            if h != MODEL_SIZE:
                lab = F.interpolate(lab[None, None].float(), size=(MODEL_SIZE, MODEL_SIZE), mode="nearest")[0, 0]
            sel = selected_regions(lab.to(torch.uint8).cpu().numpy(), p, k, select_radius)
            if sel is not None:
                m = sel if m is None else m & sel
        if m is None:
            continue
        if out is logits:
            out = logits.clone()
        out[i].masked_fill_(~_to_logit_grid(m, h, w, logits.device), SUPPRESSED)
    return out


def _to_logit_grid(mask: np.ndarray, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(K, 224, 224) bool -> (K, h, w) bool tensor on device (nearest when the model size differs)."""
    mt = torch.from_numpy(mask).to(device)
    if (h, w) != mask.shape[1:]:  # a model of another input size: the prompts stay in the 224 frame
        mt = F.interpolate(mt[None].float(), size=(h, w), mode="nearest")[0] > 0.5
    return mt
