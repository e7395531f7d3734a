"""Segmentation losses: weighted cross-entropy + soft Dice (the U-SAM recipe: 0.4 CE + 0.6 Dice)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    include_background: bool = True,
    batch: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """1 - soft Dice of softmax(logits) vs one-hot target; MONAI DiceLoss(softmax=True) semantics.

    logits (B, C, H, W), target (B, H, W) integer labels. batch=False averages per-sample Dice
    (MONAI's default); batch=True pools the whole batch per class (the public code's DiceLoss).
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0, 2, 3) if batch else (2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    loss = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)  # (C,) or (B, C)
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=loss.dtype, device=loss.device)
        if not include_background:
            w = w[1:]
        return (loss * w).sum(-1).mean() / w.sum()
    return loss.mean()


class DiceCELoss(nn.Module):
    """lambda_ce * CE + lambda_dice * soft Dice; defaults equal MONAI DiceCELoss(softmax, to_onehot_y, 0.4, 0.6)."""

    def __init__(
        self,
        lambda_ce: float = 0.4,
        lambda_dice: float = 0.6,
        include_background: bool = True,
        batch_dice: bool = False,
        ce_weights: Sequence[float] | None = None,
        dice_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.lambda_ce = lambda_ce
        self.lambda_dice = lambda_dice
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.ce_weights = None if ce_weights is None else list(ce_weights)
        self.dice_weights = None if dice_weights is None else list(dice_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, C, H, W) against integer labels (B, H, W)."""
        weight = None
        if self.ce_weights is not None:
            weight = torch.as_tensor(self.ce_weights, dtype=torch.float32, device=logits.device)
        ce = F.cross_entropy(logits.float(), target.long(), weight=weight)
        dice = soft_dice_loss(
            logits, target, self.include_background, self.batch_dice, class_weights=self.dice_weights
        )
        return self.lambda_ce * ce + self.lambda_dice * dice
