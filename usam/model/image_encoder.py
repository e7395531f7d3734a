"""SAM's ViT fed with the adapter's f4 token grid instead of patch embeddings."""
from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn


class UsamImageEncoder(ImageEncoderViT):
    """segment-anything's ImageEncoderViT; forward takes f4 (B, E, 14, 14), not an image.

    patch_embed is kept (unused) so that the state-dict keys equal SAM's and the reference's.
    """

    def __init__(self, img_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 out_chans: int, global_attn_indexes: tuple[int, ...], window_size: int = 14,
                 patch_size: int = 16) -> None:
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, out_chans=out_chans, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, rel_pos_zero_init=True,
            window_size=window_size, global_attn_indexes=tuple(global_attn_indexes),
        )

    def forward(self, f4: torch.Tensor) -> torch.Tensor:
        """(B, E, h, w) token grid -> (B, out_chans, h, w) image embedding."""
        x = f4.permute(0, 2, 3, 1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
