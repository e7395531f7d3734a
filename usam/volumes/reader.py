"""read_volume: one entry for every format; file size checked, format told by content, then one reader."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from usam.errors import VolumeError
from usam.volumes.archive import extract_zip
from usam.volumes.dicom import read_dicom_dir, read_dicom_file
from usam.volumes.limits import DEFAULT_LIMITS, MAX_FILE_BYTES, VolumeLimits
from usam.volumes.messages import mib
from usam.volumes.nifti import read_nifti
from usam.volumes.nrrd import read_nrrd
from usam.volumes.sniff import detect_format
from usam.volumes.volume import Volume


def read_volume(path: str | Path, max_bytes: int = MAX_FILE_BYTES, limits: VolumeLimits | None = None) -> Volume:
    """Read a CT volume (NIfTI, NRRD, DICOM folder / .zip / file) in canonical LPS+ order, within limits."""
    path = Path(path)
    limits = limits or DEFAULT_LIMITS
    if max_bytes < limits.max_file_bytes:
        limits = replace(limits, max_file_bytes=int(max_bytes))
    max_bytes = limits.max_file_bytes
    if not path.exists():
        raise VolumeError(f"file not found: {path.name}")
    if path.is_dir():
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if total > max_bytes:
            raise VolumeError(f"{path.name} holds {mib(total)}, over the {mib(max_bytes)} limit")
        return read_dicom_dir(path, path.name, limits)
    if not path.is_file():
        raise VolumeError(f"{path.name} is not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise VolumeError(f"{path.name} is {mib(size)}, over the {mib(max_bytes)} limit")
    if size == 0:
        raise VolumeError(f"{path.name} is empty")
    fmt = detect_format(path)
    if fmt.startswith("nifti"):
        return read_nifti(path, fmt, limits)
    if fmt == "nrrd":
        return read_nrrd(path, limits)
    if fmt == "dicom":
        return read_dicom_file(path, limits)
    with tempfile.TemporaryDirectory(prefix="usam_zip_") as tmp:   # private (0700) folder
        extract_zip(path, Path(tmp), limits)
        return read_dicom_dir(Path(tmp), path.name, limits)
