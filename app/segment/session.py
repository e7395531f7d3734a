"""Per-session display state of the viewer: the volume shown, its reference, the slice, window, overlay
and prompt mode, the last timing, the session's files.

The interactive work itself (label map, each slice's prompts, previous masks and undo history,
locks, the action log) lives in `interactive`, a usam.interactive.InteractiveSession; the app
reads it for display and calls it for every prompt and run (app/segment/prompts.py, runs.py).
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.render import DEFAULT_PRESET, WINDOW_PRESETS, Window

MODES = ("Positive point", "Negative point", "Box")
CLASS_CHOICES = {"Normal rectum": 1, "Tumor": 2}
# the prompt rules (usam.prompt_rules) the page offers: post-processing, off unless chosen, shown when on
RULE_CHOICES = {"Off: the network alone": "none", "Box: the output stays inside the box": "box",
                "All: box, clicked classes, clicked regions": "all"}


@dataclass
class Session:
    """Everything one browser session holds. Lives in gr.State; `close()` deletes its files."""

    volume: Any                           # usam.volumes.Volume
    volume_hash: str
    name: str
    interactive: Any                      # usam.interactive.InteractiveSession on this volume
    ground_truth: np.ndarray | None = None  # phantom ground truth for demo cases
    reference: np.ndarray | None = None   # uploaded / phantom reference label map
    reference_name: str = ""
    z: int = 0
    window: Window = field(default_factory=lambda: Window(*WINDOW_PRESETS[DEFAULT_PRESET]))
    opacity: float = 0.45
    visible: tuple[int, ...] = (1, 2)
    mode: str = MODES[0]
    cls: int = 1
    cross_xy: tuple[int, int] | None = None
    # the app's own ops of the session file (load, window, rules), each with the number of library
    # actions before it: the file interleaves them with interactive.actions (app/segment/replay.py)
    view_actions: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    last_timing: dict[str, Any] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    view_nonce: int = 0
    png_cache: dict[tuple, str] = field(default_factory=dict, repr=False)   # (z, window) -> slice PNG
    ood_volume: dict[str, list] = field(default_factory=dict, repr=False)   # volume hash -> its findings
    ood_model: list = field(default_factory=list, repr=False)               # uncertainty of the last run
    ack: int = 0                          # last browser prompt sequence number handled
    is_upload: bool = False               # the volume came from the visitor (its name is theirs)
    _tmpdir: Path | None = None
    closed: bool = False                  # close() ran: files deleted, memory no longer counted
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)  # one event at a time

    @property
    def labels(self) -> np.ndarray:
        """The current label map (z, y, x) uint8: a read-only view of the interactive session's."""
        return self.interactive.label_map(copy=False)

    @property
    def nz(self) -> int:
        """Number of axial slices."""
        return int(self.interactive.num_slices)

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(h, w) of an axial slice."""
        return self.interactive.slice_shape

    @property
    def rules(self) -> str:
        """The prompt rules in use ('none': the network alone)."""
        return str(self.interactive.settings.get("rules", "none"))

    def note(self, action: dict[str, Any]) -> None:
        """Record one of the app's own ops (load, window, rules) at its place among the library's actions."""
        self.view_actions.append((len(self.interactive.actions), dict(action)))

    def tmpdir(self) -> Path:
        """Private folder for this session's exports; removed by close()."""
        if self._tmpdir is None or not self._tmpdir.exists():
            self._tmpdir = Path(tempfile.mkdtemp(prefix="usam_session_"))
        return self._tmpdir

    def close(self) -> None:
        """Delete this session's files and drop the cached slice features."""
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.interactive.predictor.cache.clear()
        self.png_cache.clear()
        self.closed = True

    def held_bytes(self) -> int:
        """Bytes of arrays this session alone holds: the interactive session's (label map, undo states,
        previous logits), an uploaded volume, an uploaded reference."""
        if self.closed:
            return 0
        n = int(self.interactive.held_bytes())
        if self.is_upload:
            n += int(getattr(self.volume.array, "nbytes", 0))
        if self.reference is not None and self.reference is not self.ground_truth:
            n += self.reference.nbytes
        return n
