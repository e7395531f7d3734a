"""What one read may cost (VolumeLimits) and the checks of header sizes, dtype and geometry against it.

Every check here runs on header information alone, before a single voxel is allocated."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from usam.errors import VolumeError
from usam.volumes.messages import mib

# Library defaults: for the operator's own files (CLI, training data, the study cohort). The app
# reads visitors' uploads under its much smaller AppLimits (app/settings.py, README "Limits").
MAX_FILE_BYTES = 1 << 30          # 1 GiB on disk, checked before reading
MAX_UNZIPPED_BYTES = 2 << 30      # sum of uncompressed zip members (zip bombs)
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_RATIO = 200               # per-member uncompressed / compressed size
MAX_ZIP_TOTAL_RATIO = 100         # whole archive: uncompressed / zip file size
MAX_VOXELS = 1 << 29              # 537 M voxels
MAX_DECODE_BYTES = 4 << 30        # what a read may allocate: the file's dtype + float32, per voxel
MAX_AXIS = 4096
MIN_INPLANE = 8                   # smaller axial slices are not a CT volume
SPACING_RANGE_MM = (0.01, 50.0)
READ_CHUNK = 1 << 20             # files and zip members are streamed in pieces of this size


@dataclass(frozen=True)
class VolumeLimits:
    """What one read may cost; the app builds one from its start-up configuration."""

    max_file_bytes: int = MAX_FILE_BYTES        # the file itself (a zip: the archive)
    max_voxels: int = MAX_VOXELS                # voxels of the volume
    max_axis: int = MAX_AXIS                    # voxels along any axis
    max_decode_bytes: int = MAX_DECODE_BYTES    # bytes the decoded volume may need while it is read
    max_unzipped_bytes: int = MAX_UNZIPPED_BYTES  # total bytes a zip may extract (also <= max_decode_bytes)
    max_zip_members: int = MAX_ZIP_MEMBERS
    max_zip_ratio: int = MAX_ZIP_RATIO
    max_zip_total_ratio: int = MAX_ZIP_TOTAL_RATIO


DEFAULT_LIMITS = VolumeLimits()


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """(sz, sy, sx) from the column norms of an (x, y, z) affine."""
    sx, sy, sz = (float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return (sz, sy, sx)


def decode_bytes(voxels: int, itemsize: int) -> int:
    """Peak bytes of reading a volume: the file's own array plus the float32 canonical array."""
    return int(voxels) * (int(itemsize) + 4)


def check_size(shape_xyz: tuple[int, ...], itemsize: int, limits: VolumeLimits, name: str = "") -> None:
    """Refuse, from header sizes alone, a volume over the voxel, axis or memory limits."""
    if len(shape_xyz) != 3:
        raise VolumeError(f"expected a 3D volume, got shape {tuple(shape_xyz)}")
    dims = [int(s) for s in shape_xyz]
    if min(dims) < 1:
        raise VolumeError("the volume is empty")
    voxels = math.prod(dims)
    if max(dims) > limits.max_axis or voxels > limits.max_voxels:
        raise VolumeError(f"volume of shape {tuple(dims)} is too large (max {limits.max_axis} per axis, "
                          f"{limits.max_voxels} voxels)")
    need = decode_bytes(voxels, itemsize)
    if need > limits.max_decode_bytes:
        what = f"{name}: a" if name else "A"
        raise VolumeError(f"{what} {' × '.join(map(str, dims))} volume needs about {mib(need)} of memory to open, "
                          f"over this server's limit of {mib(limits.max_decode_bytes)} per volume")


def check_geometry(shape_xyz: tuple[int, ...], affine: np.ndarray, limits: VolumeLimits = DEFAULT_LIMITS,
                   itemsize: int = 4, name: str = "") -> None:
    """Reject sizes and spacings no CT volume has (and sizes over the limits)."""
    check_size(shape_xyz, itemsize, limits, name)
    if sorted(shape_xyz)[1] < MIN_INPLANE:  # any orientation: two axes must span an image
        raise VolumeError(f"a volume of {tuple(shape_xyz)} voxels is too small for a CT volume")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeError("the volume's geometry (affine) is not finite")
    lo, hi = SPACING_RANGE_MM
    for s in spacing_from_affine(affine):
        if not (lo <= s <= hi):
            raise VolumeError(f"voxel spacing {s:g} mm is outside {lo:g}-{hi:g} mm")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError("the volume's geometry (affine) is singular")


def squeeze_to_3d(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Allow 4D/5D files that hold a single volume; reject anything else that is not 3D."""
    if len(shape) < 3:
        raise VolumeError(f"expected a 3D volume, got {len(shape)}D shape {tuple(shape)}")
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise VolumeError(f"expected a single 3D volume, got shape {tuple(shape)} ({int(np.prod(shape[3:]))} volumes)")
    return tuple(shape[:3])


def check_dtype(dtype: np.dtype) -> None:
    """Only real numbers are CT intensities."""
    if np.dtype(dtype).kind not in "iuf" or np.dtype(dtype).fields is not None:
        raise VolumeError(f"voxel type {dtype} is not a real number type")
