"""USAM_SPEC's training augmentation and the dataset that applies it to cached 224 slices.

One seeded draw per sample picks rot90 + flip (probability p_rot90), else a rotation in
[-max_degrees, max_degrees] (probability p_rotate), else nothing. rot90 + flip run as MONAI
dictionary transforms (Rotate90d, Flipd), bit-identical to the hand-written torch.rot90 /
torch.flip they replace (tests/usam/test_data.py). The rotation stays on our own affine grid:
MONAI's Rotated, with the opposite sign convention, agrees to about 1e-4 of the image's range
but not bit for bit, and moves a few nearest-neighbour label pixels at ties; keeping ours keeps
the demo model reproducible bit for bit from the README command.
"""
from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from usam.data import SliceSet

KEYS = ("image", "label")


def rotate_pair(image: torch.Tensor, label: torch.Tensor, degrees: float, fill: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate (H, W) image (bilinear) and label (nearest) about the centre; outside = fill / 0."""
    theta_rad = math.radians(degrees)
    c, s = math.cos(theta_rad), math.sin(theta_rad)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32)[None]
    h, w = image.shape
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    # grid_sample pads with zeros: shift so that the padding equals `fill`
    img = F.grid_sample((image.float() - fill)[None, None], grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)[0, 0] + fill
    lab = F.grid_sample(label.float()[None, None], grid, mode="nearest",
                        padding_mode="zeros", align_corners=False)[0, 0]
    return img.to(image.dtype), lab.round().to(label.dtype)


@functools.lru_cache(maxsize=8)
def _rot90_flip(k: int, axis: int):
    from monai.transforms import Compose, Flipd, Rotate90d  # here: importing MONAI takes seconds

    return Compose([Rotate90d(keys=KEYS, k=k, spatial_axes=(0, 1)), Flipd(keys=KEYS, spatial_axis=axis)])


@contextlib.contextmanager
def _plain_tensors():
    """MONAI without MetaTensors for the duration (their bookkeeping costs 3 ms a sample, and the
    DataLoader wants plain tensors); the global flag is put back afterwards."""
    from monai.data import get_track_meta, set_track_meta

    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


def rot90_flip_pair(image: torch.Tensor, label: torch.Tensor, k: int, axis: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """k quarter turns in the (row, column) plane, then a flip of `axis` (0 rows, 1 columns),
    of an (H, W) image and its label alike (MONAI dictionary transforms)."""
    with _plain_tensors():
        out = _rot90_flip(k, axis)({"image": image[None], "label": label[None]})  # channel first, as MONAI wants
    return out["image"][0].contiguous(), out["label"][0].contiguous()


def augment_pair(image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator,
                 p_rot90: float = 0.5, p_rotate: float = 0.5, max_degrees: float = 20.0,
                 fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """USAM_SPEC augmentation: with p_rot90 a random rot90 + flip, else with p_rotate a
    rotation in [-max_degrees, max_degrees] (bilinear image, nearest label)."""
    # the order of the draws is part of the recipe: the same seed gives the same sample
    if rng.random() < p_rot90:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        return rot90_flip_pair(image, label, k, axis)
    if rng.random() < p_rotate:
        return rotate_pair(image, label, float(rng.uniform(-max_degrees, max_degrees)), fill)
    return image, label


class TrainSlices(torch.utils.data.Dataset):
    """Cached slices with reproducible augmentation: the rng of item i in epoch e is seeded by
    (seed, e, i), so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, slices: SliceSet, augment: bool = True, seed: int = 202307,
                 p_rot90: float = 0.5, p_rotate: float = 0.5, max_degrees: float = 20.0,
                 fill: float = 0.0) -> None:
        self.slices, self.augment, self.seed = slices, augment, seed
        self.p_rot90, self.p_rotate, self.max_degrees, self.fill = p_rot90, p_rotate, max_degrees, fill
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of an epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.slices.images[i].float()
        label = self.slices.labels[i]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            image, label = augment_pair(image, label, rng, self.p_rot90, self.p_rotate,
                                        self.max_degrees, self.fill)
        return image[None].expand(3, -1, -1).contiguous(), label.long()
