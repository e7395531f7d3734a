"""3x3 convolution (with bias) -> BatchNorm -> ReLU, the adapter's and up blocks' unit."""
from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """ConvBN as in the reference: keys `conv.*`, `norm.*`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))
