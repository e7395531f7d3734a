"""CT volumes in and label maps out: NIfTI, DICOM series (folder or .zip) and NRRD.

Canonical orientation of ``Volume.array`` (z, y, x) = LPS+ voxel order: x index grows towards
patient Left (column 0 = patient right, radiological display), y index towards Posterior
(row 0 = anterior) and z index towards Superior, so ``array[z]`` is an axial slice ready to
display as is. ``Volume.affine`` maps the canonical voxel index (x, y, z) to RAS world mm
(nibabel convention). ``Volume.source`` keeps what write_labelmap needs to write a label map
in the file's own voxel order with its original affine, and nothing identifying.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from usam.errors import VolumeError

MAX_FILE_BYTES = 1 << 30          # 1 GiB on disk, checked before reading
MAX_UNZIPPED_BYTES = 2 << 30      # sum of uncompressed zip members (zip bombs)
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_RATIO = 200               # per-member uncompressed / compressed size
MAX_VOXELS = 1 << 29              # ~2 GiB as float32
MAX_AXIS = 4096
MIN_INPLANE = 8                   # smaller axial slices are not a CT volume
SPACING_RANGE_MM = (0.01, 50.0)

_LPS = (("L", "R"), ("P", "A"), ("S", "I"))  # nibabel axcodes labels are (neg, pos) pairs
_CANON_AXCODES = ("L", "P", "S")
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


# ----------------------------------------------------------------------------- geometry

def _spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """(sz, sy, sx) from the column norms of an (x, y, z) affine."""
    sx, sy, sz = (float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return (sz, sy, sx)


def canonical_affine(spacing: tuple[float, float, float], origin_ras=(0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of an axis-aligned canonical (LPS+) array with spacing (sz, sy, sx)."""
    sz, sy, sx = spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = origin_ras
    return aff


def _check_geometry(shape_xyz: tuple[int, ...], affine: np.ndarray) -> None:
    """Reject sizes and spacings no CT volume has."""
    if len(shape_xyz) != 3:
        raise VolumeError(f"expected a 3D volume, got shape {tuple(shape_xyz)}")
    if min(shape_xyz) < 1 or int(np.prod(shape_xyz)) == 0:
        raise VolumeError("the volume is empty")
    if max(shape_xyz) > MAX_AXIS or int(np.prod([int(s) for s in shape_xyz])) > MAX_VOXELS:
        raise VolumeError(f"volume of shape {tuple(shape_xyz)} is too large (max {MAX_AXIS} per axis, "
                          f"{MAX_VOXELS} voxels)")
    if sorted(shape_xyz)[1] < MIN_INPLANE:  # any orientation: two axes must span an image
        raise VolumeError(f"a volume of {tuple(shape_xyz)} voxels is too small for a CT volume")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeError("the volume's geometry (affine) is not finite")
    lo, hi = SPACING_RANGE_MM
    for s in _spacing_from_affine(affine):
        if not (lo <= s <= hi):
            raise VolumeError(f"voxel spacing {s:g} mm is outside {lo:g}-{hi:g} mm")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError("the volume's geometry (affine) is singular")


