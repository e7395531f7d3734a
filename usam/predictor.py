"""The one inference path (encode_images, predict_logits) and the per-volume prediction session.

Every caller that runs the network (VolumePredictor, usam evaluate, usam train's validation,
the benchmarks) encodes with encode_images and decodes with predict_logits, so a change of the
decoder's inputs is made here once. The model is a Usam (the reference path) or the inference
model built once where the model is loaded (usam.model.fast.optimize_for_inference).
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from usam.errors import PromptError, UsamError
from usam.model import ImageFeatures, Usam
from usam.model.fast import FastUsam
from usam.preprocess import DEFAULT_WINDOW, logits_to_labels, preprocess_slices
from usam.prompt_rules import apply_prompt_rules, parse_rules
from usam.prompts import Prompts, SlicePrompts, to_model_frame

DEFAULT_CACHE_BYTES = 512 * 2**20
InferenceModel = Union[Usam, FastUsam]
MaskLogits = Union[torch.Tensor, Sequence[Union[torch.Tensor, None]], None]
NO_RULES = (False, False, False)


def _model_device(model: InferenceModel) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device, amp: bool | None):
    """bf16 autocast where asked (amp None: on CUDA only, where it is the measured default)."""
    if amp is None:
        amp = device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def encode_images(model: InferenceModel, images: torch.Tensor, amp: bool | None = None) -> ImageFeatures:
    """(B, 3, 224, 224) model input -> float32 ImageFeatures on the model's device, without gradients."""
    device = _model_device(model)
    with torch.inference_mode(), _autocast(device, amp):
        feats = model.encode(images.to(device))
    return feats.to(dtype=torch.float32)


def predict_logits(model: InferenceModel, features: ImageFeatures, prompts: Sequence[Prompts | None] | None = None,
                   rules: tuple[bool, bool, bool] | str = NO_RULES, amp: bool | None = None,
                   **inputs: Any) -> torch.Tensor:
    """The one decode: features + one model-frame Prompts (or None) per image -> float32 logits (B, K, 224, 224).

    `rules` (usam.prompt_rules: parse_rules' tuple or its text) constrain the logits to what the
    prompts state; off unless asked for. amp: bf16 autocast (None: on CUDA). `inputs`: further
    per-call inputs of Usam.decode, passed to either model unchanged.
    """
    if isinstance(rules, str):
        rules = parse_rules(rules)
    plist = [None] * len(features) if prompts is None else list(prompts)
    with torch.inference_mode(), _autocast(features.embedding.device, amp):
        logits = model.decode(features, plist, **inputs).float()
    if any(rules):
        logits = apply_prompt_rules(logits, plist, *rules)
    return logits


@dataclass
class SliceResult:
    """One slice's prediction at the slice's own resolution."""

    labels: np.ndarray    # uint8 (h, w), 0/1/2
    probs: np.ndarray     # float32 (3, h, w)
    encoder_ms: float     # 0 when the features came from the cache
    decoder_ms: float     # prompt encoder + mask decoder + resize to the slice
    cached: bool
    logits: torch.Tensor | None = None  # float32 (K, 224, 224) model-frame logits: the next call's mask_logits


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


