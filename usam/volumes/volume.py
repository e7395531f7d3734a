"""The Volume (canonical LPS+ array and its geometry), its orientation to and from disk order, its hash.

Canonical orientation of ``Volume.array`` (z, y, x) = LPS+ voxel order: x index grows towards
patient Left (column 0 = patient right, radiological display), y index towards Posterior
(row 0 = anterior) and z index towards Superior, so ``array[z]`` is an axial slice ready to
display as is. ``Volume.affine`` maps the canonical voxel index (x, y, z) to RAS world mm
(nibabel convention). ``Volume.source`` keeps what write_labelmap needs to write a label map
in the file's own voxel order with its original affine, and nothing identifying.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from usam.errors import VolumeError
from usam.volumes.limits import spacing_from_affine

_CANON_AXCODES = ("L", "P", "S")
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])   # ITK / DICOM / NRRD geometry is LPS, nibabel's RAS


@dataclass
class Volume:
    """A CT volume in canonical LPS+ voxel order with its geometry."""

    array: np.ndarray                      # float32 HU, (z, y, x)
    spacing: tuple[float, float, float]    # (sz, sy, sx) mm
    affine: np.ndarray                     # 4x4: canonical voxel (x, y, z) -> RAS world mm
    source: dict = field(default_factory=dict)  # format, name, shape_on_disk, ornt_to_disk, ...; no PHI

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]


def canonical_affine(spacing: tuple[float, float, float], origin_ras=(0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of an axis-aligned canonical (LPS+) array with spacing (sz, sy, sx)."""
    sz, sy, sx = spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = origin_ras
    return aff


def _orientation(shape_xyz: tuple[int, ...], affine_disk: np.ndarray):
    """(to_canon, canonical affine, ornt_to_disk) of a disk-order (i, j, k) grid."""
    import nibabel.orientations as nio

    disk_ornt = nio.io_orientation(affine_disk)
    canon_ornt = nio.axcodes2ornt(_CANON_AXCODES)
    to_canon = nio.ornt_transform(disk_ornt, canon_ornt)
    affine = affine_disk @ nio.inv_ornt_aff(to_canon, shape_xyz)
    to_disk = nio.ornt_transform(canon_ornt, disk_ornt)
    return to_canon, affine, to_disk.tolist()


def to_disk_order(array_zyx: np.ndarray, source: dict) -> np.ndarray:
    """Inverse of build_volume's reorientation: canonical (z, y, x) array -> the file's (i, j, k) order."""
    import nibabel.orientations as nio

    data = np.asarray(array_zyx).transpose(2, 1, 0)
    ornt = source.get("ornt_to_disk")
    if ornt is not None:
        data = nio.apply_orientation(data, np.asarray(ornt, dtype=np.float64))
    return np.ascontiguousarray(data)


def build_volume(data_xyz: np.ndarray, affine_disk: np.ndarray, source: dict,
                 slope: float | None = None, inter: float | None = None) -> Volume:
    """Validate values, canonicalize and build the Volume.

    The file's array (any real dtype, disk order, possibly a view) is converted slice by slice
    into the one float32 canonical array that is kept: no full-size temporaries."""
    import nibabel.orientations as nio

    if data_xyz.size == 0:
        raise VolumeError("the volume is empty")
    to_canon, affine, to_disk = _orientation(data_xyz.shape, affine_disk)
    view = nio.apply_orientation(data_xyz, to_canon).transpose(2, 1, 0)   # canonical (z, y, x), a view
    out = np.empty(view.shape, dtype=np.float32)
    scale = slope is not None and (slope != 1 or (inter or 0) != 0)
    with np.errstate(over="ignore", invalid="ignore"):
        for z in range(view.shape[0]):
            sl = out[z]
            sl[...] = view[z]
            if scale:
                sl *= np.float32(slope)
                sl += np.float32(inter or 0.0)
            if not np.isfinite(sl).all():
                raise VolumeError("the volume contains NaN or infinite values")
    source = dict(source, shape_on_disk=[int(s) for s in data_xyz.shape], ornt_to_disk=to_disk,
                  affine_on_disk=np.asarray(affine_disk, dtype=float).tolist())
    return Volume(array=out, spacing=spacing_from_affine(affine), affine=affine, source=source)


def volume_hash(volume: Volume) -> str:
    """sha256 of the canonical array bytes and the spacing (identifies a volume across sessions)."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(volume.array, dtype=np.float32)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(repr(tuple(round(float(s), 6) for s in volume.spacing)).encode())
    return h.hexdigest()
