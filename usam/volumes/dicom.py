"""DICOM in: one file, or the one series in a folder; size checked from the first header, no tags kept."""
from __future__ import annotations

from pathlib import Path

from usam.errors import VolumeError
from usam.volumes.limits import DEFAULT_LIMITS, VolumeLimits, check_size
from usam.volumes.sitk_io import sitk_itemsize, sitk_message, sitk_to_volume
from usam.volumes.volume import Volume


def read_dicom_file(path: Path, limits: VolumeLimits) -> Volume:
    """Read a single DICOM file (a multi-frame volume) with GDCM."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    return sitk_to_volume(reader, path.name, "dicom", limits)


def _check_series_size(files: list[str], name: str, limits: VolumeLimits) -> None:
    """Size of a DICOM series from its first file's header times the number of files."""
    import SimpleITK as sitk

    if len(files) > limits.max_axis:
        raise VolumeError(f"the DICOM series in {name} has {len(files)} slices (max {limits.max_axis})")
    r = sitk.ImageFileReader()
    r.SetFileName(files[0])
    r.SetImageIO("GDCMImageIO")
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(f"cannot read dicom {name}: {sitk_message(exc)}") from None
    if r.GetNumberOfComponents() != 1:
        raise VolumeError(f"{name} has {r.GetNumberOfComponents()} components per voxel; expected a scalar CT volume")
    size = list(r.GetSize()) + [1]
    check_size((int(size[0]), int(size[1]), max(int(size[2]), 1) * len(files)), sitk_itemsize(r), limits, name)


def read_dicom_dir(folder: Path, name: str, limits: VolumeLimits = DEFAULT_LIMITS) -> Volume:
    """Read the one DICOM series in a folder; rescale slope/intercept are applied by GDCM."""
    import SimpleITK as sitk

    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series = ()
    if not series:
        # series may sit in a single sub-folder (typical zip layout)
        subdirs = sorted({p.parent for p in folder.rglob("*") if p.is_file()})
        found = [(d, s) for d in subdirs for s in (sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ())]
        if not found:
            raise VolumeError(f"no DICOM series found in {name}")
        if len(found) > 1:
            raise VolumeError(f"{name} holds {len(found)} DICOM series; upload one series at a time")
        folder, sid = found[0]
    elif len(series) > 1:
        raise VolumeError(f"{name} holds {len(series)} DICOM series; upload one series at a time")
    else:
        sid = series[0]
        other = [p.parent for p in folder.rglob("*") if p.is_file() and p.parent != folder]
        for d in sorted(set(other)):
            if sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)):
                raise VolumeError(f"{name} holds several DICOM series; upload one series at a time")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
    if len(files) < 2:
        raise VolumeError(f"the DICOM series in {name} has {len(files)} slice(s); a CT volume needs several")
    _check_series_size(files, name, limits)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()  # no tags kept: nothing identifying leaves the reader
    reader.LoadPrivateTagsOff()
    vol = sitk_to_volume(reader, name, "dicom", limits, checked=True)
    vol.source["slices"] = len(files)
    return vol
