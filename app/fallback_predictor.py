"""A minimal per-volume predictor used only when usam.predictor is not importable.

Same interface as usam.predictor.VolumePredictor (predict -> SliceResult-like, encoder_calls),
so the app keeps working during development and on stripped-down installs. It caches the
encoder features of each visited slice; the decoder runs per click.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FallbackResult:
    """labels uint8 (h, w), probs float32 (3, h, w), timings in ms, whether features were cached."""

    labels: np.ndarray
    probs: np.ndarray
    encoder_ms: float
    decoder_ms: float
    cached: bool


class FallbackPredictor:
    """Encoder features cached per slice; decoder per prompt set."""

    def __init__(self, model: Any, volume: Any, metadata: dict, device: str | None = None, max_slices: int = 256):
        self.model, self.volume, self.metadata = model, volume, metadata
        self.device = device or "cpu"
        pre = (metadata or {}).get("preprocessing") or {}
        self.window = tuple(pre.get("window") or (-150.0, 250.0))
        self.max_slices = max_slices
        self._cache: dict[int, Any] = {}
        self.encoder_calls = 0

    def _features(self, z: int) -> tuple[Any, float, bool]:
        import torch

        from usam.preprocess import preprocess_slices

        if z in self._cache:
            return self._cache[z], 0.0, True
        t0 = time.perf_counter()
        x = preprocess_slices(np.asarray(self.volume.array[z]), self.window).to(self.device)
        with torch.inference_mode():
            f = self.model.encode(x)
        self.encoder_calls += 1
        if len(self._cache) >= self.max_slices:
            self._cache.pop(next(iter(self._cache)))
        self._cache[z] = f
        return f, (time.perf_counter() - t0) * 1000.0, False

    def predict(self, z: int, prompts: Any = None) -> FallbackResult:
        """Labels of slice z for the prompts (None: no prompt)."""
        import torch

        from usam.preprocess import logits_to_labels

        feats, enc_ms, cached = self._features(int(z))
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model.decode(feats, [prompts])
        labels, probs = logits_to_labels(logits, tuple(np.asarray(self.volume.array[z]).shape))
        return FallbackResult(labels[0], probs[0], enc_ms, (time.perf_counter() - t0) * 1000.0, cached)
