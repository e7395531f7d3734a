"""Opening a volume in a session: the demo cases, the memory budgets, a fresh Session with its InteractiveSession."""
from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from typing import Any, Iterator

import numpy as np

from app.context import AppContext
from app.settings import SESSION_BYTES_PER_VOXEL
from app.segment.session import Session
from usam.errors import VolumeError

DEMO_CASES = ("Demo phantom 1", "Demo phantom 2", "Demo phantom 3")


@functools.lru_cache(maxsize=4)
def demo_case(index: int, size: str) -> Any:
    """A demo phantom case (usam.phantom.demo_case), generated once per process and shared read-only."""
    import dataclasses

    from usam import phantom

    # the app never shows the anatomy map: not kept in the cache (a quarter of a full case's bytes)
    return dataclasses.replace(phantom.demo_case(index, size), anatomy=None)


def check_session_memory(ctx: AppContext, shape: tuple[int, ...]) -> None:
    """Refuse a volume whose session (volume, label map, reference) would exceed the memory budget."""
    lim = ctx.config.limits
    need = int(np.prod(shape)) * SESSION_BYTES_PER_VOXEL
    if need > lim.session_memory_bytes:
        raise VolumeError(f"a {' × '.join(map(str, shape[::-1]))} volume needs about {need >> 20} MiB per session, "
                          f"over this server's limit of {lim.session_memory_mb} MiB")


# every session of this process, for the process-wide memory budget (AppLimits.total_memory_mb)
_LIVE: "weakref.WeakValueDictionary[int, Session]" = weakref.WeakValueDictionary()   # id -> session
_MEMORY_LOCK = threading.Lock()
_RESERVED = [0]          # bytes granted to reads in progress


def live_session_bytes() -> int:
    """Bytes held by the open sessions of this process (closed ones count 0)."""
    return sum(s.held_bytes() for s in list(_LIVE.values()))


@contextlib.contextmanager
def memory_grant(ctx: AppContext) -> Iterator[int]:
    """Bytes one upload may use: the session budget, or less when the open sessions hold most of
    the process budget; refused when too little is left (other visitors' volumes are not evicted)."""
    lim = ctx.config.limits
    with _MEMORY_LOCK:
        free = (int(lim.total_memory_mb) << 20) - live_session_bytes() - _RESERVED[0]
        grant = min(lim.session_memory_bytes, free)
        if grant < min(64 << 20, lim.session_memory_bytes):
            raise VolumeError("the server holds too many volumes right now: try again in a few minutes")
        _RESERVED[0] += grant
    try:
        yield grant
    finally:
        with _MEMORY_LOCK:
            _RESERVED[0] -= grant


def start_session(ctx: AppContext, volume: Any, name: str, ground_truth: np.ndarray | None = None,
                  is_upload: bool = False) -> Session:
    """A fresh session on a volume: a new InteractiveSession (empty label map, the network alone, the
    server's prompt and undo limits), viewer on the middle slice (on the rectum for a demo case)."""
    from usam.volumes import volume_hash

    arr = np.asarray(volume.array)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise VolumeError(f"expected a 3-D volume, got shape {arr.shape}")
    check_session_memory(ctx, arr.shape)
    lim = ctx.config.limits
    inter = ctx.new_session(volume, rules="none", max_points_per_slice=lim.max_points_per_slice,
                            max_history=lim.max_history, max_history_mb=lim.max_history_mb)
    s = Session(volume=volume, volume_hash=volume_hash(volume), name=name, interactive=inter, is_upload=is_upload)
    if ground_truth is not None:
        s.ground_truth = np.asarray(ground_truth, dtype=np.uint8)
        s.reference, s.reference_name = s.ground_truth, "phantom ground truth"
        fg = np.flatnonzero(s.ground_truth.any(axis=(1, 2)))
        s.z = int(fg[len(fg) // 2]) if fg.size else arr.shape[0] // 2  # open where the rectum is
    else:
        s.z = arr.shape[0] // 2
    s.cross_xy = (arr.shape[2] // 2, arr.shape[1] // 2)
    s.note({"op": "load", "volume_hash": s.volume_hash})
    _LIVE[id(s)] = s
    return s


def load_demo(ctx: AppContext, name_or_index: str | int = 0) -> Session:
    """Session on a demo phantom (by index or by its name in DEMO_CASES)."""
    if isinstance(name_or_index, str) and name_or_index not in DEMO_CASES:
        raise VolumeError(f"unknown demo case {name_or_index[:40]!r}; choose from {list(DEMO_CASES)}")
    index = DEMO_CASES.index(name_or_index) if isinstance(name_or_index, str) else int(name_or_index)
    if not 0 <= index < len(DEMO_CASES):
        raise VolumeError(f"there are {len(DEMO_CASES)} demo cases")
    case = demo_case(index, ctx.config.demo_size)
    return start_session(ctx, case.volume, DEMO_CASES[index], case.labels)
