"""Clicks as pixel maps into the decoder's high-resolution stages (a zero-initialised extension).

SAM hears a point only as a token on the 14x14 grid; the up blocks that draw the 224 output see
it only through the transformer. Interactive models that follow clicks (RITM, nnInteractive)
give the network the clicks as maps at the image's resolution. Here the clicks become K maps in
the model frame (`click_maps`, a pure function): channel c > 0 holds the positive clicks of
class c, channel 0 the negative clicks (a negative click says "background here", whatever its
class), a positive click of unknown class (0) counts half in each foreground channel. Each click
is a Gaussian bump (sigma CLICK_SIGMA px at 224, cut at 3 sigma), overlapping bumps take the
maximum, so the maps are local and bounded in [0, 1].

`ClickEncoder` turns the maps into features added to the decoder at 112^2 (before the mask
product, c2 channels) and at 224^2 (before the head, c1 channels). Its last convs start at zero,
so every checkpoint without its keys gives exactly its old output, with or without clicks; the
decoder runs it only for prompts that hold points (inputs after the cached encoder: a click never
re-runs the encoder).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

CLICK_SIGMA = 4.0  # px at 224
_CUT = 3.0  # sigmas


def click_maps(points: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor | None, num_classes: int,
               size: tuple[int, int], sigma: float = CLICK_SIGMA) -> torch.Tensor:
    """Points (B, P, 2) (x, y) in the model frame, labels (B, P) 1/0, classes (B, P) -> maps (B, K, H, W).

    Channel c > 0: positive clicks of class c; channel 0: negative clicks; a positive click of class 0
    gives 0.5 in every foreground channel. Values in [0, 1]; points off the frame add nothing.
    """
    b, p = points.shape[:2]
    h, w = size
    out = torch.zeros((b, num_classes, h, w), dtype=torch.float32)
    if p == 0:
        return out.to(points.device)
    pts = points.detach().float().cpu()
    lab = labels.detach().cpu()
    cls = torch.zeros((b, p), dtype=torch.long) if classes is None else classes.detach().cpu().long()
    r = int(math.ceil(_CUT * sigma))
    for i in range(b):
        for j in range(p):
            x, y = float(pts[i, j, 0]), float(pts[i, j, 1])
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            x0, x1 = max(0, int(math.floor(x)) - r), min(w, int(math.floor(x)) + r + 2)
            y0, y1 = max(0, int(math.floor(y)) - r), min(h, int(math.floor(y)) + r + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            # pixel centres: a click at (x, y) = column x, row y peaks at that pixel (value 1)
            gx = torch.arange(x0, x1, dtype=torch.float32) - x
            gy = torch.arange(y0, y1, dtype=torch.float32) - y
            d2 = gy[:, None] ** 2 + gx[None, :] ** 2
            bump = torch.exp(-d2 / (2 * sigma * sigma)) * (d2 <= (_CUT * sigma) ** 2)
            if int(lab[i, j]) == 1:
                c = int(cls[i, j])
                targets, scale = ((c,), 1.0) if c > 0 else (tuple(range(1, num_classes)), 0.5)
            elif int(lab[i, j]) == 0:
                targets, scale = (0,), 1.0
            else:
                continue
            for c in targets:
                view = out[i, c, y0:y1, x0:x1]
                torch.maximum(view, bump * scale, out=view)
    return out.to(points.device)


class ClickEncoder(nn.Module):
    """Click maps (B, K, 224, 224) -> (features at 112^2 with c112 channels, features at 224^2 with c224)."""

    def __init__(self, num_classes: int, c112: int, c224: int, hidden: int = 16) -> None:
        super().__init__()
        self.at112 = nn.Sequential(
            nn.Conv2d(num_classes, hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(hidden, c112, kernel_size=1),
        )
        self.at224 = nn.Conv2d(num_classes, c224, kernel_size=1)
        for last in (self.at112[-1], self.at224):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, maps: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both feature maps (in `dtype` when given: the decoder's)."""
        maps = maps.to(self.at224.weight.dtype)
        f112 = self.at112(F.avg_pool2d(maps, 2))
        f224 = self.at224(maps)
        if dtype is not None:
            f112, f224 = f112.to(dtype), f224.to(dtype)
        return f112, f224
