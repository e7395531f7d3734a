"""The format of a file from its content, never its name; refusal of files that name other files.

Anything that would make a reader open another file (NRRD ``data file`` / detached .nhdr,
MetaImage ``ElementDataFile``, Analyze / NIfTI header-image pairs) is refused here, before any
library sees it."""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

from usam.errors import VolumeError
from usam.volumes.messages import scrub

SUPPORTED = "a single-file NIfTI (.nii, .nii.gz), an NRRD with attached data, a DICOM file or a zipped DICOM series"
NRRD_HEADER_SCAN = 64 << 10       # an attached NRRD header ends (blank line) within this

_META_KEYS = re.compile(rb"^\s*(ObjectType|NDims|DimSize|ElementType|ElementDataFile|ElementSpacing|"
                        rb"HeaderSize|BinaryData)\s*=", re.I | re.M)
_NRRD_LINES = re.compile(r"\r\n|\r|\n")   # NrrdIO ends a line at any of these


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
