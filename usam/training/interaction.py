"""Training by simulated users: a start prompt, then corrective clicks with the previous logits fed back.

As SAM, RITM and nnInteractive train: per batch the encoder runs once; the start (the batch's
own prompts: none, points or a box) is decoded with gradient; then `rounds` corrective rounds
each add, per slice, one class-aware click at the centre of the largest error component
(usam.clicks) to the slice's prompts and decode again with the previous logits as the mask
prompt. Rounds before the last run without gradient; the start and the last round carry the
loss (their mean), so the model stays good without a mask and learns to correct with one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from usam.clicks import Click, clicks_to_arrays, next_clicks
from usam.errors import UsamError
from usam.prompts import Prompts


def draw_rounds(max_rounds: int, seed: int, step: int) -> int:
    """Corrective rounds of a step, uniform in 0..max_rounds; the same on every rank (DDP graphs match)."""
    if max_rounds <= 0:
        return 0
    return int(np.random.default_rng([seed, 23, step]).integers(0, max_rounds + 1))


def click_prompt(click: Click) -> Prompts:
    """One click at 224 as model-frame Prompts (training works on 224 labels: slice pixels = model frame)."""
    points, labels, classes = clicks_to_arrays([click])
    return Prompts(points=points, point_labels=labels, point_classes=classes)


def add_clicks(prompts: list[Prompts], logits: torch.Tensor, labels: np.ndarray) -> tuple[list[Prompts], int]:
    """Each slice's prompts plus its next corrective click (none where the slice has no error); and the count."""
    clicks = next_clicks(logits.argmax(1).to(torch.uint8).cpu().numpy(), labels)
    out, n = [], 0
    for p, c in zip(prompts, clicks):
        if c is None:
            out.append(p)
        else:
            out.append(p + click_prompt(c))
            n += 1
    return out, n


class SimulatedUser(nn.Module):
    """The training forward pass with simulated interaction (one module, so DDP sees one forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, prompts: list | None,
                rounds: int) -> list[torch.Tensor]:
        """Logits that carry the loss: [start] or [start, after the last corrective round]."""
        feats = self.model.encode(images)
        start = self.model.decode(feats, prompts)
        if rounds == 0:
            return [start]
        lab = labels.cpu().numpy()
        current = [Prompts.empty() if p is None else p for p in (prompts or [None] * len(images))]
        prev = start.detach().float()
        for r in range(rounds):
            current, _ = add_clicks(current, prev, lab)
            if r < rounds - 1:
                with torch.no_grad():
                    prev = self.model.decode(feats, current, mask_logits=prev).float()
            else:
                return [start, self.model.decode(feats, current, mask_logits=prev)]
        raise AssertionError("unreachable")


def interactive_loss(objective: nn.Module, images: torch.Tensor, labels: torch.Tensor, prompts: list | None,
                     loss_fn: nn.Module, amp: bool, step: int, rounds: int) -> torch.Tensor:
    """Mean loss of the start and the last corrective round (float32); non-finite is a user error."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        outs = objective(images, labels, prompts, rounds)
    loss = torch.stack([loss_fn(o.float(), labels) for o in outs]).mean()
    if not torch.isfinite(loss):
        raise UsamError(f"loss became {loss.item()} at step {step}; lower the learning rates")
    return loss
