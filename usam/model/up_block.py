"""U-Net up block: transposed conv (k2, s2) -> concat skip -> two ConvBN."""
from __future__ import annotations

import torch
from torch import nn

from usam.model.conv_bn import ConvBN


class UpBlock(nn.Module):
    """Doubles the resolution. skip_channels=0 means no skip: the convs see only the upsampled map."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.skip_channels = skip_channels
        self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.nConvs = nn.Sequential(
            ConvBN(in_channels + skip_channels, out_channels), ConvBN(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if self.skip_channels:
            x = torch.cat([x, skip], dim=1)
        return self.nConvs(x)
