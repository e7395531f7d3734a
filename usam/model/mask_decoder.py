"""U-SAM's mask decoder: SAM two-way transformer + mask tokens + U-Net up blocks with skips."""
from __future__ import annotations

from typing import Callable

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from usam.model.click_encoder import ClickEncoder
from usam.model.up_block import UpBlock


def _head(channels: int, num_classes: int, bias: bool) -> nn.Sequential:
    """ConvBN-like head (conv 3x3 with bias, BN, ReLU) then a 1x1 conv to class logits."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, num_classes, kernel_size=1, bias=bias),
    )


class UsamMaskDecoder(nn.Module):
    """Keys as the reference's `sam.mask_decoder.*`.

    SAM's output upscaling is replaced by up4/up3/up2 (to 112^2); 32 hypernetwork MLPs turn the
    mask tokens into 32 maps @112; up1 brings them to 224 with f0; final_output gives logits.
    lowres_output and iou_prediction_head exist in the reference but feed no loss ("dead
    heads"); they run only when `run_dead_heads` is set (for the paper's FLOP count).
    `click_encoder` (our extension, zero-initialised) adds the click maps at 112^2 and 224^2.
    """

    def __init__(self, transformer_dim: int, depth: int, num_heads: int, mlp_dim: int,
                 num_mask_tokens: int, skip_channels: tuple[int, int, int, int],
                 up_channels: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        c4, c3, c2, c1 = up_channels
        s0, s1, s2, s3 = skip_channels  # 0 where a skip is not used
        self.transformer_dim = transformer_dim
        self.num_mask_tokens = num_mask_tokens
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=transformer_dim,
                                             mlp_dim=mlp_dim, num_heads=num_heads)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, transformer_dim)
        self.output_hypernetworks_mlps = nn.ModuleList(
            [MLP(transformer_dim, transformer_dim, c2, 3) for _ in range(num_mask_tokens)])
        self.iou_prediction_head = MLP(transformer_dim, transformer_dim, num_mask_tokens, 3)
        self.final_output = _head(c1, num_classes, bias=False)
        self.lowres_output = _head(num_mask_tokens, num_classes, bias=True)
        self.up4 = UpBlock(transformer_dim, s3, c4)
        self.up3 = UpBlock(c4, s2, c3)
        self.up2 = UpBlock(c3, s1, c2)
        self.up1 = UpBlock(num_mask_tokens, s0, c1)
        # built on a forked RNG: every module created after it gets the random init it got before
        with torch.random.fork_rng(devices=[]):
            self.click_encoder = ClickEncoder(num_classes, c112=c2, c224=c1)
        self.run_dead_heads = False

    # up block k consumes skip f_k (None where unused): the decoder's skip wiring, written here only
    UP_BLOCKS = ("up1", "up2", "up3", "up4")

    def up_blocks(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """up1..up4 in skip order (up_k reads f_{k-1})."""
        return tuple(getattr(self, name) for name in self.UP_BLOCKS)

    def hypernetworks(self, mask_tokens: torch.Tensor) -> torch.Tensor:
        """(B, M, C) mask tokens -> (B, M, c2): one MLP per token."""
        return torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)

    def run(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
            skips: tuple[torch.Tensor | None, ...], ups: tuple[Callable, ...], hypernetworks: Callable,
            head: Callable, clicks: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's data flow, written once: two-way transformer, up4..up2, mask tokens x maps, up1, head.

        `clicks`: the prompts' click maps (B, K, 224, 224) (usam.model.click_encoder) or None; their
        features are added to the 112^2 maps before the mask product and to up1's output.

        `ups[k](x, skips[k])`, `hypernetworks(tokens)` and `head(x)` are this module's own parts
        (forward) or an inference decoder's derived ones (usam.model.fast), whose `skips` then
        hold its precomputed prompt-free parts.
        """
        b = image_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        x = src.transpose(1, 2).reshape(b, c, h, w)
        for k in (3, 2, 1):
            x = ups[k](x, skips[k])
        at224 = None
        if clicks is not None:
            at112, at224 = self.click_encoder(clicks, dtype=x.dtype)
            x = x + at112
        masks = mask_product(hypernetworks(hs[:, 1:1 + self.num_mask_tokens, :]), x)
        if self.run_dead_heads:
            self.lowres_output(masks)
            self.iou_prediction_head(hs[:, 0, :])
        y = ups[0](masks, skips[0])
        return head(y if at224 is None else y + at224)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, skips: tuple[torch.Tensor | None, ...],
                clicks: torch.Tensor | None = None) -> torch.Tensor:
        """One prompt set per image: embeddings (B, C, h, w), sparse (B, N, C) [+ click maps] -> logits (B, K, 224, 224)."""
        return self.run(image_embeddings, image_pe, sparse, dense, skips, self.up_blocks(), self.hypernetworks,
                        self.final_output, clicks)


def mask_product(hyper_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, M, C) hypernetwork outputs times (B, C, H, W) maps -> (B, M, H, W) masks; NHWC maps stay NHWC (no copy)."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        masks = x.permute(0, 2, 3, 1).reshape(b, h * w, c) @ hyper_in.transpose(1, 2)
        return masks.view(b, h, w, -1).permute(0, 3, 1, 2)
    return (hyper_in @ x.reshape(b, c, h * w)).reshape(b, -1, h, w)
