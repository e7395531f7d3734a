"""NRRD with attached data in (SimpleITK: LPS/RAS spaces, gzip encoding), after the header check."""
from __future__ import annotations

from pathlib import Path

from usam.volumes.limits import VolumeLimits
from usam.volumes.sitk_io import sitk_to_volume
from usam.volumes.sniff import check_nrrd_header
from usam.volumes.volume import Volume


def read_nrrd(path: Path, limits: VolumeLimits) -> Volume:
    """Read an attached-data NRRD with SimpleITK (handles LPS/RAS spaces and gzip encoding)."""
    import SimpleITK as sitk

    check_nrrd_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NrrdImageIO")
    return sitk_to_volume(reader, path.name, "nrrd", limits)
