"""SAM's prompt encoder plus zero-initialised class parts: a class embedding for points and boxes and a
class-aware branch for the previous mask (the dense prompt).

The mask prompt is the slice's previous logits (B, num_classes, H, W) in the model frame (what the
decoder returned). Two inputs are derived from them (`mask_prompt_inputs`, a pure function):

- `fg` (B, 1, 4g, 4g): the foreground logit logsumexp(l_1..l_{K-1}) - l_0, the one-channel
  low-resolution logit SAM's own `mask_downscaling` takes (SAM: 256^2 logits for a 64 grid; here
  56^2 for the 14 grid), area-resized;
- `per_class` (B, K-1, 4g, 4g): each foreground class's log-odds against all other classes,
  l_c - logsumexp(l_j, j != c), area-resized: which class the previous mask drew where (normal
  wall vs tumour), what SAM's binary mask cannot say.

Both are clamped to [-MASK_LOGIT_CLAMP, MASK_LOGIT_CLAMP] (non-finite values mapped first), so a
saturated previous mask cannot blow the embedding up. The dense embedding of an item with a mask is
mask_downscaling(fg) + mask_class_downscaling(per_class); the class branch has SAM's layer pattern
with K-1 input channels and its last conv is zero (weights and bias), so SAM or reference weights
give with a mask exactly SAM's output, and without a mask (no_mask_embed) exactly the old one.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.nn import functional as F

from usam.errors import PromptError

MASK_LOGIT_CLAMP = 20.0  # |logit| bound of the mask prompt's inputs (sigmoid(20) = 1 - 2e-9)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average down to `size` (4x4 means for 224 -> 56), bilinear where the input is smaller."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _bounded(x: torch.Tensor) -> torch.Tensor:
    c = MASK_LOGIT_CLAMP
    return torch.nan_to_num(x, nan=0.0, posinf=c, neginf=-c).clamp_(-c, c)


def mask_prompt_inputs(logits: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous logits (B, K, H, W) -> (foreground logit (B, 1, *size), per-class log-odds (B, K-1, *size)).

    Computed at the logits' resolution, clamped, then resized (area mean) to `size`.
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise PromptError(f"mask logits must be (B, classes, H, W) with at least 2 classes, got {tuple(logits.shape)}")
    x = logits.float()
    fg = torch.logsumexp(x[:, 1:], dim=1, keepdim=True) - x[:, :1]
    k = x.shape[1]
    others = [torch.logsumexp(x[:, [j for j in range(k) if j != c]], dim=1, keepdim=True) for c in range(1, k)]
    per_class = x[:, 1:] - torch.cat(others, dim=1)
    return _resize(_bounded(fg), size), _resize(_bounded(per_class), size)


def _downscaling(in_chans: int, mask_in_chans: int, embed_dim: int) -> nn.Sequential:
    """SAM's mask_downscaling layer pattern (two stride-2 convs with LayerNorm2d + GELU, then 1x1)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, mask_in_chans // 4, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans // 4),
        nn.GELU(),
        nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans),
        nn.GELU(),
        nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
    )


class UsamPromptEncoder(PromptEncoder):
    """PromptEncoder with `class_embeddings` (row 0 = unknown class, fixed at zero) and
    `mask_class_downscaling` (the class-aware mask branch, last conv zero).

    Rows 1..num_classes-1 and the branch's last conv start at zero, so a SAM or reference
    checkpoint behaves exactly as without them until they are trained.
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int], mask_in_chans: int, num_classes: int = 3) -> None:
        super().__init__(embed_dim=embed_dim, image_embedding_size=image_embedding_size,
                         input_image_size=input_image_size, mask_in_chans=mask_in_chans)
        self.num_classes = num_classes
        self.class_embeddings = nn.Embedding(num_classes, embed_dim, padding_idx=0)
        nn.init.zeros_(self.class_embeddings.weight)
        # built on a forked RNG: every module created after it gets the random init it got before
        with torch.random.fork_rng(devices=[]):
            self.mask_class_downscaling = _downscaling(num_classes - 1, mask_in_chans, embed_dim)
        nn.init.zeros_(self.mask_class_downscaling[-1].weight)
        nn.init.zeros_(self.mask_class_downscaling[-1].bias)

    def embed_mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Previous logits (B, K, H, W) -> dense embedding (B, C, g, g): SAM's mask path + the class branch."""
        if logits.shape[1] != self.num_classes:
            raise PromptError(f"mask logits have {logits.shape[1]} classes, the model {self.num_classes}")
        fg, per_class = mask_prompt_inputs(logits.to(self.no_mask_embed.weight.device), self.mask_input_size)
        return self.mask_downscaling(fg) + self.mask_class_downscaling(per_class)

    def encode(self, batch: int, points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
               point_classes: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               box_classes: torch.Tensor | None = None,
               mask_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, C) and dense (B, C, h, w) embeddings.

        points (B, P, 2) (x, y) in the model frame, labels (B, P) 1/0, classes (B, P) 0..2;
        boxes (B, M, 4) xyxy, box_classes (B, M). As in SAM, points without boxes get one
        padding ("not a point") token. mask_logits (B, K, H, W): every item's previous logits
        (an input: pass it without gradient), or None for no_mask_embed.
        """
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty((batch, 0, self.embed_dim), device=device)]
        if points is not None:
            emb = self._embed_points(points, point_labels, pad=boxes is None)
            if point_classes is not None:
                if boxes is None:  # the padding token has class 0 (zero row)
                    point_classes = torch.cat([point_classes, point_classes.new_zeros(batch, 1)], dim=1)
                emb = emb + self.class_embeddings(point_classes)
            sparse.append(emb)
        if boxes is not None:
            m = boxes.shape[1]
            emb = self._embed_boxes(boxes.reshape(batch * m, 4)).reshape(batch, 2 * m, self.embed_dim)
            if box_classes is not None:  # both corners of a box carry its class
                emb = emb + self.class_embeddings(box_classes.repeat_interleave(2, dim=1))
            sparse.append(emb)
        if mask_logits is not None:
            if mask_logits.shape[0] != batch:
                raise PromptError(f"{mask_logits.shape[0]} masks for {batch} images")
            dense = self.embed_mask_logits(mask_logits)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch, -1, self.image_embedding_size[0], self.image_embedding_size[1])
        return torch.cat(sparse, dim=1), dense
