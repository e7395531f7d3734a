"""Container for SAM's three parts, so that keys read `sam.image_encoder.*` etc. as in the reference."""
from __future__ import annotations

from torch import nn


class SamParts(nn.Module):
    """image_encoder, prompt_encoder, mask_decoder; no forward of its own (Usam wires them)."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
