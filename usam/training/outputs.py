"""The run folder: the JSON-lines log, the resumable state and the checkpoints (rank 0 writes)."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from usam.data import to_json
from usam.errors import UsamError

STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"


class JsonlLog:
    """Append-only JSON-lines log (rank 0 only: other ranks get a log with no path)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, **record) -> None:
        """One event as one line."""
        if self.path is None:
            return
        record.setdefault("time", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with open(self.path, "a") as fh:
            fh.write(to_json(record) + "\n")


def save_state(path: Path, model: nn.Module, opt, sched, state: dict) -> None:
    """Everything a resume needs (atomic replace)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "state": state}, tmp)
    os.replace(tmp, path)


def load_state(path: Path, model: nn.Module, opt, sched, device: torch.device, total_steps: int) -> dict:
    """Restore model, optimizer and schedule from a saved state; returns its run state (step,
    epoch, best ...). The saved run must have the same total steps as this one."""
    if not path.exists():
        raise UsamError(f"--resume: no {STATE_FILE} in {path.parent}")
    saved = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    if saved["state"]["total_steps"] != total_steps:
        raise UsamError(f"--resume: the saved run has {saved['state']['total_steps']} total steps, "
                        f"these flags give {total_steps}")
    return dict(saved["state"])


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """A U-SAM safetensors checkpoint with its metadata (atomic: temporary file, then rename)."""
    from usam.checkpoints import save_checkpoint as _save

    _save(model, path, meta)


def export_checkpoint(selected: Path, export: Path, meta: dict) -> None:
    """Re-save the selected checkpoint at `export` with this metadata (the whole run's wall time)."""
    from usam.checkpoints import load_checkpoint

    model, _ = load_checkpoint(selected)
    export.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, export, meta)
