"""LoRA on the q and v parts of a ViT block's fused qkv projection (as in SAMed)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LORA_KEY_MARK = ".lora_"  # every LoRA parameter name contains this


class LoraQkv(nn.Linear):
    """A fused qkv Linear plus rank-r updates of q and v.

    It subclasses nn.Linear so that the base weights keep the keys `attn.qkv.weight/bias` of
    SAM and reference checkpoints; the LoRA factors are extra keys `attn.qkv.lora_{a,b}_{q,v}.weight`.
    """

    def __init__(self, dim: int, rank: int, bias: bool = True) -> None:
        super().__init__(dim, 3 * dim, bias=bias)
        self.dim = dim
        self.rank = rank
        self.lora_a_q = nn.Linear(dim, rank, bias=False)
        self.lora_b_q = nn.Linear(rank, dim, bias=False)
        self.lora_a_v = nn.Linear(dim, rank, bias=False)
        self.lora_b_v = nn.Linear(rank, dim, bias=False)
        self.reset_lora()

    def reset_lora(self) -> None:
        """A Kaiming-uniform, B zero: the block starts exactly as the base projection."""
        for a, b in ((self.lora_a_q, self.lora_b_q), (self.lora_a_v, self.lora_b_v)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LoraQkv":
        """Wrap an existing qkv Linear, sharing its weight and bias tensors."""
        m = cls(linear.in_features, rank, bias=linear.bias is not None)
        m.to(device=linear.weight.device, dtype=linear.weight.dtype)
        m.weight = linear.weight
        if linear.bias is not None:
            m.bias = linear.bias
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.weight, self.bias).split(self.dim, dim=-1)
        q = q + self.lora_b_q(self.lora_a_q(x))
        v = v + self.lora_b_v(self.lora_a_v(x))
        return torch.cat([q, k, v], dim=-1)


def apply_lora(image_encoder: nn.Module, rank: int) -> int:
    """Replace every block's attn.qkv by a LoraQkv of this rank; returns the number of blocks changed."""
    n = 0
    for blk in image_encoder.blocks:
        if not isinstance(blk.attn.qkv, LoraQkv):
            blk.attn.qkv = LoraQkv.from_linear(blk.attn.qkv, rank)
            n += 1
    return n
