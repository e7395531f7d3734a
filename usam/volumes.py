"""CT volumes in and label maps out: NIfTI, DICOM series (folder or .zip) and NRRD.

Canonical orientation of ``Volume.array`` (z, y, x) = LPS+ voxel order: x index grows towards
patient Left (column 0 = patient right, radiological display), y index towards Posterior
(row 0 = anterior) and z index towards Superior, so ``array[z]`` is an axial slice ready to
display as is. ``Volume.affine`` maps the canonical voxel index (x, y, z) to RAS world mm
(nibabel convention). ``Volume.source`` keeps what write_labelmap needs to write a label map
in the file's own voxel order with its original affine, and nothing identifying.

Every input is hostile (docs/SECURITY.md, "Uploaded files and memory"):
- the reader opens only the file it is given (and, for a zip, only the members it extracted
  into its own private folder). The format is told by the file's content, never by its name;
  anything that names another file (NRRD ``data file``, MetaImage ``ElementDataFile``,
  Analyze / NIfTI header-image pairs) is refused before any library sees it;
- sizes come from the header and are checked against VolumeLimits (voxels, bytes the decoded
  array needs) before a single voxel is allocated; the decoded data is converted into the one
  float32 canonical array it ends in (peak: the file's own dtype + 4 bytes per voxel);
- a zip's member sizes are checked from its central directory before anything is written, and
  again while streaming (headers can lie).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from usam.errors import VolumeError

log = logging.getLogger("usam.volumes")

# Library defaults: for the operator's own files (CLI, training data, the study cohort). The app
# reads visitors' uploads under its much smaller AppLimits (app/context.py, README "Limits").
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
MAX_NIFTI_OFFSET = 16 << 20       # header extensions beyond this are not a CT file
NRRD_HEADER_SCAN = 64 << 10       # an attached NRRD header ends (blank line) within this
_CHUNK = 1 << 20

_LPS = (("L", "R"), ("P", "A"), ("S", "I"))  # nibabel axcodes labels are (neg, pos) pairs
_CANON_AXCODES = ("L", "P", "S")
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SUPPORTED = "a single-file NIfTI (.nii, .nii.gz), an NRRD with attached data, a DICOM file or a zipped DICOM series"


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


_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"(),;]+){2,}[\\/]?")


def scrub(text: str) -> str:
    """A library's message without the server paths it may name (they are not the user's business)."""
    return _PATHLIKE.sub("<file>", str(text)).strip()


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


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


def decode_bytes(voxels: int, itemsize: int) -> int:
    """Peak bytes of reading a volume: the file's own array plus the float32 canonical array."""
    return int(voxels) * (int(itemsize) + 4)


def _check_size(shape_xyz: tuple[int, ...], itemsize: int, limits: VolumeLimits, name: str = "") -> None:
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
        raise VolumeError(f"{what} {' × '.join(map(str, dims))} volume needs about {_mib(need)} of memory to open, "
                          f"over this server's limit of {_mib(limits.max_decode_bytes)} per volume")


def _check_geometry(shape_xyz: tuple[int, ...], affine: np.ndarray, limits: VolumeLimits = DEFAULT_LIMITS,
                    itemsize: int = 4, name: str = "") -> None:
    """Reject sizes and spacings no CT volume has (and sizes over the limits)."""
    _check_size(shape_xyz, itemsize, limits, name)
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


def _orientation(shape_xyz: tuple[int, ...], affine_disk: np.ndarray):
    """(to_canon, canonical affine, ornt_to_disk) of a disk-order (i, j, k) grid."""
    import nibabel.orientations as nio

    disk_ornt = nio.io_orientation(affine_disk)
    canon_ornt = nio.axcodes2ornt(_CANON_AXCODES)
    to_canon = nio.ornt_transform(disk_ornt, canon_ornt)
    affine = affine_disk @ nio.inv_ornt_aff(to_canon, shape_xyz)
    to_disk = nio.ornt_transform(canon_ornt, disk_ornt)
    return to_canon, affine, to_disk.tolist()


