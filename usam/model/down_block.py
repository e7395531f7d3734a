"""MaxPool(2) then two ConvBN: one stage of the downsampling adapter."""
from __future__ import annotations

import torch
from torch import nn

from usam.model.conv_bn import ConvBN


class DownBlock(nn.Module):
    """Halves the resolution; keys `nConvs.0.*`, `nConvs.1.*` as in the reference."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(2)
        self.nConvs = nn.Sequential(ConvBN(in_channels, out_channels), ConvBN(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nConvs(self.maxpool(x))
