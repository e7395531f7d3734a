"""Training prompts of one batch, reproducible from (seed, step, rank, sample)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from usam import data as D


@dataclass(frozen=True)
class PromptSampling:
    """How training prompts are drawn (TrainConfig's prompt fields)."""

    mode: str = "none"  # none, points, box, box+points, mixed
    points: int = 3
    negatives: int = 0
    box_margin: int = 4
    box_per_class: bool = False


def batch_kind(sampling: PromptSampling, seed: int, step: int) -> tuple[str, int]:
    """The prompt kind and points per class of a step; shared by all ranks (the seed does not
    depend on the rank) so that DDP graphs match."""
    return D.choose_batch_mode(sampling.mode, sampling.points, np.random.default_rng([seed, 5, step]))


def batch_prompts(labels: torch.Tensor, kind: str, k: int, seed: int, step: int, rank: int,
                  sampling: PromptSampling) -> list | None:
    """Prompts of every sample of a batch from its (augmented) 224 labels, reproducibly."""
    if kind == "none":
        return None
    lab = labels.cpu().numpy()
    out = []
    for b in range(lab.shape[0]):
        rng = np.random.default_rng([seed, 17, step, rank, b])
        out.append(D.sample_prompts(lab[b], kind, k, rng, negatives=sampling.negatives,
                                    max_margin=sampling.box_margin, box_per_class=sampling.box_per_class))
    return out
