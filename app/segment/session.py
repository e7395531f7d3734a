"""Per-session state of the viewer: volume, label map, per-slice prompt history, display settings.

Pure data and bookkeeping (numpy only); the model calls live in app/segment/prompts.py and
app/segment/runs.py. (Issue 16 moves the interactive part, prompts, history and the action
log, into usam/interactive.py; the display settings stay here.)
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.render import DEFAULT_PRESET, WINDOW_PRESETS, Window

MODES = ("Positive point", "Negative point", "Box")
CLASS_CHOICES = {"Normal rectum": 1, "Tumor": 2}


@dataclass(frozen=True)
class PromptItem:
    """One user prompt on a slice, in slice pixel coordinates (x = column, y = row)."""

    kind: str                     # 'point' | 'box'
    x: float = 0.0
    y: float = 0.0
    label: int = 1                # points: 1 positive, 0 negative
    cls: int = 1                  # points: 1 normal rectum, 2 tumor
    box: tuple[float, float, float, float] | None = None   # xyxy for kind == 'box'

    def to_dict(self) -> dict[str, Any]:
        """JSON form used by the session file and the viewer."""
        if self.kind == "box":
            return {"kind": "box", "box": [float(v) for v in self.box]}
        return {"kind": "point", "x": float(self.x), "y": float(self.y),
                "label": int(self.label), "cls": int(self.cls)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "PromptItem":
        """Inverse of to_dict."""
        if d["kind"] == "box":
            x0, y0, x1, y1 = (float(v) for v in d["box"])
            return PromptItem("box", box=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        return PromptItem("point", float(d["x"]), float(d["y"]), int(d["label"]), int(d.get("cls", 1)))


@dataclass(frozen=True)
class SliceSnapshot:
    """The state of one slice after an action: its prompts, its mask (zlib-packed), whether it is locked.

    Masks are packed because a history holds one per action: a 512^2 slice is 256 KB raw and
    typically 1-3 KB packed, so undo depth costs kilobytes, not tens of megabytes."""

    prompts: tuple[PromptItem, ...]
    packed: bytes
    shape: tuple[int, int]
    locked: bool

    @staticmethod
    def of(prompts: tuple[PromptItem, ...], labels2d: np.ndarray, locked: bool) -> "SliceSnapshot":
        """Snapshot of a slice mask (copied and packed)."""
        arr = np.ascontiguousarray(labels2d, dtype=np.uint8)
        return SliceSnapshot(tuple(prompts), zlib.compress(arr.tobytes(), 1), tuple(arr.shape), bool(locked))

    @property
    def labels(self) -> np.ndarray:
        """The slice mask (a new uint8 array)."""
        return np.frombuffer(zlib.decompress(self.packed), dtype=np.uint8).reshape(self.shape).copy()

    @property
    def nbytes(self) -> int:
        """Bytes this snapshot holds."""
        return len(self.packed) + 64 * (len(self.prompts) + 1)


@dataclass
class SliceHistory:
    """Linear undo/redo history of one slice; states[pos] is the current state (at most max_depth kept)."""

    states: list[SliceSnapshot]
    pos: int = 0
    max_depth: int = 50

    @property
    def current(self) -> SliceSnapshot:
        """The active snapshot."""
        return self.states[self.pos]

    def push(self, snap: SliceSnapshot) -> None:
        """Record a new state; drops the redo branch and, beyond max_depth, the oldest states."""
        del self.states[self.pos + 1:]
        self.states.append(snap)
        excess = len(self.states) - max(int(self.max_depth), 1) - 1   # depth counts undo steps
        if excess > 0:
            del self.states[:excess]
        self.pos = len(self.states) - 1

    def drop_oldest(self) -> bool:
        """Forget the oldest undo state (memory budget); False when only the current one is left."""
        if self.pos == 0:
            return False
        del self.states[0]
        self.pos -= 1
        return True

    @property
    def nbytes(self) -> int:
        """Bytes the history holds."""
        return sum(st.nbytes for st in self.states)

    def undo(self) -> SliceSnapshot | None:
        """Step back one state, or None when at the start."""
        if self.pos == 0:
            return None
        self.pos -= 1
        return self.current

    def redo(self) -> SliceSnapshot | None:
        """Step forward one state, or None when at the end."""
        if self.pos >= len(self.states) - 1:
            return None
        self.pos += 1
        return self.current

    @property
    def can_undo(self) -> bool:
        """Whether undo would change anything."""
        return self.pos > 0

    @property
    def can_redo(self) -> bool:
        """Whether redo would change anything."""
        return self.pos < len(self.states) - 1


@dataclass
class Session:
    """Everything one browser session holds. Lives in gr.State; `close()` deletes its files."""

    volume: Any                           # usam.volumes.Volume
    volume_hash: str
    name: str
    labels: np.ndarray                    # uint8 (z, y, x) current label map
    predictor: Any = None                 # usam.predictor.VolumePredictor (not serialised)
    ground_truth: np.ndarray | None = None  # phantom ground truth for demo cases
    reference: np.ndarray | None = None   # uploaded / phantom reference label map
    reference_name: str = ""
    histories: dict[int, SliceHistory] = field(default_factory=dict)
    z: int = 0
    window: Window = field(default_factory=lambda: Window(*WINDOW_PRESETS[DEFAULT_PRESET]))
    opacity: float = 0.45
    visible: tuple[int, ...] = (1, 2)
    mode: str = MODES[0]
    cls: int = 1
    cross_xy: tuple[int, int] | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    last_timing: dict[str, Any] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    view_nonce: int = 0
    png_cache: dict[tuple, str] = field(default_factory=dict, repr=False)   # (z, window) -> slice PNG
    ood_volume: dict[str, list] = field(default_factory=dict, repr=False)   # volume hash -> its findings
    ood_model: list = field(default_factory=list, repr=False)               # uncertainty of the last run
    ack: int = 0                          # last browser prompt sequence number handled
    is_upload: bool = False               # the volume came from the visitor (its name is theirs)
    max_history: int = 50                 # undo states per slice (AppLimits.max_history)
    max_points: int = 64                  # prompts per slice (AppLimits.max_points_per_slice)
    max_history_bytes: int = 32 << 20     # undo states of the whole session (AppLimits.max_history_mb)
    _tmpdir: Path | None = None
    closed: bool = False                  # close() ran: files deleted, memory no longer counted
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)  # one event at a time

    @property
    def nz(self) -> int:
        """Number of axial slices."""
        return int(self.labels.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(h, w) of an axial slice."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    def tmpdir(self) -> Path:
        """Private folder for this session's exports; removed by close()."""
        if self._tmpdir is None or not self._tmpdir.exists():
            self._tmpdir = Path(tempfile.mkdtemp(prefix="usam_session_"))
        return self._tmpdir

    def close(self) -> None:
        """Delete this session's files and drop the predictor's caches."""
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.predictor = None
        self.closed = True

    def held_bytes(self) -> int:
        """Bytes of arrays this session alone holds (an uploaded volume, label map, reference, history)."""
        if self.closed:
            return 0
        n = self.labels.nbytes + self.history_bytes()
        if self.is_upload:
            n += int(getattr(self.volume.array, "nbytes", 0))
        if self.reference is not None and self.reference is not self.ground_truth:
            n += self.reference.nbytes
        return n

    # --- per-slice history -------------------------------------------------------------
    def history(self, z: int) -> SliceHistory:
        """History of slice z, started from the slice's current mask on first use."""
        if z not in self.histories:
            self.histories[z] = SliceHistory([SliceSnapshot.of((), self.labels[z], False)],
                                             max_depth=self.max_history)
        return self.histories[z]

    def prompts(self, z: int) -> tuple[PromptItem, ...]:
        """Active prompts of slice z."""
        h = self.histories.get(z)
        return h.current.prompts if h else ()

    def locked(self, z: int) -> bool:
        """Whether the user corrected slice z (batch runs then leave it alone)."""
        h = self.histories.get(z)
        return bool(h and h.current.locked)

    def locked_slices(self) -> list[int]:
        """Sorted indices of locked slices."""
        return sorted(z for z, h in self.histories.items() if h.current.locked)

    def commit(self, z: int, prompts: tuple[PromptItem, ...], labels2d: np.ndarray, locked: bool) -> None:
        """Record a new state of slice z and make it the current mask."""
        self.history(z).push(SliceSnapshot.of(tuple(prompts), labels2d, locked))
        self.labels[z] = labels2d
        self._trim_histories()

    def history_bytes(self) -> int:
        """Bytes held by every slice's undo history."""
        return sum(h.nbytes for h in self.histories.values())

    def _trim_histories(self) -> None:
        """Keep the session's undo histories within max_history_bytes: the longest histories lose
        their oldest states first (the current state of every slice is always kept)."""
        total = self.history_bytes()
        while total > self.max_history_bytes:
            longest = max(self.histories.values(), key=lambda h: (h.pos, h.nbytes), default=None)
            if longest is None:
                return
            first = longest.states[0].nbytes
            if not longest.drop_oldest():
                return
            total -= first

    def restore(self, z: int, snap: SliceSnapshot) -> None:
        """Apply a snapshot (after undo / redo) to the label map."""
        self.labels[z] = snap.labels

    def overwrite_unlocked(self, z: int, labels2d: np.ndarray) -> None:
        """A batch result for an unlocked slice: new mask, its history restarts from it."""
        self.labels[z] = labels2d
        self.histories.pop(z, None)


def clamp_range(start: float | int | None, end: float | int | None, nz: int) -> tuple[int, int]:
    """A slice range clipped to the volume; None means the whole volume."""
    lo = 0 if start is None else int(round(float(start)))
    hi = nz - 1 if end is None else int(round(float(end)))
    lo, hi = max(0, min(lo, nz - 1)), max(0, min(hi, nz - 1))
    return lo, hi
