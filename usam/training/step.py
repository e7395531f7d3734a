"""One optimisation step: the loss of a batch and the update it drives.

`batch_loss` is the supervised objective (one forward pass with the batch's prompts). Another
objective (e.g. simulated interaction: several decoder passes over cached encoder features)
is another function with the same signature, chosen by the loop; the update stays the same.
"""
from __future__ import annotations

import torch
from torch import nn

from usam.errors import UsamError


def batch_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, prompts: list | None,
               loss_fn: nn.Module, amp: bool, step: int) -> torch.Tensor:
    """Loss of one batch (float32), under bf16 autocast when amp; a non-finite loss is a user error."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(images, prompts)
    loss = loss_fn(logits.float(), labels)
    if not torch.isfinite(loss):
        raise UsamError(f"loss became {loss.item()} at step {step}; lower the learning rates")
    return loss


def optimizer_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor) -> dict[str, float]:
    """Backward, optimizer and schedule step; returns the learning rate each group used."""
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}  # read before the schedule moves on
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return lrs
