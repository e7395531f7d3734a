"""Model selection during training: per-case Dice at 224 on the cached validation slices."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from usam import data as D


def val_modes(prompt: str, k: int) -> list[str]:
    """Evaluation prompt rows that select the model for a training prompt mode."""
    return {"none": ["none"], "points": [f"points{k}"], "box": ["box"],
            "box+points": [f"box+points{k}"], "mixed": ["none", "points3", "box"]}[prompt]


def prompts_for_row(label2d: np.ndarray, row: str):
    """Deterministic prompts of a validation row (box+pointsK = box merged with K points)."""
    if row.startswith("box+points"):
        k = int(row[len("box+points"):])
        return D.merge_prompts(D.eval_prompts(label2d, f"points{k}"), D.eval_prompts(label2d, "box"))
    return D.eval_prompts(label2d, row)


def predict_slices(model: nn.Module, images: torch.Tensor, prompts: list | None, device: torch.device,
                   amp: bool, batch_size: int = 16) -> np.ndarray:
    """Argmax labels at 224 of cached slices (N, 224, 224) float16, through usam.predictor's one inference path."""
    from usam.predictor import encode_images, predict_logits

    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].float()[:, None].expand(-1, 3, -1, -1).to(device)
        p = None if prompts is None else prompts[i:i + batch_size]
        logits = predict_logits(model, encode_images(model, x, amp), p, amp=amp)
        out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def dice_2class(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """Dice of classes 1 and 2 (nan when both empty)."""
    out = []
    for c in (1, 2):
        p, g = pred == c, gt == c
        s = p.sum() + g.sum()
        out.append(float("nan") if s == 0 else 2.0 * np.logical_and(p, g).sum() / s)
    return out


def validate(model: nn.Module, val: D.SliceSet, rows: list[str], device: torch.device, amp: bool) -> dict:
    """Per-case Dice at 224 on the cached validation slices for each prompt row; 'score' is
    the mean over rows of the per-class means (classes 1-2), the model-selection criterion."""
    model.eval()
    labels = val.labels.numpy()
    ids = np.asarray(val.case_ids)
    result: dict = {"rows": {}}
    for row in rows:
        prompts = None if row == "none" else [prompts_for_row(labels[i], row) for i in range(len(labels))]
        pred = predict_slices(model, val.images, prompts, device, amp)
        per_case = np.array([dice_2class(pred[ids == c], labels[ids == c]) for c in dict.fromkeys(ids)])
        with np.errstate(all="ignore"):
            per_class = np.nanmean(per_case, axis=0)
        result["rows"][row] = {"dice_normal": float(per_class[0]), "dice_tumor": float(per_class[1]),
                               "dice_mean": float(np.nanmean(per_class))}
    result["score"] = float(np.mean([r["dice_mean"] for r in result["rows"].values()]))
    model.train()
    return result
