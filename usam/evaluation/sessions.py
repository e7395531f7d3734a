"""The interactive protocols' one way to the model: a usam.interactive.InteractiveSession per case.

`usam evaluate --protocol interactive | clicks` drive the same object as the Segment tab and the
study's AI arms: a start is add_prompts(z, box, use_mask=False) or segment(z), a corrective click
is add_point (the slice's previous logits come back as the mask prompt) or, without the mask
prompt, add_prompts(z, click, use_mask=False). Each slice is encoded once per case (the session's
feature cache holds the whole case; '+ rules' rows switch the same session's rules with set_rules).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from usam import data as D
from usam.clicks import Click, click_prompts
from usam.interactive import InteractiveResult, InteractiveSession
from usam.prompts import SlicePrompts

CASE_CACHE_BYTES = 2**40   # a cap, not an allocation: the cache holds one case's features, dropped with the session
# undo keeps one state: the click-response trials step back to their start, the interactive protocol never undoes
HISTORY = dict(max_history=1, max_history_mb=2.0**20)


def case_session(model: torch.nn.Module, case: D.CaseData, zs: np.ndarray, window: tuple[float, float],
                 batch_size: int = 8, max_points: int = 64) -> InteractiveSession:
    """A session on the case's volume with the slices zs encoded (in batches of batch_size, once).

    Logits are kept in float32 so that what comes back as the mask prompt is the decoder's output
    itself; prompt rules are off (set_rules names them)."""
    meta = {"preprocessing": {"window": [float(w) for w in window]}}
    session = InteractiveSession(model, case.image, meta, cache_bytes=CASE_CACHE_BYTES,
                                 logits_dtype="float32", max_points_per_slice=max(64, int(max_points)),
                                 batch_size=batch_size, **HISTORY)
    for b in range(0, len(zs), batch_size):
        session.predictor.features([int(z) for z in zs[b:b + batch_size]])
    return session


def start_slice(session: InteractiveSession, z: int, prompts: SlicePrompts) -> InteractiveResult:
    """The start of slice z: segment(z) without a prompt, else add_prompts(z, prompts, use_mask=False) on a
    cleared slice (no earlier prompt and no previous mask reach it)."""
    if prompts.is_empty:
        return session.segment(z)
    if session.prompts(z):
        session.clear(z)
    return session.add_prompts(z, prompts, use_mask=False)


def add_click(session: InteractiveSession, z: int, click: Click, feed_mask: bool = True) -> InteractiveResult:
    """One click joins slice z's prompts; feed_mask: the slice's previous logits come back as the mask prompt."""
    if feed_mask:
        return session.add_point(z, click.x, click.y, click.cls, click.positive)
    return session.add_prompts(z, click_prompts([click]), use_mask=False)


def undo_to(session: InteractiveSession, z: int, labels: np.ndarray, logits: Any) -> None:
    """Undo slice z's last action and check that it gives back exactly this state (a trial's start)."""
    res = session.undo(z)
    if not res.changed or not np.array_equal(res.labels, labels) or not torch.equal(res.logits, logits):
        raise RuntimeError(f"undo did not restore slice {z}'s start")