def _canonicalize(data_xyz: np.ndarray, affine_disk: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Reorient a disk-order (i, j, k) array to canonical LPS+; returns (array zyx, affine, ornt_to_disk)."""
    import nibabel.orientations as nio

    to_canon, affine, to_disk = _orientation(data_xyz.shape, affine_disk)
    data = nio.apply_orientation(data_xyz, to_canon)
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine, to_disk


def _to_disk_order(array_zyx: np.ndarray, source: dict) -> np.ndarray:
    """Inverse of _canonicalize: canonical (z, y, x) array -> the file's (i, j, k) order."""
    import nibabel.orientations as nio

    data = np.asarray(array_zyx).transpose(2, 1, 0)
    ornt = source.get("ornt_to_disk")
    if ornt is not None:
        data = nio.apply_orientation(data, np.asarray(ornt, dtype=np.float64))
    return np.ascontiguousarray(data)


def _finish(data_xyz: np.ndarray, affine_disk: np.ndarray, source: dict,
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
    return Volume(array=out, spacing=_spacing_from_affine(affine), affine=affine, source=source)


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


# ----------------------------------------------------------------------------- format by content

_META_KEYS = re.compile(rb"^\s*(ObjectType|NDims|DimSize|ElementType|ElementDataFile|ElementSpacing|"
                        rb"HeaderSize|BinaryData)\s*=", re.I | re.M)


def _nifti_kind(head: bytes) -> str | None:
    """'nifti1' / 'nifti2' for a single-file NIfTI header; refuses pairs and Analyze; None otherwise."""
    if len(head) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
        if sizeof_hdr == 348:
            magic = head[344:348]
            if magic == b"n+1\0":
                return "nifti1"
            if len(head) < 348:
                raise VolumeError("the NIfTI header is truncated")
            if magic == b"ni1\0":
                raise VolumeError("NIfTI header/image pairs (.hdr + .img) are not accepted: the header names "
                                  "another file. Upload a single-file .nii or .nii.gz")
            raise VolumeError("Analyze 7.5 header/image pairs (.hdr + .img) are not accepted: upload a "
                              "single-file .nii or .nii.gz")
        if sizeof_hdr == 540:
            magic = head[4:8]
            if magic == b"n+2\0":
                return "nifti2"
            if magic == b"ni2\0":
                raise VolumeError("NIfTI-2 header/image pairs are not accepted: upload a single-file .nii or .nii.gz")
    return None


def detect_format(path: str | Path) -> str:
    """The format of a file from its first bytes: 'nifti1' | 'nifti2' | 'nifti1-gz' | 'nifti2-gz' |
    'nrrd' | 'zip' | 'dicom' | 'dicom-dir'. The file name plays no part.

    Refuses, with a message, anything that would make a reader open another file."""
    path = Path(path)
    if path.is_dir():
        return "dicom-dir"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(600)
        except (OSError, EOFError, zlib.error) as exc:
            raise VolumeError(f"{path.name} is a damaged gzip file ({scrub(exc)})") from None
        kind = _nifti_kind(inner)
        if kind:
            return kind + "-gz"
        if inner.startswith(b"NRRD"):
            raise VolumeError("a gzip-compressed NRRD file is not accepted: use the NRRD's own gzip encoding")
        raise VolumeError(f"unsupported file type: {path.name} is gzip-compressed but not a NIfTI file "
                          f"(use {SUPPORTED})")
    kind = _nifti_kind(head)
    if kind:
        return kind
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if _META_KEYS.search(head[:1024]):
        m = re.search(rb"^\s*ElementDataFile\s*=\s*(\S+)", head, re.I | re.M)
        if m and m.group(1).upper() != b"LOCAL":
            raise VolumeError("this MetaImage header names a separate data file; files that refer to other "
                              f"files are not accepted (use {SUPPORTED})")
        raise VolumeError(f"MetaImage (.mha / .mhd) files are not supported: use {SUPPORTED}")
    raise VolumeError(f"unsupported file type: {path.name} (use .nii, .nii.gz, .nrrd, a DICOM folder or .zip)")


# ----------------------------------------------------------------------------- NIfTI

def _read_nifti(path: Path, kind: str, limits: VolumeLimits) -> Volume:
    """Read a single-file NIfTI-1/2 (.nii or gzip) from this file only: header, then exactly its data."""
    import nibabel as nib

    klass = nib.Nifti2Header if kind.startswith("nifti2") else nib.Nifti1Header
    nhdr = klass.template_dtype.itemsize
    opener = gzip.open if kind.endswith("-gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(nhdr)
            if len(raw) < nhdr:
                raise VolumeError(f"the NIfTI header of {path.name} is truncated")
            try:
                hdr = klass(raw, check=True)   # header only: extensions are skipped, never parsed
                shape = tuple(int(s) for s in hdr.get_data_shape())
                dtype = hdr.get_data_dtype()
                affine = hdr.get_best_affine()
                offset = float(hdr.get_data_offset())
                slope, inter = hdr.get_slope_inter()
                qform, qcode = hdr.get_qform(coded=True)
                sform, scode = hdr.get_sform(coded=True)
            except VolumeError:
                raise
            except Exception as exc:  # nibabel raises many types for corrupt headers
                raise VolumeError(f"the NIfTI header of {path.name} is invalid ({scrub(exc)})") from None
            shape3 = _squeeze_to_3d(shape)
            _check_dtype(dtype)
            _check_geometry(shape3, affine, limits, np.dtype(dtype).itemsize, path.name)  # before any data
            if not math.isfinite(offset) or not (nhdr + 4 <= offset <= MAX_NIFTI_OFFSET):
                raise VolumeError(f"the NIfTI header of {path.name} gives an invalid data offset ({offset:g})")
            skip = int(offset) - nhdr
            while skip > 0:                        # forward only (also in gzip): extensions are skipped
                got = len(f.read(min(skip, _CHUNK)))
                if not got:
                    raise VolumeError(f"the data of {path.name} is truncated")
                skip -= got
            data = np.empty(math.prod(shape3), dtype=dtype)
            buf = memoryview(data.view(np.uint8))
            done = 0
            while done < buf.nbytes:
                got = f.readinto(buf[done:done + _CHUNK * 16])
                if not got:
                    raise VolumeError(f"the data of {path.name} is truncated")
                done += got
    except VolumeError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(f"the data of {path.name} is truncated or corrupt ({scrub(exc)})") from None
    data_xyz = data.reshape(shape3, order="F")
    source = {"format": "nifti", "name": path.name,
              "qform": None if qform is None else qform.tolist(), "qform_code": int(qcode),
              "sform": None if sform is None else sform.tolist(), "sform_code": int(scode)}
    if slope is not None and not (math.isfinite(slope) and math.isfinite(inter or 0.0)):
        raise VolumeError(f"the intensity scaling of {path.name} is not finite")
    return _finish(data_xyz, affine, source, slope, inter)


# ----------------------------------------------------------------------------- SimpleITK (DICOM, NRRD)

def _sitk_affine(img) -> np.ndarray:
    """RAS affine of a SimpleITK image's (i, j, k) index (ITK geometry is LPS)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = img.GetOrigin()
    return _RAS_FROM_LPS @ lps


def _sitk_itemsize(reader) -> int:
    """Bytes per voxel of the pixel type a reader reports (8 when unknown: the worst case)."""
    import SimpleITK as sitk

    text = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if "complex" in text or "vector" in text or "label" in text:
        raise VolumeError(f"voxel type {text} is not a real number type")
    m = re.search(r"(\d+)-bit", text)
    return int(m.group(1)) // 8 if m else 8


def _sitk_message(exc: Exception) -> str:
    """The last line of an ITK exception, without server paths."""
    text = str(exc).strip()
    return scrub(text.splitlines()[-1]) if text else "unknown error"


def _sitk_to_volume(reader, name: str, fmt: str, limits: VolumeLimits, checked: bool = False) -> Volume:
    """Check size from the header, then read pixels of an ImageFileReader / ImageSeriesReader."""
    import SimpleITK as sitk

    try:
        if isinstance(reader, sitk.ImageFileReader):
            reader.ReadImageInformation()
            size = tuple(reader.GetSize())
            ncomp = reader.GetNumberOfComponents()
            if ncomp != 1:
                raise VolumeError(f"{name} has {ncomp} components per voxel; expected a scalar CT volume")
            itemsize = _sitk_itemsize(reader)
            if len(size) > 3:
                size = _squeeze_to_3d(size)
            if len(size) != 3:
                raise VolumeError(f"expected a 3D volume, got a {len(size)}D image of size {size}")
            _check_geometry(size, _probe_affine(reader), limits, itemsize, name)  # before any pixel is read
        elif not checked:
            raise VolumeError(f"{name}: the series size was not checked")   # a programming error, refused
        img = reader.Execute()
    except VolumeError:
        raise
    except RuntimeError as exc:
        raise VolumeError(f"cannot read {fmt} {name}: {_sitk_message(exc)}") from None
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
    _check_geometry(tuple(img.GetSize()), affine, limits, view_zyx.dtype.itemsize, name)
    _check_dtype(view_zyx.dtype)
    vol = _finish(view_zyx.transpose(2, 1, 0), affine, {"format": fmt, "name": name})
    del view_zyx, img
    return vol


def _probe_affine(reader) -> np.ndarray:
    """Affine from a reader's header information (no pixel data read)."""
    direction = np.asarray(reader.GetDirection(), dtype=np.float64)
    n = int(round(math.sqrt(direction.size)))
    direction = direction.reshape(n, n)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(reader.GetSpacing(), dtype=np.float64)[None, :3]
    lps[:3, 3] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    return _RAS_FROM_LPS @ lps


_NRRD_LINES = re.compile(r"\r\n|\r|\n")   # NrrdIO ends a line at any of these


def check_nrrd_header(path: str | Path) -> None:
    """Refuse an NRRD whose data is not attached to its header (detached .nhdr, ``data file``)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(NRRD_HEADER_SCAN).decode("latin-1")
    # anywhere in the first 64 KiB, however spelled or spaced: 'data file', 'datafile', 'DATA_FILE'
    if "datafile" in re.sub(r"[\s_\-]", "", head.lower()):
        raise VolumeError("this NRRD header names a separate data file ('data file'); files that refer to "
                          "other files are not accepted: save the NRRD with its data attached (.nrrd)")
    lines = _NRRD_LINES.split(head)
    if "" not in lines[1:-1]:
        raise VolumeError("this NRRD header has no data attached after it (a detached .nhdr header, or a "
                          f"header over {NRRD_HEADER_SCAN >> 10} KiB): save the NRRD with its data attached")


def _read_nrrd(path: Path, limits: VolumeLimits) -> Volume:
    """Read an attached-data NRRD with SimpleITK (handles LPS/RAS spaces and gzip encoding)."""
    import SimpleITK as sitk

    check_nrrd_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NrrdImageIO")
    return _sitk_to_volume(reader, path.name, "nrrd", limits)


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
        raise VolumeError(f"cannot read dicom {name}: {_sitk_message(exc)}") from None
    if r.GetNumberOfComponents() != 1:
        raise VolumeError(f"{name} has {r.GetNumberOfComponents()} components per voxel; expected a scalar CT volume")
    size = list(r.GetSize()) + [1]
    _check_size((int(size[0]), int(size[1]), max(int(size[2]), 1) * len(files)), _sitk_itemsize(r), limits, name)


def _read_dicom_dir(folder: Path, name: str, limits: VolumeLimits = DEFAULT_LIMITS) -> Volume:
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
    vol = _sitk_to_volume(reader, name, "dicom", limits, checked=True)
    vol.source["slices"] = len(files)
    return vol


def _safe_member_name(name: str) -> bool:
    """A zip member name that stays inside the extraction folder."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or ":" in name.split("/")[0]:
        return False
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." not in parts and not any(":" in p for p in parts)


def _extract_zip(path: Path, dest: Path, limits: VolumeLimits) -> int:
    """Extract a zip after checking names, member count, sizes and ratios (zip bombs); returns bytes written.

    Every size rule is applied to the central directory before the first byte is written, and
    the written bytes are counted again while streaming (a member's header may lie)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise VolumeError(f"{path.name} is not a readable zip file ({scrub(exc)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_members:
            raise VolumeError(f"{path.name} holds {len(infos)} files (max {limits.max_zip_members})")
        cap = min(limits.max_unzipped_bytes, limits.max_decode_bytes)
        total = 0
        for info in infos:
            if not _safe_member_name(info.filename):
                raise VolumeError(f"{path.name} contains an unsafe file name: {info.filename[:80]!r}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise VolumeError(f"{path.name} contains a symbolic link: {info.filename[:80]!r}")
            if info.flag_bits & 0x1:
                raise VolumeError(f"{path.name} is encrypted")
            total += info.file_size
            if info.file_size > limits.max_zip_ratio * max(info.compress_size, 1) and info.file_size > (1 << 20):
                raise VolumeError(f"{path.name} looks like a zip bomb ({info.filename[:80]!r} expands "
                                  f"{info.file_size // max(info.compress_size, 1)}x)")
        if total > min(cap, 4 * limits.max_file_bytes):
            raise VolumeError(f"{path.name} expands to {_mib(total)}, over the limit of {_mib(cap)}")
        size = max(path.stat().st_size, 1)
        if total > (16 << 20) and total > limits.max_zip_total_ratio * size:
            raise VolumeError(f"{path.name} looks like a zip bomb (its {len(infos)} files expand "
                              f"{total // size}x, to {_mib(total)})")
        written = 0
        for info in infos:
            if info.is_dir():
                continue
            target = dest / PurePosixPath(info.filename.replace("\\", "/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            member = 0
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        member += len(chunk)
                        written += len(chunk)
                        if member > info.file_size or written > total or written > cap:  # declared sizes lied
                            raise VolumeError(f"{path.name} expands beyond its declared size")
                        dst.write(chunk)
            except VolumeError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                log.warning("zip extraction of %s failed: %s", path.name, exc)
                raise VolumeError(f"{path.name} is corrupt, truncated or uses an unsupported compression") from None
        return written


# ----------------------------------------------------------------------------- public API

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
            raise VolumeError(f"{path.name} holds {_mib(total)}, over the {_mib(max_bytes)} limit")
        return _read_dicom_dir(path, path.name, limits)
    if not path.is_file():
        raise VolumeError(f"{path.name} is not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise VolumeError(f"{path.name} is {_mib(size)}, over the {_mib(max_bytes)} limit")
    if size == 0:
        raise VolumeError(f"{path.name} is empty")
    fmt = detect_format(path)
    if fmt.startswith("nifti"):
        return _read_nifti(path, fmt, limits)
    if fmt == "nrrd":
        return _read_nrrd(path, limits)
    if fmt == "dicom":
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        return _sitk_to_volume(reader, path.name, "dicom", limits)
    with tempfile.TemporaryDirectory(prefix="usam_zip_") as tmp:   # private (0700) folder
        _extract_zip(path, Path(tmp), limits)
        return _read_dicom_dir(Path(tmp), path.name, limits)


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