def _canonicalize(data_xyz: np.ndarray, affine_disk: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Reorient a disk-order (i, j, k) array to canonical LPS+; returns (array zyx, affine, ornt_to_disk)."""
    import nibabel.orientations as nio

    disk_ornt = nio.io_orientation(affine_disk)
    canon_ornt = nio.axcodes2ornt(_CANON_AXCODES)
    to_canon = nio.ornt_transform(disk_ornt, canon_ornt)
    data = nio.apply_orientation(data_xyz, to_canon)
    affine = affine_disk @ nio.inv_ornt_aff(to_canon, data_xyz.shape)
    to_disk = nio.ornt_transform(canon_ornt, disk_ornt)
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine, to_disk.tolist()


def _to_disk_order(array_zyx: np.ndarray, source: dict) -> np.ndarray:
    """Inverse of _canonicalize: canonical (z, y, x) array -> the file's (i, j, k) order."""
    import nibabel.orientations as nio

    data = np.asarray(array_zyx).transpose(2, 1, 0)
    ornt = source.get("ornt_to_disk")
    if ornt is not None:
        data = nio.apply_orientation(data, np.asarray(ornt, dtype=np.float64))
    return np.ascontiguousarray(data)


def _finish(data_xyz: np.ndarray, affine_disk: np.ndarray, source: dict) -> Volume:
    """Validate values, canonicalize and build the Volume."""
    if data_xyz.size == 0:
        raise VolumeError("the volume is empty")
    if not np.all(np.isfinite(data_xyz)):
        raise VolumeError("the volume contains NaN or infinite values")
    array, affine, to_disk = _canonicalize(data_xyz.astype(np.float32, copy=False), affine_disk)
    source = dict(source, shape_on_disk=[int(s) for s in data_xyz.shape], ornt_to_disk=to_disk,
                  affine_on_disk=np.asarray(affine_disk, dtype=float).tolist())
    return Volume(array=array.astype(np.float32, copy=False), spacing=_spacing_from_affine(affine),
                  affine=affine, source=source)


# ----------------------------------------------------------------------------- NIfTI

def _squeeze_to_3d(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Allow 4D/5D files that hold a single volume; reject anything else that is not 3D."""
    if len(shape) < 3:
        raise VolumeError(f"expected a 3D volume, got {len(shape)}D shape {tuple(shape)}")
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise VolumeError(f"expected a single 3D volume, got shape {tuple(shape)} ({int(np.prod(shape[3:]))} volumes)")
    return tuple(shape[:3])


def _check_dtype(dtype: np.dtype) -> None:
    """Only real numbers are CT intensities."""
    if np.dtype(dtype).kind not in "iuf" or np.dtype(dtype).fields is not None:
        raise VolumeError(f"voxel type {dtype} is not a real number type")


def _read_nifti(path: Path) -> Volume:
    """Read .nii / .nii.gz with nibabel."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers / gzip
        raise VolumeError(f"cannot read NIfTI file {path.name}: {exc}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"{path.name} is not a NIfTI image")
    shape3 = _squeeze_to_3d(img.shape)
    _check_dtype(img.get_data_dtype())
    _check_geometry(shape3, img.affine)  # before touching the data: a gzip bomb stays unread
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape3)
    except (OSError, EOFError, zlib.error, ValueError, gzip.BadGzipFile) as exc:
        raise VolumeError(f"the data of {path.name} is truncated or corrupt ({exc})") from None
    hdr = img.header
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    source = {"format": "nifti", "name": path.name,
              "qform": None if qform is None else qform.tolist(), "qform_code": int(qcode),
              "sform": None if sform is None else sform.tolist(), "sform_code": int(scode)}
    return _finish(data, img.affine, source)


# ----------------------------------------------------------------------------- SimpleITK (DICOM, NRRD)

def _sitk_affine(img) -> np.ndarray:
    """RAS affine of a SimpleITK image's (i, j, k) index (ITK geometry is LPS)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = img.GetOrigin()
    return _RAS_FROM_LPS @ lps


def _sitk_to_volume(reader, name: str, fmt: str) -> Volume:
    """Check size from the header, then read pixels of an ImageFileReader / ImageSeriesReader."""
    import SimpleITK as sitk

    try:
        if isinstance(reader, sitk.ImageFileReader):
            reader.ReadImageInformation()
            size = tuple(reader.GetSize())
            ncomp = reader.GetNumberOfComponents()
            if ncomp != 1:
                raise VolumeError(f"{name} has {ncomp} components per voxel; expected a scalar CT volume")
            if len(size) > 3:
                size = _squeeze_to_3d(size)
            if len(size) == 3:  # check sizes from the header before any pixel is read
                _check_geometry(size, _probe_affine(reader))
        img = reader.Execute()
    except VolumeError:
        raise
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise VolumeError(f"cannot read {fmt} {name}: {msg}") from None
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
    _check_geometry(tuple(img.GetSize()), affine)
    data_zyx = sitk.GetArrayFromImage(img)
    _check_dtype(data_zyx.dtype)
    return _finish(data_zyx.transpose(2, 1, 0).astype(np.float32), affine, {"format": fmt, "name": name})


def _probe_affine(reader) -> np.ndarray:
    """Affine from a reader's header information (no pixel data read)."""
    direction = np.asarray(reader.GetDirection(), dtype=np.float64)
    n = int(round(math.sqrt(direction.size)))
    direction = direction.reshape(n, n)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(reader.GetSpacing(), dtype=np.float64)[None, :3]
    lps[:3, 3] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    return _RAS_FROM_LPS @ lps


def _read_nrrd(path: Path) -> Volume:
    """Read .nrrd / .nhdr with SimpleITK (handles LPS/RAS spaces and gzip encoding)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NrrdImageIO")
    return _sitk_to_volume(reader, path.name, "nrrd")


def _read_dicom_dir(folder: Path, name: str) -> Volume:
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
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)
    if len(files) < 2:
        raise VolumeError(f"the DICOM series in {name} has {len(files)} slice(s); a CT volume needs several")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()  # no tags kept: nothing identifying leaves the reader
    reader.LoadPrivateTagsOff()
    vol = _sitk_to_volume(reader, name, "dicom")
    vol.source["slices"] = len(files)
    return vol


def _safe_member_name(name: str) -> bool:
    """A zip member name that stays inside the extraction folder."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or ":" in name.split("/")[0]:
        return False
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." not in parts


def _extract_zip(path: Path, dest: Path, max_bytes: int) -> None:
    """Extract a zip after checking names, member count, sizes and ratios (zip bombs)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VolumeError(f"{path.name} is not a readable zip file ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise VolumeError(f"{path.name} holds {len(infos)} files (max {MAX_ZIP_MEMBERS})")
        total = 0
        for info in infos:
            if not _safe_member_name(info.filename):
                raise VolumeError(f"{path.name} contains an unsafe file name: {info.filename!r}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise VolumeError(f"{path.name} contains a symbolic link: {info.filename!r}")
            total += info.file_size
            if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) and info.file_size > (1 << 20):
                raise VolumeError(f"{path.name} looks like a zip bomb ({info.filename!r} expands "
                                  f"{info.file_size // max(info.compress_size, 1)}x)")
        if total > min(MAX_UNZIPPED_BYTES, 4 * max_bytes):
            raise VolumeError(f"{path.name} expands to {total / 2**20:.0f} MiB, over the limit")
        written = 0
        for info in infos:
            if info.is_dir():
                continue
            target = dest / PurePosixPath(info.filename.replace("\\", "/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > total:  # declared sizes lied
                            raise VolumeError(f"{path.name} expands beyond its declared size")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise VolumeError(f"{path.name} is corrupt or truncated ({exc})") from None


# ----------------------------------------------------------------------------- public API

def _format_of(path: Path) -> str:
    """File format from the name (and from the folder for DICOM series)."""
    name = path.name.lower()
    if path.is_dir():
        return "dicom-dir"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".zip"):
        return "dicom-zip"
    if name.endswith((".dcm", ".ima")):
        return "dicom-file"
    raise VolumeError(f"unsupported file type: {path.name} (use .nii, .nii.gz, .nrrd, a DICOM folder or .zip)")


def read_volume(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Volume:
    """Read a CT volume (NIfTI, NRRD, DICOM folder / .zip / multi-frame file) in canonical LPS+ order."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"file not found: {path.name}")
    fmt = _format_of(path)
    if fmt == "dicom-dir":
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if total > max_bytes:
            raise VolumeError(f"{path.name} holds {total / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
        return _read_dicom_dir(path, path.name)
    size = path.stat().st_size
    if size > max_bytes:
        raise VolumeError(f"{path.name} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    if size == 0:
        raise VolumeError(f"{path.name} is empty")
    if fmt == "nifti":
        return _read_nifti(path)
    if fmt == "nrrd":
        return _read_nrrd(path)
    if fmt == "dicom-file":
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        return _sitk_to_volume(reader, path.name, "dicom")
    with tempfile.TemporaryDirectory(prefix="usam_zip_") as tmp:
        _extract_zip(path, Path(tmp), max_bytes)
        return _read_dicom_dir(Path(tmp), path.name)


def volume_hash(volume: Volume) -> str:
    """sha256 of the canonical array bytes and the spacing (identifies a volume across sessions)."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(volume.array, dtype=np.float32)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(repr(tuple(round(float(s), 6) for s in volume.spacing)).encode())
    return h.hexdigest()


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


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write a Volume's HU array as NIfTI (float32, or int16 when lossless) in its file's disk order."""
    import nibabel as nib

    path = Path(path)
    data = _to_disk_order(volume.array, volume.source)
    if np.all(data == np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    affine = np.asarray(volume.source.get("affine_on_disk", volume.affine), dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_labelmap(labels: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a uint8 (z, y, x) label map in the reference file's voxel order and affine (.nii[.gz] or .nrrd)."""
    path = Path(path)
    labels = _check_labels(labels, reference.array.shape)
    data = _to_disk_order(labels, reference.source)
    affine = np.asarray(reference.source.get("affine_on_disk", reference.affine), dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith(".nrrd"):
        import nrrd

        lps = np.linalg.inv(_RAS_FROM_LPS) @ affine
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


def read_labelmap(path: str | Path, reference: Volume | None = None) -> np.ndarray:
    """Read a label map into canonical (z, y, x) uint8; with a reference, check it overlays exactly."""
    vol = read_volume(path)
    labels = _check_labels(vol.array, vol.array.shape)
    if reference is not None:
        if labels.shape != reference.array.shape:
            raise VolumeError(f"label map shape {labels.shape} differs from the volume shape {reference.array.shape}")
        if not np.allclose(vol.affine, reference.affine, atol=1e-3, rtol=1e-4):
            raise VolumeError("the label map's geometry (affine) does not match the volume's")
    return labels
