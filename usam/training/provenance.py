"""What a trained checkpoint says about how it was made: metadata, command, commit, checksums."""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from usam.preprocess import MEAN as NORM_MEAN, SIZE as MODEL_SIZE, STD as NORM_STD
from usam.training.config import TrainConfig
from usam.training.ddp import launched_by_torchrun

CLASSES = {0: "background", 1: "normal rectum", 2: "tumor"}


def weights_checksum(model: nn.Module, params_only: bool = False) -> str:
    """sha256 over all parameters and buffers, or parameters only (DDP ranks must agree)."""
    h = hashlib.sha256()
    items = model.named_parameters() if params_only else model.state_dict().items()
    for name, t in sorted(items):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """HEAD of the repository this code runs from, '+dirty' when files differ."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) if head else None


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this run was started (torchrun or python -m usam): `train` + argv, else sys.argv."""
    prefix = ("torchrun --nproc_per_node {} -m usam".format(os.environ["WORLD_SIZE"])
              if launched_by_torchrun() else "python -m usam")
    args = ["train", *argv] if argv is not None else sys.argv[1:]
    return prefix + " " + shlex.join(args)


def metadata(cfg: TrainConfig, config, data_info: dict, state: dict, wall: float,
             val_result: dict | None) -> dict:
    """Checkpoint metadata with the full provenance of this run."""
    return {
        "config": config.to_dict(),
        "classes": {str(k): v for k, v in CLASSES.items()},
        "preprocessing": {"window": [float(cfg.window[0]), float(cfg.window[1])], "size": MODEL_SIZE,
                          "mean": NORM_MEAN, "std": NORM_STD, "label_resize": cfg.label_resize},
        "provenance": {"data": data_info, "commit": git_commit(),
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "command": command_line(cfg.argv), "wall_time_s": round(wall, 1)},
        "weights_kind": cfg.weights_kind,
        "training": {"recipe": cfg.optimizer_settings(), "recipe_name": cfg.recipe, "prompt": cfg.prompt,
                     "points": cfg.points, "negatives": cfg.negatives, "batch_size": cfg.batch_size,
                     "world_size": state["world"], "step": state["step"], "total_steps": state["total_steps"],
                     "epoch": state["epoch"],
                     "loss": {"lambda_ce": cfg.lambda_ce, "lambda_dice": cfg.lambda_dice,
                              "dice_batch": cfg.dice_batch, "ce_weights": _list(cfg.ce_weights),
                              "dice_weights": _list(cfg.dice_weights)},
                     "augment": cfg.augment, "seed": cfg.seed, "poly_power": cfg.poly_power,
                     "selection": "best validation score" if val_result is not None else "last step",
                     "val": val_result},
    }


def _list(values) -> list | None:
    return None if values is None else list(values)
