"""The state of one slice in an interactive session and its undo history: pure data, no model.

A slice's state is what the next model call needs and what undo must give back exactly: its
prompts (slice pixels), its mask (zlib-packed: a 512^2 mask is 256 KB raw, 1-3 KB packed), its
previous logits in the 224 model frame (fed back as the mask prompt; kept on the CPU in the
session's logits dtype, ~300 KB in float16) and whether the user corrected (locked) it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from usam.preprocess import logits_to_labels
from usam.prompts import SlicePrompts


@dataclass(frozen=True)
class PromptItem:
    """One prompt on a slice in slice pixels (x = column, y = row): a point of a class, or a box."""

    kind: str                     # 'point' | 'box'
    x: float = 0.0
    y: float = 0.0
    label: int = 1                # points: 1 positive, 0 negative
    cls: int = 1                  # points: 1 normal rectum, 2 tumor; boxes: 0 union, 1, 2
    box: tuple[float, float, float, float] | None = None   # xyxy for kind == 'box'

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the action log's and a viewer's)."""
        if self.kind == "box":
            return {"kind": "box", "box": [float(v) for v in self.box], "cls": int(self.cls)}
        return {"kind": "point", "x": float(self.x), "y": float(self.y), "label": int(self.label),
                "cls": int(self.cls)}


def slice_prompts(items: tuple[PromptItem, ...]) -> SlicePrompts | None:
    """A slice's prompt items -> usam.prompts.SlicePrompts (slice pixels; None when there is none)."""
    pts = [p for p in items if p.kind == "point"]
    boxes = [p for p in items if p.kind == "box"]
    if not pts and not boxes:
        return None
    return SlicePrompts(points=[[p.x, p.y] for p in pts], point_labels=[p.label for p in pts],
                        point_classes=[p.cls for p in pts], boxes=[list(b.box) for b in boxes],
                        box_classes=[b.cls for b in boxes])


def with_box(items: tuple[PromptItem, ...], box: PromptItem) -> tuple[PromptItem, ...]:
    """Items plus a new box: a union box (class 0) replaces every box, a class box the union box and its class's."""
    kept = tuple(p for p in items if p.kind != "box" or (box.cls != 0 and p.cls not in (0, box.cls)))
    return kept + (box,)


@dataclass(frozen=True)
class SliceState:
    """One slice after an action: prompts, packed mask, previous logits (or None), locked."""

    prompts: tuple[PromptItem, ...]
    packed: bytes
    shape: tuple[int, int]
    logits: torch.Tensor | None
    locked: bool

    @staticmethod
    def of(prompts: tuple[PromptItem, ...], labels2d: np.ndarray, logits: torch.Tensor | None,
           locked: bool) -> "SliceState":
        """A state from a mask (copied and packed) and logits (kept as given: the caller owns a copy)."""
        arr = np.ascontiguousarray(labels2d, dtype=np.uint8)
        return SliceState(tuple(prompts), zlib.compress(arr.tobytes(), 1), tuple(arr.shape), logits, bool(locked))

    @property
    def labels(self) -> np.ndarray:
        """The slice mask (a new uint8 array)."""
        return np.frombuffer(zlib.decompress(self.packed), dtype=np.uint8).reshape(self.shape).copy()

    @property
    def nbytes(self) -> int:
        """Bytes this state holds."""
        n = len(self.packed) + 64 * (len(self.prompts) + 1)
        if self.logits is not None:
            n += self.logits.numel() * self.logits.element_size()
        return n


@dataclass
class SliceHistory:
    """Linear undo/redo history of one slice; states[pos] is the current state (at most max_depth undo steps)."""

    states: list[SliceState]
    pos: int = 0
    max_depth: int = 50

    @property
    def current(self) -> SliceState:
        """The active state."""
        return self.states[self.pos]

    def push(self, state: SliceState) -> None:
        """Record a new state; drops the redo branch and, beyond max_depth, the oldest states."""
        del self.states[self.pos + 1:]
        self.states.append(state)
        excess = len(self.states) - max(int(self.max_depth), 1) - 1
        if excess > 0:
            del self.states[:excess]
        self.pos = len(self.states) - 1

    def drop_oldest(self) -> int:
        """Forget the oldest undo state (memory budget): its bytes, or 0 when only the current one is left."""
        if self.pos == 0:
            return 0
        n = self.states[0].nbytes
        del self.states[0]
        self.pos -= 1
        return n

    def step(self, delta: int) -> SliceState | None:
        """Move delta (-1 undo, +1 redo) states; None when there is nothing to step to."""
        new = self.pos + delta
        if not 0 <= new < len(self.states):
            return None
        self.pos = new
        return self.current

    @property
    def undo_bytes(self) -> int:
        """Bytes of the states other than the current one (what the history budget counts)."""
        return sum(st.nbytes for i, st in enumerate(self.states) if i != self.pos)

    @property
    def can_undo(self) -> bool:
        """Whether undo would change anything."""
        return self.pos > 0

    @property
    def can_redo(self) -> bool:
        """Whether redo would change anything."""
        return self.pos < len(self.states) - 1


@dataclass
class InteractiveResult:
    """A slice after an action: its mask, its previous logits (what its next call feeds), its prompts."""

    z: int
    labels: np.ndarray                 # uint8 (h, w), 0/1/2
    logits: torch.Tensor | None        # (K, 224, 224) model frame, CPU, the session's logits dtype; None: no mask
    prompts: tuple[PromptItem, ...]
    locked: bool
    changed: bool = True               # False: undo / redo had nothing to step to
    encoder_ms: float = 0.0
    decoder_ms: float = 0.0
    cached: bool = True                # the encoder did not run for this result
    _probs: np.ndarray | None = field(default=None, repr=False)

    @property
    def probs(self) -> np.ndarray:
        """float32 (K, h, w) class probabilities at the slice's size (from the logits; background where none)."""
        if self._probs is None:
            if self.logits is None:
                self._probs = np.zeros((3,) + self.labels.shape, np.float32)
                self._probs[0] = 1.0
            else:
                self._probs = logits_to_labels(self.logits.float()[None], self.labels.shape)[1][0]
        return self._probs
