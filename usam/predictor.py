"""Per-volume prediction session: slice features computed once and cached, prompts decoded in ms."""
from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from usam.errors import PromptError
from usam.model import ImageFeatures, Usam
from usam.model.fast import is_optimized, optimize_for_inference
from usam.preprocess import DEFAULT_WINDOW, logits_to_labels, preprocess_slices
from usam.prompt_rules import apply_prompt_rules, parse_rules
from usam.prompts import Prompts

DEFAULT_CACHE_BYTES = 512 * 2**20


@dataclass
class SliceResult:
    """One slice's prediction at the slice's own resolution."""

    labels: np.ndarray    # uint8 (h, w), 0/1/2
    probs: np.ndarray     # float32 (3, h, w)
    encoder_ms: float     # 0 when the features came from the cache
    decoder_ms: float     # prompt encoder + mask decoder + resize to the slice
    cached: bool


class FeatureCache:
    """LRU cache of per-slice ImageFeatures bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[int, ImageFeatures] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, z: int) -> bool:
        return z in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, z: int) -> ImageFeatures | None:
        """The features of slice z (marking them recently used), or None."""
        f = self._items.get(z)
        if f is not None:
            self._items.move_to_end(z)
        return f

    def put(self, z: int, features: ImageFeatures) -> None:
        """Store; evict least recently used slices beyond the byte cap (an item over the cap is not kept)."""
        if z in self._items:
            self.nbytes -= self._items.pop(z).nbytes()
        size = features.nbytes()
        if size > self.max_bytes:
            return
        self._items[z] = features
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes()

    def clear(self) -> None:
        """Drop everything."""
        self._items.clear()
        self.nbytes = 0


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VolumePredictor:
    """U-SAM over one volume. predict(z, prompts) re-runs only the prompt encoder and decoder once
    slice z's features are cached; encoder_calls counts slices run through the encoder.

    fast=True (default) applies usam.model.fast.optimize_for_inference to the model IN PLACE
    (idempotent; a model shared by several predictors is optimised once): same weights and the
    same logits up to fp32 rounding (tests/usam/test_fast.py), smaller cached features, and on
    CUDA bf16 autocast. fast=False keeps the model's own forwards (the reference path); a model
    that is already optimised stays optimised.

    prompt_rules (usam.prompt_rules; default all): a box confines the foreground, the classes
    clicked are the classes drawn on that slice, a clicked class keeps the regions clicked.
    "none" gives the network's own output.
    """

    def __init__(self, model: Usam, volume: Any, metadata: dict | None = None, device: str | torch.device | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, fast: bool = True, prompt_rules: str = "all") -> None:
        self.volume = volume
        self.metadata = dict(metadata or {})
        self.device = torch.device(device) if device is not None else default_device()
        on_device = next(model.parameters()).device == self.device
        if fast and not (is_optimized(model) and on_device):  # keep options someone chose before
            optimize_for_inference(model, self.device)  # also eval() and .to(device)
        else:
            param = next(model.parameters())
            if param.device != self.device:
                model = model.to(self.device)
            model.eval()
        self.model = model
        pre = self.metadata.get("preprocessing") or {}
        self.window = tuple(float(v) for v in (pre.get("window") or DEFAULT_WINDOW))
        self.cache = FeatureCache(cache_bytes)
        self._rules = parse_rules(prompt_rules)
        self.encoder_calls = 0
        self._lock = threading.RLock()  # one session may be driven from several UI threads

    @property
    def num_slices(self) -> int:
        """Number of axial slices."""
        return int(self.volume.array.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(h, w) of a slice."""
        return tuple(int(s) for s in self.volume.array.shape[1:])  # type: ignore[return-value]

    def _autocast(self):
        if self.device.type == "cuda" and not is_optimized(self.model):  # the fast path autocasts itself
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_z(self, z: int) -> int:
        z = int(z)
        if not 0 <= z < self.num_slices:
            raise PromptError(f"slice {z} is outside the volume (0..{self.num_slices - 1})")
        return z

    def _encode(self, zs: list[int]) -> ImageFeatures:
        """Run the encoder on these slices, cache and return their features (float32)."""
        x = preprocess_slices(np.asarray(self.volume.array[zs], dtype=np.float32), self.window).to(self.device)
        with torch.inference_mode(), self._autocast():
            feats = self.model.encode(x)
        feats = feats.to(dtype=torch.float32)
        self.encoder_calls += len(zs)
        for i, z in enumerate(zs):
            self.cache.put(z, feats.index(i).clone())
        return feats

    def features(self, zs: list[int]) -> tuple[ImageFeatures, list[int]]:
        """Features for these slices (cached ones reused); returns them and the slices newly encoded."""
        with self._lock:
            missing = sorted({z for z in zs if z not in self.cache})
            fresh = self._encode(missing) if missing else None
            parts = []
            for z in zs:
                f = self.cache.get(z)
                if f is None:  # cache too small to hold it: take it from this batch
                    f = fresh.index(missing.index(z))
                parts.append(f)
            return (parts[0] if len(parts) == 1 else ImageFeatures.cat(parts)), missing

    def _decode(self, feats: ImageFeatures, prompts: list[Prompts | None]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), self._autocast():
            logits = self.model.decode(feats, prompts).float()
        if any(self._rules):
            logits = apply_prompt_rules(logits, list(prompts), *self._rules)
        return logits_to_labels(logits, self.slice_shape)

    def predict(self, z: int, prompts: Prompts | None = None) -> SliceResult:
        """Label map and class probabilities of slice z for these prompts (224-frame coordinates)."""
        z = self._check_z(z)
        if prompts is not None:
            prompts.validate()
        with self._lock:
            t0 = time.perf_counter()
            feats, missing = self.features([z])
            t1 = time.perf_counter()
            labels, probs = self._decode(feats, [prompts])
            t2 = time.perf_counter()
        return SliceResult(labels[0], probs[0], (t1 - t0) * 1000.0 if missing else 0.0,
                           (t2 - t1) * 1000.0, cached=not missing)

    def predict_volume(self, z_range: tuple[int, int] | range | None = None,
                       prompt_fn: Callable[[int], Prompts | None] | None = None, batch_size: int = 8,
                       progress: Callable[[int, int], Any] | None = None) -> np.ndarray:
        """Label map (z, y, x) uint8 of the whole volume; slices outside z_range (start, stop) stay 0.

        prompt_fn(z) gives each slice's prompts (None: no prompt); progress(done, total) after each batch.
        """
        n = self.num_slices
        zs = list(range(n)) if z_range is None else list(range(*z_range)) if isinstance(z_range, tuple) else list(z_range)
        if zs and (min(zs) < 0 or max(zs) >= n):
            raise PromptError(f"slice range {zs[0]}..{zs[-1]} is outside the volume (0..{n - 1})")
        if batch_size < 1:
            raise PromptError("batch_size must be at least 1")
        out = np.zeros((n,) + self.slice_shape, dtype=np.uint8)
        for start in range(0, len(zs), batch_size):
            batch = zs[start:start + batch_size]
            prompts = [prompt_fn(z) if prompt_fn else None for z in batch]
            for p in prompts:
                if p is not None:
                    p.validate()
            with self._lock:
                feats, _ = self.features(batch)
                labels, _ = self._decode(feats, prompts)
            out[batch] = labels
            if progress is not None:
                progress(min(start + batch_size, len(zs)), len(zs))
        return out
