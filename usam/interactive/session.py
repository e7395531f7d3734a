"""InteractiveSession: the interactive work on one volume (as nnInteractive's inference session).

Prompts cross this edge in slice pixels (x = column, y = row); the 224 frame stays inside
usam.predictor.VolumePredictor, which caches each slice's encoder features (a click re-runs only
the prompt encoder and the decoder) and converts prompts once. Each slice keeps its previous
logits, fed back as the mask prompt on its next call; each action pushes the slice's new state
(prompts, mask, logits, locked) on its undo history; every action that succeeded joins the action
log, which `replay` re-runs to the same masks bit for bit. Prompt rules (usam.prompt_rules) are
off unless named (`rules="box"`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from usam.errors import PromptError
from usam.interactive import checks
from usam.interactive.state import (InteractiveResult, PromptItem, SliceHistory, SliceState, slice_prompts,
                                    with_box)
from usam.predictor import DEFAULT_CACHE_BYTES, SliceResult, VolumePredictor
from usam.prompts import SlicePrompts, slice_box_from_mask

Progress = Callable[[int, int], Any] | None
LOGITS_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class ArrayVolume:
    """A bare (z, y, x) HU array where a Volume is expected (the predictor reads .array only)."""

    array: np.ndarray


def _as_volume(volume: Any) -> Any:
    """A Volume-like object with .array (z, y, x); a bare 3-D array is wrapped."""
    if isinstance(volume, np.ndarray):
        if volume.ndim != 3:
            raise PromptError(f"a volume array must be (z, y, x), got shape {volume.shape}")
        return ArrayVolume(volume)
    if not hasattr(volume, "array") or np.ndim(volume.array) != 3:
        raise PromptError("the volume must have a 3-D .array (z, y, x)")
    return volume


class InteractiveSession:
    """Interactive segmentation of one volume: prompts, previous masks, undo/redo, locks, propagation, log.

    model: the inference model built once where it is loaded (usam.model.fast.optimize_for_inference)
    or a Usam in eval mode; used as given. Limits default to app/settings.py AppLimits': prompts
    per slice, undo states per slice and the undo states' memory of the whole session (their
    masks packed, their logits at `logits_dtype`; a slice's current state is always kept).
    """

    def __init__(self, model: Any, volume: Any, metadata: dict | None = None, device: str | torch.device | None = None,
                 *, rules: str = "none", max_points_per_slice: int = 64, max_history: int = 50,
                 max_history_mb: float = 32, cache_bytes: int = DEFAULT_CACHE_BYTES, logits_dtype: str = "float16",
                 batch_size: int = 8) -> None:
        if logits_dtype not in LOGITS_DTYPES:
            raise PromptError(f"logits_dtype must be one of {sorted(LOGITS_DTYPES)}, not {logits_dtype!r}")
        if int(batch_size) < 1 or int(max_points_per_slice) < 1:
            raise PromptError("batch_size and max_points_per_slice must be at least 1")
        self.volume = _as_volume(volume)
        self.predictor = VolumePredictor(model, self.volume, metadata, device, cache_bytes=cache_bytes,
                                         prompt_rules=rules)
        self.settings = {"rules": rules, "logits_dtype": logits_dtype,
                         "max_points_per_slice": int(max_points_per_slice), "max_history": int(max_history),
                         "max_history_mb": float(max_history_mb), "batch_size": int(batch_size)}
        self._dtype = LOGITS_DTYPES[logits_dtype]
        self._first_rules = rules
        self._label_map = np.zeros(self.volume.array.shape, dtype=np.uint8)
        self._histories: dict[int, SliceHistory] = {}
        self.actions: list[dict[str, Any]] = []
        self._lock = threading.RLock()  # one action at a time, whatever thread drives the session

    # --- reading -------------------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        """Number of axial slices."""
        return int(self._label_map.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(h, w) of a slice."""
        return int(self._label_map.shape[1]), int(self._label_map.shape[2])

    @property
    def encoder_calls(self) -> int:
        """Slices run through the encoder so far (a click on a visited slice adds none)."""
        return self.predictor.encoder_calls

    def _z(self, z: Any) -> int:
        return checks.slice_index(z, self.num_slices)

    def _state(self, z: int) -> SliceState:
        h = self._histories.get(z)
        return h.current if h else SliceState.of((), self._label_map[z], None, False)

    def labels(self, z: int) -> np.ndarray:
        """The current mask of slice z: uint8 (h, w), a copy."""
        return self._label_map[self._z(z)].copy()

    def label_map(self, copy: bool = True) -> np.ndarray:
        """The current label map of the volume: uint8 (z, y, x), a copy (copy=False: a read-only view, for display)."""
        if copy:
            return self._label_map.copy()
        view = self._label_map.view()
        view.flags.writeable = False
        return view

    def prompts(self, z: int) -> tuple[PromptItem, ...]:
        """The active prompts of slice z (slice pixels)."""
        return self._state(self._z(z)).prompts

    def logits(self, z: int) -> torch.Tensor | None:
        """Slice z's previous logits (what its next prompt call feeds back), or None."""
        return self._state(self._z(z)).logits

    def locked(self, z: int) -> bool:
        """Whether slice z is corrected (volume runs and propagation leave it alone)."""
        return self._state(self._z(z)).locked

    def locked_slices(self) -> list[int]:
        """Sorted indices of locked slices."""
        return sorted(z for z, h in self._histories.items() if h.current.locked)

    def can_undo(self, z: int) -> bool:
        """Whether undo(z) would change anything."""
        h = self._histories.get(self._z(z))
        return bool(h and h.can_undo)

    def can_redo(self, z: int) -> bool:
        """Whether redo(z) would change anything."""
        h = self._histories.get(self._z(z))
        return bool(h and h.can_redo)

    def result(self, z: int) -> InteractiveResult:
        """Slice z's current state as a result (no model call)."""
        z = self._z(z)
        st = self._state(z)
        return InteractiveResult(z, self._label_map[z].copy(), st.logits, st.prompts, st.locked)

    def history_bytes(self) -> int:
        """Bytes of every slice's undo / redo states (the current states not counted)."""
        return sum(h.undo_bytes for h in self._histories.values())

    def held_bytes(self) -> int:
        """Bytes this session holds besides the volume and the feature cache: label map, states, logits."""
        return self._label_map.nbytes + sum(st.nbytes for h in self._histories.values() for st in h.states)

    # --- prompts on one slice --------------------------------------------------------------
    def add_point(self, z: int, x: float, y: float, cls: int, positive: bool = True) -> InteractiveResult:
        """A positive / negative point of class cls (1 normal rectum, 2 tumor) at (x = column, y = row) of slice z."""
        with self._lock:
            z = self._z(z)
            x, y = checks.point(x, y, self.slice_shape)
            cls = checks.klass(cls, (1, 2), "the point class")
            if not isinstance(positive, (bool, np.bool_)) and positive not in (0, 1):
                raise PromptError("positive must be True or False")
            item = PromptItem("point", x, y, 1 if positive else 0, cls)
            res = self._prompt(z, self._state(z).prompts + (item,))
            self.actions.append({"op": "point", "z": z, **{k: v for k, v in item.to_dict().items() if k != "kind"}})
            return res

    def add_box(self, z: int, x0: float, y0: float, x1: float, y1: float, cls: int = 0) -> InteractiveResult:
        """A box (corners in slice pixels, any order) of class cls (0 all foreground, 1, 2) on slice z.

        A union box replaces the slice's boxes; a class box replaces the union box and its class's box."""
        with self._lock:
            z = self._z(z)
            box = checks.box(x0, y0, x1, y1, self.slice_shape)
            cls = checks.klass(cls, (0, 1, 2), "the box class")
            item = PromptItem("box", cls=cls, box=box)
            res = self._prompt(z, with_box(self._state(z).prompts, item))
            self.actions.append({"op": "box", "z": z, "box": list(item.box), "cls": cls})
            return res

    def add_prompts(self, z: int, prompts: SlicePrompts, use_mask: bool = True) -> InteractiveResult:
        """Several prompts in one model call (e.g. k points per class from a label map, the paper's protocols;
        use_mask=False with a fresh slice gives exactly VolumePredictor.predict(z, prompts)); boxes replace
        as add_box's. Locks the slice."""
        with self._lock:
            z = self._z(z)
            if not isinstance(prompts, SlicePrompts):
                raise PromptError(f"add_prompts takes SlicePrompts (slice pixels), not {type(prompts).__name__}")
            prompts.validate(self.slice_shape)
            items = self._state(z).prompts + tuple(
                PromptItem("point", float(x), float(y), int(lab), int(c))
                for (x, y), lab, c in zip(prompts.points, prompts.point_labels, prompts.point_classes))
            for b, c in zip(prompts.boxes, prompts.box_classes):
                items = with_box(items, PromptItem("box", cls=int(c), box=tuple(float(v) for v in b)))
            res = self._prompt(z, items, use_mask=bool(use_mask))
            self.actions.append({"op": "prompts", "z": z, "prompts": prompts.to_dict(), "use_mask": bool(use_mask)})
            return res

    def segment(self, z: int) -> InteractiveResult:
        """Slice z without prompts and without its previous mask (a fresh start; undoable, unlocked)."""
        with self._lock:
            z = self._z(z)
            r = self._run([z], [()], [None])[0]
            res = self._commit(z, (), r, locked=False)
            self.actions.append({"op": "segment_slice", "z": z})
            return res

    def undo(self, z: int) -> InteractiveResult:
        """Step slice z back one action (result.changed False when there is nothing to undo)."""
        return self._step(z, -1, "undo")

    def redo(self, z: int) -> InteractiveResult:
        """Step slice z forward one action (result.changed False when there is nothing to redo)."""
        return self._step(z, +1, "redo")

    def clear(self, z: int) -> InteractiveResult:
        """Remove slice z's prompts, mask and previous logits; unlocks it (undoable)."""
        with self._lock:
            z = self._z(z)
            self._push(z, SliceState.of((), np.zeros(self.slice_shape, np.uint8), None, False))
            self.actions.append({"op": "clear", "z": z})
            return self.result(z)

    def set_rules(self, rules: str) -> None:
        """Prompt rules (post-processing, usam.prompt_rules) for the next prompt calls; 'none' = the network alone."""
        with self._lock:
            self.predictor.set_rules(rules)   # checks the name before anything changes
            self.settings["rules"] = rules
            self.actions.append({"op": "rules", "rules": rules})

    def lock(self, z: int, locked: bool = True) -> InteractiveResult:
        """Mark slice z as corrected (locked) or not (undoable); prompt calls lock a slice themselves."""
        with self._lock:
            z = self._z(z)
            st = self._state(z)
            self._push(z, SliceState(st.prompts, st.packed, st.shape, st.logits, bool(locked)))
            self.actions.append({"op": "lock", "z": z, "locked": bool(locked)})
            return self.result(z)

    # --- runs over several slices ----------------------------------------------------------
    def segment_volume(self, start: int | None = None, end: int | None = None,
                       progress: Progress = None) -> dict[str, Any]:
        """Slices start..end (None: the volume's ends) without prompts, batched; locked slices are kept.

        A slice run here restarts its history from the new state (as a new mask from scratch);
        progress(done, total) after each batch."""
        with self._lock:
            lo, hi = checks.slice_range(start, end, self.num_slices)
            todo = [z for z in range(lo, hi + 1) if not self._state(z).locked]
            bs, done = self.settings["batch_size"], []
            for i in range(0, len(todo), bs):  # all slices first, then the states: a failed run changes nothing
                batch = todo[i:i + bs]
                done += zip(batch, self._run(batch, [()] * len(batch), [None] * len(batch)))
                if progress is not None:
                    progress(min(i + bs, len(todo)), len(todo))
            for z, r in done:
                self._restart(z, (), r)
            self.actions.append({"op": "segment_volume", "start": lo, "end": hi})
            return {"start": lo, "end": hi, "segmented": len(todo), "kept_locked": hi - lo + 1 - len(todo)}

    def propagate(self, z: int, end: int | None = None, margin: float = 2.0, feed_mask: bool = True,
                  progress: Progress = None) -> dict[str, Any]:
        """From slice z's mask to its neighbours: each next slice is prompted with the previous slice's
        mask box (union, `margin` in 224-frame pixels as usam.prompts.slice_box_from_mask) and, with
        feed_mask, that slice's logits as its mask prompt.

        Runs towards `end` (None: both ways to the volume's ends) and stops where a mask vanishes
        or at a locked slice (kept). A propagated slice restarts its history, unlocked."""
        with self._lock:
            z = self._z(z)
            margin = checks.number(margin, "the propagation margin")
            if not 0 <= margin <= 224:
                raise PromptError("the propagation margin must lie in 0..224 pixels")
            if not self._label_map[z].any():
                raise PromptError(f"slice {z} has no mask to propagate from: segment or prompt it first")
            end = None if end is None else self._z(end)
            if end is None:
                runs = [list(range(z + 1, self.num_slices)), list(range(z - 1, -1, -1))]
            else:
                runs = [list(range(z + 1, end + 1)) if end >= z else list(range(z - 1, end - 1, -1))]
            total, out = sum(map(len, runs)), {"start": z, "end": end, "propagated": [], "stopped_at": []}
            done: list[tuple[int, tuple[PromptItem, ...], SliceResult]] = []  # committed at the end
            for zs in runs:
                labels, logits = self._label_map[z], self._state(z).logits
                for nz in zs:
                    if self._state(nz).locked:
                        out["stopped_at"].append({"z": nz, "why": "locked"})
                        break
                    box = slice_box_from_mask(labels, margin=margin)
                    items = tuple(PromptItem("box", cls=int(c), box=tuple(float(v) for v in b))
                                  for b, c in zip(box.boxes, box.box_classes))
                    r = self._run([nz], [items], [logits if feed_mask else None])[0]
                    done.append((nz, items, r))
                    out["propagated"].append(nz)
                    if progress is not None:
                        progress(len(done), total)
                    labels, logits = r.labels, r.logits
                    if not labels.any():
                        out["stopped_at"].append({"z": nz, "why": "empty"})
                        break
            for nz, items, r in done:
                self._restart(nz, items, r)
            self.actions.append({"op": "propagate", "start": z, "end": end, "margin": margin,
                                 "feed_mask": bool(feed_mask)})
            return out

    # --- the action log --------------------------------------------------------------------
    def to_log(self) -> dict[str, Any]:
        """The action log with the settings replay needs (JSON-ready)."""
        from usam.interactive.log import LOG_FORMAT

        # the rules the session started with: its 'rules' actions change them on the way, as when it ran
        settings = {**self.settings, "rules": self._first_rules}
        return {"format": LOG_FORMAT, "version": 1, "settings": settings,
                "shape": list(self._label_map.shape), "actions": [dict(a) for a in self.actions]}

    @classmethod
    def replay(cls, model: Any, volume: Any, log: Any, metadata: dict | None = None,
               device: str | torch.device | None = None, max_actions: int = 1000,
               **settings: Any) -> "InteractiveSession":
        """A new session with a log's actions applied (to_log()'s dict, whose settings it takes, or a
        list of actions): the same masks, bit for bit, with the same model and volume. `settings`
        override the log's (constructor keywords, e.g. cache_bytes)."""
        from usam.interactive.log import SETTING_NAMES, log_actions, replay

        _, logged = log_actions(log)
        kw = {k: v for k, v in logged.items() if k in SETTING_NAMES}
        kw.update(settings)
        return replay(cls(model, volume, metadata, device, **kw), log, max_actions=max_actions)

    def apply(self, action: dict[str, Any]) -> Any:
        """Re-apply one logged action (the replay step), through the same checks as a live call."""
        from usam.interactive.log import apply_action

        return apply_action(self, action)

    # --- internals -------------------------------------------------------------------------
    def _run(self, zs: list[int], items: list[tuple[PromptItem, ...]],
             masks: list[torch.Tensor | None]) -> list[SliceResult]:
        """The predictor on these slices (prompts converted there), every result's logits stored on the CPU."""
        rs = self.predictor.predict_batch(zs, [slice_prompts(it) for it in items], masks)
        for r in rs:
            r.logits = r.logits.detach().to("cpu", self._dtype, copy=True)
        return rs

    def _prompt(self, z: int, items: tuple[PromptItem, ...], use_mask: bool = True) -> InteractiveResult:
        """Slice z with these prompts and (use_mask) its previous logits; the result becomes its locked state."""
        limit = self.settings["max_points_per_slice"]
        if len(items) > limit:
            raise PromptError(f"slice {z} already has {len(items) - 1} prompts (at most {limit}): "
                              "undo or clear some first")
        r = self._run([z], [items], [self._state(z).logits if use_mask else None])[0]
        return self._commit(z, items, r, locked=True)

    def _commit(self, z: int, items: tuple[PromptItem, ...], r: SliceResult, locked: bool) -> InteractiveResult:
        self._push(z, SliceState.of(items, r.labels, r.logits, locked))
        return InteractiveResult(z, self._label_map[z].copy(), r.logits, items, locked, True, r.encoder_ms,
                                 r.decoder_ms, r.cached, _probs=r.probs)

    def _restart(self, z: int, items: tuple[PromptItem, ...], r: SliceResult) -> None:
        """A run's result for an unlocked slice: its history starts again from it."""
        self._histories[z] = SliceHistory([SliceState.of(items, r.labels, r.logits, False)],
                                          max_depth=self.settings["max_history"])
        self._label_map[z] = r.labels

    def _push(self, z: int, state: SliceState) -> None:
        if z not in self._histories:
            self._histories[z] = SliceHistory([self._state(z)], max_depth=self.settings["max_history"])
        self._histories[z].push(state)
        self._label_map[z] = state.labels
        self._trim()

    def _step(self, z: int, delta: int, op: str) -> InteractiveResult:
        with self._lock:
            z = self._z(z)
            h = self._histories.get(z)
            st = h.step(delta) if h else None
            if st is None:
                res = self.result(z)
                res.changed = False
                return res
            self._label_map[z] = st.labels
            self.actions.append({"op": op, "z": z})
            return self.result(z)

    def _trim(self) -> None:
        """Keep the undo states within max_history_mb: the longest histories lose their oldest states first,
        then redo branches go; a slice's current state is always kept."""
        budget = self.settings["max_history_mb"] * 2**20
        total = self.history_bytes()
        while total > budget:
            h = max(self._histories.values(), key=lambda h: (h.pos, h.undo_bytes))
            dropped = h.drop_oldest()
            if not dropped:
                break
            total -= dropped
        if total > budget:
            for h in self._histories.values():
                del h.states[h.pos + 1:]
