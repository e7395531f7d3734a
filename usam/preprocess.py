"""Model input from HU slices, and logits back to label maps at the slice's own resolution."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from usam.errors import VolumeError

SIZE = 224  # the model frame: side of every model input (the one definition; prompts, data and configs import it)
MEAN = 0.1364736  # the public code's normalisation of [0, 1] images
STD = 0.23238614
DEFAULT_WINDOW = (-160.0, 240.0)  # pelvic soft-tissue HU window (W 400 / L 40): wall and tumour against fat and air


def default_preprocessing() -> dict:
    """The checkpoint metadata's 'preprocessing' entry for these defaults (window, size, mean, std)."""
    return {"window": list(DEFAULT_WINDOW), "size": SIZE, "mean": MEAN, "std": STD}


def preprocess_slices(hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW,
                      size: int = SIZE) -> torch.Tensor:
    """HU (n, h, w) or (h, w) -> (n, 3, 224, 224) float32: clip to window, [0, 1], bilinear, 3 ch, normalise."""
    a = np.asarray(hu, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 2:
        raise VolumeError(f"expected slices (n, h, w) or (h, w), got shape {np.shape(hu)}")
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise VolumeError(f"window must satisfy lo < hi, got {window}")
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = ((x.clamp(lo, hi) - lo) / (hi - lo)).unsqueeze(1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - MEAN) / STD).expand(-1, 3, -1, -1).contiguous()


def logits_to_labels(logits: torch.Tensor, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, K, 224, 224) logits -> labels uint8 (n, h, w), probs float32 (n, K, h, w).

    The LOGITS are resized bilinearly, then softmax / argmax: resizing a 224 label map with
    nearest neighbour would erase a 1-3 px rectal wall (DESIGN.md).
    """
    x = logits.detach().float()
    if tuple(x.shape[-2:]) != tuple(out_hw):
        x = F.interpolate(x, size=tuple(int(s) for s in out_hw), mode="bilinear", align_corners=False)
    probs = torch.softmax(x, dim=1)
    labels = x.argmax(dim=1).to(torch.uint8)
    return labels.cpu().numpy(), probs.cpu().numpy().astype(np.float32, copy=False)