class VolumePredictor:
    """U-SAM over one volume. predict(z, prompts) re-runs only the prompt encoder and decoder once
    slice z's features are cached; encoder_calls counts slices run through the encoder.

    `model` is used as given and never changed: the inference model that
    usam.model.fast.optimize_for_inference built once where the model was loaded (the fast
    path: same logits up to fp32 rounding, smaller cached features), or a Usam in eval mode (the
    reference path). Prompts are SlicePrompts in slice pixels (x = column, y = row), converted
    to the model frame here; model-frame Prompts (e.g. from usam.prompts.box_from_mask) pass.

    prompt_rules (usam.prompt_rules; default none = the network's own output): post-processing,
    named when asked for: "box" confines the foreground to a box, "gate" keeps the classes clicked,
    "select" keeps a clicked class's regions that were clicked; "all" = the three.
    """

    def __init__(self, model: InferenceModel, volume: Any, metadata: dict | None = None,
                 device: str | torch.device | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 prompt_rules: str = "none") -> None:
        self.volume = volume
        self.metadata = dict(metadata or {})
        if not isinstance(model, (Usam, FastUsam)):
            raise UsamError(f"VolumePredictor needs a Usam or FastUsam model, not {type(model).__name__}")
        here = _model_device(model)
        self.device = here if device is None else torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        if here != self.device:
            raise UsamError(f"the model is on {here}, not on {self.device}: move it where it is loaded")
        if model.training:
            raise UsamError("the model is in training mode: call model.eval() where it is loaded")
        self.model = model
        pre = self.metadata.get("preprocessing") or {}
        self.window = tuple(float(v) for v in (pre.get("window") or DEFAULT_WINDOW))
        self.cache = FeatureCache(cache_bytes)
        self._rules = parse_rules(prompt_rules)
        self.encoder_calls = 0
        self._lock = threading.RLock()  # one session may be driven from several UI threads

    def set_rules(self, prompt_rules: str) -> None:
        """Prompt rules for the next predictions (usam.prompt_rules names; 'none' = the network alone)."""
        self._rules = parse_rules(prompt_rules)

    @property
    def num_slices(self) -> int:
        """Number of axial slices."""
        return int(self.volume.array.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(h, w) of a slice."""
        return tuple(int(s) for s in self.volume.array.shape[1:])  # type: ignore[return-value]

    def _check_z(self, z: int) -> int:
        z = int(z)
        if not 0 <= z < self.num_slices:
            raise PromptError(f"slice {z} is outside the volume (0..{self.num_slices - 1})")
        return z

    def _encode(self, zs: list[int]) -> ImageFeatures:
        """Run the encoder on these slices, cache and return their features (float32)."""
        x = preprocess_slices(np.asarray(self.volume.array[zs], dtype=np.float32), self.window)
        feats = encode_images(self.model, x)
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

    def _decode(self, feats: ImageFeatures, prompts: list[Prompts | None],
                mask_logits: MaskLogits = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Model-frame logits, labels and probabilities at the slice's size."""
        inputs = {} if mask_logits is None else {"mask_logits": mask_logits}  # None: exactly the maskless call
        logits = predict_logits(self.model, feats, prompts, self._rules, **inputs)
        return (logits, *logits_to_labels(logits, self.slice_shape))

    def model_prompts(self, prompts: SlicePrompts | Prompts | None) -> Prompts | None:
        """Prompts of one slice in the model frame: SlicePrompts converted (usam.prompts), Prompts validated."""
        return to_model_frame(prompts, self.slice_shape)

    def predict(self, z: int, prompts: SlicePrompts | Prompts | None = None,
                mask_logits: torch.Tensor | None = None) -> SliceResult:
        """Label map and class probabilities of slice z for these prompts (slice pixels, or model-frame Prompts).

        mask_logits: the slice's previous model-frame logits (K, 224, 224) (a SliceResult's
        `logits`), fed to the decoder as the dense mask prompt; None: no previous mask."""
        return self.predict_batch([z], [prompts], [mask_logits])[0]

    def predict_batch(self, zs: Sequence[int], prompts: Sequence[SlicePrompts | Prompts | None] | None = None,
                      mask_logits: Sequence[torch.Tensor | None] | None = None) -> list[SliceResult]:
        """predict() of several slices in one encoder batch (missing features) and one decode call.

        encoder_ms and decoder_ms are the batch's, on every result."""
        zs = [self._check_z(z) for z in zs]
        plist = [None] * len(zs) if prompts is None else [self.model_prompts(p) for p in prompts]
        masks = None if mask_logits is None or all(m is None for m in mask_logits) else list(mask_logits)
        if len(plist) != len(zs) or (masks is not None and len(masks) != len(zs)):
            raise PromptError(f"{len(zs)} slices but {len(plist)} prompt sets / "
                              f"{len(zs) if masks is None else len(masks)} previous masks")
        with self._lock:
            t0 = time.perf_counter()
            feats, missing = self.features(zs)
            t1 = time.perf_counter()
            logits, labels, probs = self._decode(feats, plist, masks)
            t2 = time.perf_counter()
        enc = (t1 - t0) * 1000.0 if missing else 0.0
        # own storage per slice: a kept result must not hold its whole batch alive
        own = (lambda i: logits[0]) if len(zs) == 1 else (lambda i: logits[i].clone())
        return [SliceResult(labels[i], probs[i], enc, (t2 - t1) * 1000.0, cached=z not in missing, logits=own(i))
                for i, z in enumerate(zs)]

    def predict_volume(self, z_range: tuple[int, int] | range | None = None,
                       prompt_fn: Callable[[int], SlicePrompts | Prompts | None] | None = None, batch_size: int = 8,
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
            prompts = [self.model_prompts(prompt_fn(z)) if prompt_fn else None for z in batch]
            with self._lock:
                feats, _ = self.features(batch)
                _, labels, _ = self._decode(feats, prompts)
            out[batch] = labels
            if progress is not None:
                progress(min(start + batch_size, len(zs)), len(zs))
        return out
