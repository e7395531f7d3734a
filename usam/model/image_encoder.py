"""SAM's ViT fed with the adapter's f4 token grid instead of patch embeddings."""
from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn
from torch.nn import functional as F


class SdpaAttention(nn.Module):
    """segment-anything's ViT attention through F.scaled_dot_product_attention: same parameters and keys
    (qkv, proj, rel_pos_h, rel_pos_w), same math; the decomposed relative-position bias is the attention
    mask. Measured to pay on CPU (docs/BENCHMARKS.md); tests/usam/test_model.py checks it equals SAM's."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.num_heads, self.scale, self.use_rel_pos = attn.num_heads, attn.scale, attn.use_rel_pos
        self.qkv, self.proj = attn.qkv, attn.proj  # the same modules: no new weights, no random draws
        if attn.use_rel_pos:
            self.rel_pos_h, self.rel_pos_w = attn.rel_pos_h, attn.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        mask = None
        if self.use_rel_pos:
            r_q = q.reshape(b * self.num_heads, h, w, -1)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
            mask = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, self.num_heads, n, n).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class UsamImageEncoder(ImageEncoderViT):
    """segment-anything's ImageEncoderViT; forward takes f4 (B, E, 14, 14), not an image.

    patch_embed is kept (unused) so that the state-dict keys equal SAM's and the reference's;
    each block's attention is SdpaAttention (same keys).
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
        for blk in self.blocks:
            blk.attn = SdpaAttention(blk.attn)

    def forward(self, f4: torch.Tensor) -> torch.Tensor:
        """(B, E, h, w) token grid -> (B, out_chans, h, w) image embedding."""
        x = f4.permute(0, 2, 3, 1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
