"""A stand-in for usam.interactive.InteractiveSession over a fake predictor (no torch model): the subset the
study's AI arms and model runs drive (prompts per slice, clear, segment, add_prompts, result)."""
from __future__ import annotations

from typing import Any

from usam.interactive import PromptItem
from usam.prompts import SlicePrompts


class FakeSession:
    """Keeps each slice's prompts as InteractiveSession does and asks the fake predictor for the mask."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self._prompts: dict[int, SlicePrompts] = {}
        self._results: dict[int, Any] = {}
        self.calls: list[tuple[str, int, bool]] = []   # (op, z, use_mask) for the tests

    def prompts(self, z: int) -> tuple[PromptItem, ...]:
        p = self._prompts.get(z)
        if p is None:
            return ()
        items = [PromptItem("point", float(x), float(y), int(lab), int(c))
                 for (x, y), lab, c in zip(p.points, p.point_labels, p.point_classes)]
        items += [PromptItem("box", cls=int(c), box=tuple(float(v) for v in b)) for b, c in zip(p.boxes, p.box_classes)]
        return tuple(items)

    def result(self, z: int) -> Any:
        return self._results[z]

    def clear(self, z: int) -> None:
        self.calls.append(("clear", z, False))
        self._prompts.pop(z, None)
        self._results.pop(z, None)

    def segment(self, z: int) -> Any:
        self.calls.append(("segment", z, False))
        self._prompts.pop(z, None)
        self._results[z] = self.predictor.predict(z, None)
        return self._results[z]

    def add_prompts(self, z: int, prompts: SlicePrompts, use_mask: bool = True) -> Any:
        self.calls.append(("add_prompts", z, bool(use_mask)))
        held = self._prompts.get(z)
        if held is not None and len(prompts.boxes):   # a box replaces the slice's box, as the library's
            held = SlicePrompts(held.points, held.point_labels, held.point_classes)
        merged = prompts if held is None else held + prompts
        self._prompts[z] = merged
        self._results[z] = self.predictor.predict(z, merged)
        return self._results[z]
