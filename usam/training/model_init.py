"""The model a run starts from: a fresh seeded U-SAM, SAM-initialised, or a U-SAM checkpoint."""
from __future__ import annotations

import sys

import torch
from torch import nn

from usam.errors import UsamError


def build_model(preset: str, overrides: dict | None = None, lora_rank: int = 0, seed: int = 202307,
                sam_weights: str | None = None, init: str | None = None):
    """(model, UsamConfig): a fresh U-SAM seeded by `seed`, optionally with SAM weights; or,
    with `init`, the U-SAM checkpoint there (preset and overrides are then unused)."""
    from usam.model import build_usam, get_config

    torch.manual_seed(seed)
    if init:
        from usam.checkpoints import load_checkpoint

        model, _ = load_checkpoint(init)
        return model, model_config(model)
    try:
        config = get_config(preset, lora_rank=lora_rank, **(overrides or {}))
    except TypeError as exc:  # an unknown field name in --override
        raise UsamError(f"bad --override: {exc}") from None
    model = build_usam(config)
    if sam_weights:
        from usam.checkpoints import load_sam_weights

        report = load_sam_weights(model, sam_weights)
        print(f"SAM weights: {report}", file=sys.stderr)
    return model, config


def model_config(model: nn.Module):
    """The UsamConfig a model was built from."""
    config = getattr(model, "config", None)
    if config is None:
        raise UsamError("model has no .config")
    return config
