"""Label maps out and in: written in the reference file's voxel order and affine, read back checked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from usam.errors import VolumeError
from usam.volumes.limits import VolumeLimits
from usam.volumes.reader import read_volume
from usam.volumes.volume import RAS_FROM_LPS, Volume, to_disk_order


def _check_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Label maps are integer (z, y, x) arrays of the reference's shape with values 0..255."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise VolumeError(f"label map shape {labels.shape} differs from the volume shape {tuple(shape)}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise VolumeError("label map values must be whole numbers")
    elif labels.dtype.kind not in "iub":
        raise VolumeError(f"label map type {labels.dtype} is not an integer type")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise VolumeError("label map values must lie in 0..255")
    return labels.astype(np.uint8)


def write_labelmap(labels: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a uint8 (z, y, x) label map in the reference file's voxel order and affine (.nii[.gz] or .nrrd)."""
    path = Path(path)
    labels = _check_labels(labels, reference.array.shape)
    data = to_disk_order(labels, reference.source)
    affine = np.asarray(reference.source.get("affine_on_disk", reference.affine), dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith(".nrrd"):
        import nrrd

        lps = np.linalg.inv(RAS_FROM_LPS) @ affine
        header = {"type": "unsigned char", "dimension": 3, "space": "left-posterior-superior",
                  "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
                  "kinds": ["domain"] * 3, "encoding": "gzip"}
        nrrd.write(str(path), data, header, index_order="F")
        return path
    if not name.endswith((".nii", ".nii.gz")):
        raise VolumeError(f"label maps are written as .nii, .nii.gz or .nrrd, not {path.name}")
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    src = reference.source
    # keep the input's header geometry (codes and both transforms) so viewers overlay exactly
    if src.get("qform") is not None:
        img.set_qform(np.asarray(src["qform"]), code=int(src.get("qform_code", 1)))
    else:
        img.set_qform(affine, code=1)
    if src.get("sform") is not None:
        img.set_sform(np.asarray(src["sform"]), code=int(src.get("sform_code", 1)))
    else:
        img.set_sform(affine, code=1)
    img.header.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def read_labelmap(path: str | Path, reference: Volume | None = None,
                  limits: VolumeLimits | None = None) -> np.ndarray:
    """Read a label map into canonical (z, y, x) uint8; with a reference, check it overlays exactly."""
    vol = read_volume(path, limits=limits)
    labels = _check_labels(vol.array, vol.array.shape)
    if reference is not None:
        if labels.shape != reference.array.shape:
            raise VolumeError(f"label map shape {labels.shape} differs from the volume shape {reference.array.shape}")
        if not np.allclose(vol.affine, reference.affine, atol=1e-3, rtol=1e-4):
            raise VolumeError("the label map's geometry (affine) does not match the volume's")
    return labels
