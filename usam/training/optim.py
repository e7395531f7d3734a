"""Optimizer recipes, the three parameter groups (adapter / ViT / decoder) and the poly schedule."""
from __future__ import annotations

import torch
from torch import nn

from usam.errors import UsamError

# Optimizer recipes: the public code's (default) and the paper's text.
RECIPES = {
    "code": {"optimizer": "adamw", "lr_decoder": 1e-3, "lr_vit": 1e-4, "lr_adapter": 1e-4, "weight_decay": 1e-4},
    "paper": {"optimizer": "adam", "lr_decoder": 1e-4, "lr_vit": 1e-3, "lr_adapter": 1e-3, "weight_decay": 0.0},
}
OPTIMIZERS = ("adamw", "adam", "sgd")
RECIPE_KEYS = ("optimizer", "lr_decoder", "lr_vit", "lr_adapter", "weight_decay")

# top-level names of usam.model.Usam (the public code's key layout)
ADAPTER_PREFIXES = ("backbone.",)
VIT_PREFIXES = ("sam.image_encoder.",)


def resolve_recipe(name: str, **overrides: float | str | None) -> dict:
    """Optimizer settings of a named recipe, with the non-None overrides (RECIPE_KEYS) applied."""
    if name not in RECIPES:
        raise UsamError(f"unknown recipe {name!r}; choose {', '.join(sorted(RECIPES))}")
    r = dict(RECIPES[name])
    for key, value in overrides.items():
        if key not in RECIPE_KEYS:
            raise UsamError(f"unknown recipe setting {key!r}")
        if value is not None:
            r[key] = value
    return r


def parameter_group_of(name: str) -> str:
    """'adapter' (CNN downsampling adapter), 'vit' (image encoder) or 'decoder' (the rest:
    prompt encoder, two-way transformer, up blocks, heads)."""
    if name.startswith(ADAPTER_PREFIXES):
        return "adapter"
    if name.startswith(VIT_PREFIXES):
        return "vit"
    return "decoder"


def param_groups(model: nn.Module, lr_decoder: float, lr_vit: float, lr_adapter: float,
                 weight_decay: float) -> list[dict]:
    """Three optimizer groups with their learning rates; frozen parameters are left out."""
    lrs = {"decoder": lr_decoder, "vit": lr_vit, "adapter": lr_adapter}
    groups: dict[str, list] = {k: [] for k in lrs}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[parameter_group_of(name)].append(param)
    return [{"name": k, "params": v, "lr": lrs[k], "weight_decay": weight_decay}
            for k, v in groups.items() if v]


def make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the three parameter groups."""
    groups = param_groups(model, recipe["lr_decoder"], recipe["lr_vit"], recipe["lr_adapter"],
                          recipe["weight_decay"])
    if not groups:
        raise UsamError("no trainable parameters")
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(groups)
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def poly_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier of a step: linear warm-up, then (1 - step/total)^power."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max(1, total_steps)) ** power


def make_scheduler(opt: torch.optim.Optimizer, total_steps: int, power: float,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: poly_factor(s, total_steps, power, warmup_steps))
