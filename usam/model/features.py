"""ImageFeatures: what the encoder computes once per slice and the predictor caches."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageFeatures:
    """Skips f0..f3 (None where the config uses no skip) and the image embedding (B, C, 14, 14).

    skip_parts False: the adapter's raw skips (Usam.encode). True: each up block's prompt-free
    part of its first conv computed from them (usam.model.fast.FastUsam.encode), which only
    that inference model decodes.
    """

    skips: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
    embedding: torch.Tensor
    skip_parts: bool = False

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def _map(self, fn) -> "ImageFeatures":
        return ImageFeatures(tuple(None if s is None else fn(s) for s in self.skips), fn(self.embedding),
                             self.skip_parts)

    def index(self, i: int) -> "ImageFeatures":
        """Item i, keeping a batch dimension of 1."""
        return self._map(lambda t: t[i:i + 1])

    def select(self, indices: list[int] | torch.Tensor) -> "ImageFeatures":
        """The items at these batch positions."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.embedding.device)
        return self._map(lambda t: t.index_select(0, idx))

    @staticmethod
    def cat(items: list["ImageFeatures"]) -> "ImageFeatures":
        """Concatenate along the batch dimension."""
        if len({f.skip_parts for f in items}) > 1:
            raise ValueError("cannot concatenate raw skips with prompt-free skip parts")
        skips = tuple(None if items[0].skips[k] is None else torch.cat([f.skips[k] for f in items])
                      for k in range(4))
        return ImageFeatures(skips, torch.cat([f.embedding for f in items]), items[0].skip_parts)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ImageFeatures":
        """Move (and optionally cast) every tensor."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def clone(self) -> "ImageFeatures":
        """Own-storage copy (an .index() view would keep its whole batch alive in a cache)."""
        return self._map(lambda t: t.clone())

    def detach(self) -> "ImageFeatures":
        """Detached copy (for caching)."""
        return self._map(lambda t: t.detach())

    def nbytes(self) -> int:
        """Bytes held by all tensors."""
        ts = [s for s in self.skips if s is not None] + [self.embedding]
        return sum(t.numel() * t.element_size() for t in ts)
