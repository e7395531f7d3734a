"""SimpleITK reading shared by NRRD and DICOM: size checked from the header, then pixels into a Volume."""
from __future__ import annotations

import math
import re

import numpy as np

from usam.errors import VolumeError
from usam.volumes.limits import VolumeLimits, check_dtype, check_geometry, squeeze_to_3d
from usam.volumes.messages import scrub
from usam.volumes.volume import RAS_FROM_LPS, Volume, build_volume


def _sitk_affine(img) -> np.ndarray:
    """RAS affine of a SimpleITK image's (i, j, k) index (ITK geometry is LPS)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = img.GetOrigin()
    return RAS_FROM_LPS @ lps


def _probe_affine(reader) -> np.ndarray:
    """Affine from a reader's header information (no pixel data read)."""
    direction = np.asarray(reader.GetDirection(), dtype=np.float64)
    n = int(round(math.sqrt(direction.size)))
    direction = direction.reshape(n, n)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(reader.GetSpacing(), dtype=np.float64)[None, :3]
    lps[:3, 3] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    return RAS_FROM_LPS @ lps


def sitk_itemsize(reader) -> int:
    """Bytes per voxel of the pixel type a reader reports (8 when unknown: the worst case)."""
    import SimpleITK as sitk

    text = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if "complex" in text or "vector" in text or "label" in text:
        raise VolumeError(f"voxel type {text} is not a real number type")
    m = re.search(r"(\d+)-bit", text)
    return int(m.group(1)) // 8 if m else 8


def sitk_message(exc: Exception) -> str:
    """The last line of an ITK exception, without server paths."""
    text = str(exc).strip()
    return scrub(text.splitlines()[-1]) if text else "unknown error"


def sitk_to_volume(reader, name: str, fmt: str, limits: VolumeLimits, checked: bool = False) -> Volume:
    """Check size from the header, then read pixels of an ImageFileReader / ImageSeriesReader."""
    import SimpleITK as sitk

    try:
        if isinstance(reader, sitk.ImageFileReader):
            reader.ReadImageInformation()
            size = tuple(reader.GetSize())
            ncomp = reader.GetNumberOfComponents()
            if ncomp != 1:
                raise VolumeError(f"{name} has {ncomp} components per voxel; expected a scalar CT volume")
            itemsize = sitk_itemsize(reader)
            if len(size) > 3:
                size = squeeze_to_3d(size)
            if len(size) != 3:
                raise VolumeError(f"expected a 3D volume, got a {len(size)}D image of size {size}")
            check_geometry(size, _probe_affine(reader), limits, itemsize, name)  # before any pixel is read
        elif not checked:
            raise VolumeError(f"{name}: the series size was not checked")   # a programming error, refused
        img = reader.Execute()
    except VolumeError:
        raise
    except RuntimeError as exc:
        raise VolumeError(f"cannot read {fmt} {name}: {sitk_message(exc)}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{name} is not a scalar CT volume")
    if img.GetDimension() == 4:
        if img.GetSize()[3] != 1:
            raise VolumeError(f"expected a single 3D volume, got size {img.GetSize()}")
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise VolumeError(f"expected a 3D volume, got a {img.GetDimension()}D image of size {img.GetSize()}")
    pixel_id = img.GetPixelIDTypeAsString()
    if "complex" in pixel_id or "vector" in pixel_id or "label" in pixel_id:
        raise VolumeError(f"voxel type {pixel_id} is not a real number type")
    affine = _sitk_affine(img)
    view_zyx = sitk.GetArrayViewFromImage(img)            # no copy: ITK's buffer
    check_geometry(tuple(img.GetSize()), affine, limits, view_zyx.dtype.itemsize, name)
    check_dtype(view_zyx.dtype)
    vol = build_volume(view_zyx.transpose(2, 1, 0), affine, {"format": fmt, "name": name})
    del view_zyx, img
    return vol
