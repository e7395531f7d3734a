"""Model selection during training: per-case Dice at 224 on the cached validation slices."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from usam import data as D


CLICK_ROW = "box+clicks3"  # validation row of interactive training: a box start, then 3 corrective clicks


def val_modes(prompt: str, k: int, interactive: bool = False) -> list[str]:
    """Evaluation prompt rows that select the model for a training prompt mode (+ the click row if interactive)."""
    rows = {"none": ["none"], "points": [f"points{k}"], "box": ["box"],
            "box+points": [f"box+points{k}"], "mixed": ["none", "points3", "box"]}[prompt]
    return rows + [CLICK_ROW] if interactive else rows


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


def predict_with_clicks(model: nn.Module, images: torch.Tensor, labels: np.ndarray, rounds: int,
                        device: torch.device, amp: bool, batch_size: int = 16) -> np.ndarray:
    """Argmax labels at 224 after a box start and `rounds` simulated corrective clicks (previous logits fed back)."""
    from usam.predictor import encode_images, predict_logits
    from usam.training.interaction import add_clicks

    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].float()[:, None].expand(-1, 3, -1, -1).to(device)
        lab = labels[i:i + batch_size]
        feats = encode_images(model, x, amp)
        prompts = [D.eval_prompts(lab[j], "box") for j in range(len(lab))]
        logits = predict_logits(model, feats, prompts, amp=amp)
        for _ in range(rounds):
            prompts, _ = add_clicks(prompts, logits, lab)
            logits = predict_logits(model, feats, prompts, amp=amp, mask_logits=logits)
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
        if row == CLICK_ROW:
            pred = predict_with_clicks(model, val.images, labels, 3, device, amp)
        else:
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
