"""The downsampling adapter (`backbone`): f0 @224 .. f4 @14, f4 replaces SAM's patch tokens."""
from __future__ import annotations

import torch
from torch import nn

from usam.model.conv_bn import ConvBN
from usam.model.down_block import DownBlock


class DownsamplingAdapter(nn.Module):
    """inc (one ConvBN) then down1..down4; returns (f0, f1, f2, f3, f4)."""

    def __init__(self, in_chans: int, channels: tuple[int, int, int, int], embed_dim: int) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.inc = ConvBN(in_chans, c0)
        self.down1 = DownBlock(c0, c1)
        self.down2 = DownBlock(c1, c2)
        self.down3 = DownBlock(c2, c3)
        self.down4 = DownBlock(c3, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f0 = self.inc(x)
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        f4 = self.down4(f3)
        return f0, f1, f2, f3, f4
