"""The U-SAM model: adapter -> SAM ViT on f4 -> prompt encoder -> decoder with U-Net up blocks."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from usam.errors import PromptError, UsamError
from usam.model.adapter import DownsamplingAdapter
from usam.model.click_encoder import click_maps
from usam.model.config import UsamConfig
from usam.model.features import ImageFeatures
from usam.model.image_encoder import UsamImageEncoder
from usam.model.lora import LORA_KEY_MARK, apply_lora
from usam.model.mask_decoder import UsamMaskDecoder
from usam.model.prompt_encoder import UsamPromptEncoder
from usam.model.sam_parts import SamParts
from usam.prompts import Prompts


EXTENSION_PREFIXES = ("sam.prompt_encoder.class_embeddings.", "sam.prompt_encoder.mask_class_downscaling.",
                      "sam.mask_decoder.click_encoder.")


def used_skips(skips: int) -> tuple[bool, bool, bool, bool]:
    """Which of f0..f3 feed an up block: the n deepest (f3 first, f0 last)."""
    return tuple(3 - k < skips for k in range(4))


class Usam(nn.Module):
    """U-SAM. Top-level children `sam` and `backbone` as in the public code's checkpoints."""

    def __init__(self, config: UsamConfig) -> None:
        super().__init__()
        self.config = config
        g = config.grid_size
        image_encoder = UsamImageEncoder(
            img_size=config.image_size, embed_dim=config.vit_embed_dim, depth=config.vit_depth,
            num_heads=config.vit_heads, mlp_ratio=config.vit_mlp_ratio, out_chans=config.prompt_dim,
            global_attn_indexes=config.vit_global_attn_indexes, window_size=config.vit_window_size,
            patch_size=config.patch_size)
        if config.lora_rank > 0:
            apply_lora(image_encoder, config.lora_rank)
        prompt_encoder = UsamPromptEncoder(
            embed_dim=config.prompt_dim, image_embedding_size=(g, g),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=config.mask_in_chans,
            num_classes=config.num_classes)
        use = used_skips(config.skips)
        skip_channels = tuple(c if u else 0 for c, u in zip(config.adapter_channels, use))
        mask_decoder = UsamMaskDecoder(
            transformer_dim=config.prompt_dim, depth=config.decoder_depth, num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim, num_mask_tokens=config.num_mask_tokens,
            skip_channels=skip_channels, up_channels=config.up_channels, num_classes=config.num_classes)
        self.sam = SamParts(image_encoder, prompt_encoder, mask_decoder)
        self.backbone = DownsamplingAdapter(config.in_chans, config.adapter_channels, config.vit_embed_dim)
        self._use_skips = use
        self.set_trainable()

    def set_trainable(self, freeze_image_encoder: bool | None = None, freeze_prompt_encoder: bool | None = None) -> None:
        """Apply the freezing options (defaults from the config): a frozen ViT keeps LoRA trainable."""
        fie = self.config.image_encoder_frozen if freeze_image_encoder is None else freeze_image_encoder
        fpe = self.config.freeze_prompt_encoder if freeze_prompt_encoder is None else freeze_prompt_encoder
        for name, p in self.sam.image_encoder.named_parameters():
            p.requires_grad_(not fie or LORA_KEY_MARK in "." + name)
        for p in self.sam.prompt_encoder.parameters():
            p.requires_grad_(not fpe)

    def tunable_parameters(self) -> int:
        """Number of parameters with requires_grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode(self, images: torch.Tensor, backbone: Callable[[torch.Tensor], tuple] | None = None) -> ImageFeatures:
        """(B, 3, 224, 224) normalised images -> skips + image embedding (what the predictor caches).

        `backbone` replaces self.backbone (same outputs f0..f4): the inference model passes its
        BatchNorm-folded adapter (usam.model.fast)."""
        f0, f1, f2, f3, f4 = (self.backbone if backbone is None else backbone)(images)
        embedding = self.sam.image_encoder(f4)
        skips = tuple(f if u else None for f, u in zip((f0, f1, f2, f3), self._use_skips))
        return ImageFeatures(skips, embedding)

    def _prompt_tensors(self, items: list[Prompts], device: torch.device) -> dict[str, torch.Tensor | None]:
        """Stack prompts of one signature into batched tensors (None where absent)."""
        n, m = items[0].signature
        out: dict[str, torch.Tensor | None] = dict.fromkeys(
            ("points", "point_labels", "point_classes", "boxes", "box_classes"))
        if n:
            out["points"] = torch.as_tensor(np.stack([p.points for p in items]), dtype=torch.float32, device=device)
            out["point_labels"] = torch.as_tensor(np.stack([p.point_labels for p in items]), dtype=torch.long, device=device)
            out["point_classes"] = torch.as_tensor(np.stack([p.point_classes for p in items]), dtype=torch.long, device=device)
        if m:
            out["boxes"] = torch.as_tensor(np.stack([p.boxes for p in items]), dtype=torch.float32, device=device)
            out["box_classes"] = torch.as_tensor(np.stack([p.box_classes for p in items]), dtype=torch.long, device=device)
        return out

    def decode(self, features: ImageFeatures, prompts: list[Prompts | None] | None = None,
               mask_logits: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
               mask_decoder: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """Features + one Prompts (or None) per image [+ previous logits] -> logits (B, num_classes, 224, 224).

        mask_logits: None, a (B, num_classes, H, W) tensor of every item's previous logits (what
        this decode returned for the slice before, usually H = W = 224), or a list of B items each
        (num_classes, H, W) or None (no previous mask: SAM's no_mask_embed, as without masks).
        Items with the same (points, boxes) counts and the same has-a-mask are decoded as one
        batch; other groups are decoded one by one, which gives exactly the logits of decoding
        each item alone (padding with "not a point" tokens would change them). Points also reach
        the decoder as click maps (usam.model.click_encoder). `mask_decoder`
        replaces sam.mask_decoder (same call signature): the inference decoder of
        usam.model.fast passes itself, so prompts reach both decoders through this one method.
        """
        if mask_decoder is None:
            mask_decoder = self.sam.mask_decoder
            if features.skip_parts:
                raise UsamError("these features hold an inference model's skip parts: decode them with the "
                                  "model that encoded them (usam.model.fast.FastUsam)")
        b = len(features)
        if prompts is None:
            prompts = [None] * b
        if len(prompts) != b:
            raise PromptError(f"{len(prompts)} prompt sets for {b} images")
        prompts = [Prompts.empty() if p is None else p for p in prompts]
        masks = _mask_items(mask_logits, b)
        groups: dict[tuple[int, int, bool], list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[p.signature + (masks[i] is not None,)].append(i)
        device = features.embedding.device
        pe = self.sam.prompt_encoder
        image_pe = pe.get_dense_pe()
        outs, order = [], []
        for key, idx in groups.items():
            feats = features if len(groups) == 1 else features.select(idx)
            t = self._prompt_tensors([prompts[i] for i in idx], device)
            if key[2]:
                t["mask_logits"] = (mask_logits if isinstance(mask_logits, torch.Tensor) and len(groups) == 1
                                    else torch.stack([masks[i] for i in idx]))
            clicks = None
            if t["points"] is not None:
                size = self.config.image_size
                clicks = click_maps(t["points"], t["point_labels"], t["point_classes"], self.config.num_classes,
                                    (size, size))
            sparse, dense = pe.encode(len(idx), **t)
            sparse = sparse.to(feats.embedding.dtype)
            outs.append(mask_decoder(feats.embedding, image_pe, sparse, dense, feats.skips, clicks=clicks))
            order += idx
        if len(outs) == 1:
            return outs[0]
        inverse = torch.empty(b, dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(b)
        return torch.cat(outs).index_select(0, inverse.to(device))

    def forward(self, images: torch.Tensor, prompts: list[Prompts | None] | None = None,
                mask_logits: torch.Tensor | Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """decode(encode(images), prompts, mask_logits)."""
        return self.decode(self.encode(images), prompts, mask_logits)


def _mask_items(mask_logits: torch.Tensor | Sequence[torch.Tensor | None] | None, b: int) -> list[torch.Tensor | None]:
    """Decode's mask_logits as one (K, H, W) tensor or None per item (checked: count, rank, one shape)."""
    if mask_logits is None:
        return [None] * b
    if isinstance(mask_logits, torch.Tensor):
        if mask_logits.ndim != 4:
            raise PromptError(f"mask logits must be (B, classes, H, W), got shape {tuple(mask_logits.shape)}")
        items = list(mask_logits.unbind(0))
    else:
        items = [None if m is None else torch.as_tensor(m) for m in mask_logits]
    if len(items) != b:
        raise PromptError(f"{len(items)} previous masks for {b} images")
    shapes = {tuple(m.shape) for m in items if m is not None}
    if len(shapes) > 1 or any(len(s) != 3 for s in shapes):
        raise PromptError(f"previous masks must each be (classes, H, W) of one shape, got {sorted(shapes)}")
    return items


def build_usam(config: UsamConfig) -> Usam:
    """A randomly initialised U-SAM (call checkpoints.load_* for weights)."""
    return Usam(config)


def extension_keys(model: Usam) -> list[str]:
    """State-dict keys our extensions add to the reference layout (class embeddings, the class-aware mask
    branch, the click encoder, LoRA): initialised, not errors, where a checkpoint lacks them."""
    return [k for k in model.state_dict() if k.startswith(EXTENSION_PREFIXES) or LORA_KEY_MARK in k]
