"""Shared pieces of the interactive protocols' tests: a painting stand-in for U-SAM and a tiny real checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from usam.model import ImageFeatures, Usam
from usam.prompts import Prompts

TINY = dict(vit_depth=1, vit_global_attn_indexes=[0], vit_embed_dim=64, vit_heads=2, prompt_dim=32, decoder_heads=2,
            decoder_mlp_dim=64, num_mask_tokens=8, adapter_channels=[8, 8, 16, 16], up_channels=[16, 8, 8, 8])


class StandIn(Usam):
    """A stand-in for U-SAM that the library's predictor accepts (a Usam without its layers): it encodes a
    thumbnail, records whether previous logits came back, and paints disks (radius 16 at 224) for points."""

    def __init__(self) -> None:
        torch.nn.Module.__init__(self)  # no U-SAM layers: decode is the subclass's
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.masks_seen: list[bool] = []
        self.encoded = 0  # slices run through encode
        yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
        self.grid = (xx, yy)
        self.eval()

    def encode(self, images: torch.Tensor, backbone=None) -> ImageFeatures:
        self.encoded += len(images)
        return ImageFeatures((None,) * 4, images[:, :1, ::16, ::16].clone())

    def previous(self, mask_logits) -> torch.Tensor | None:
        """The previous logits as one (B, 3, 224, 224) tensor (a tensor or a list of them), or None; recorded."""
        self.masks_seen.append(mask_logits is not None)
        if mask_logits is None or isinstance(mask_logits, torch.Tensor):
            return None if mask_logits is None else mask_logits.clone()
        return torch.stack([m.float() for m in mask_logits])

    @staticmethod
    def items(prompts) -> list[Prompts]:
        """One Prompts per item (None: no prompt, as Usam.decode reads it)."""
        return [Prompts.empty() if p is None else p for p in prompts]

    def paint_point(self, out: torch.Tensor, x: float, y: float, label: int, cls: int) -> None:
        """A positive point paints its class, a negative one background, on one item's logits (3, 224, 224)."""
        xx, yy = self.grid
        disk = (xx - float(x)) ** 2 + (yy - float(y)) ** 2 <= 256.0
        out[:, disk] = -5.0
        out[int(cls) if label == 1 else 0][disk] = 5.0


def tiny_checkpoint(out: Path) -> tuple[Path, Path]:
    """A 2-case small phantom cohort (seed 5) and a random tiny U-SAM checkpoint (seed 0) under out."""
    from usam.checkpoints import save_checkpoint
    from usam.model import build_usam, get_config
    from usam.phantom import generate_cohort

    generate_cohort(out / "cohort", cases=2, seed=5, size="small")
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_usam(get_config("demo", **TINY)).eval(), out / "tiny.safetensors",
                           {"weights_kind": "random-tiny"})
    return out / "cohort", ckpt
