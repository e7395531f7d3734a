"""CT volumes in and label maps out: NIfTI, DICOM series (folder or .zip) and NRRD.

Canonical orientation (``Volume.array`` (z, y, x) = LPS+ voxel order) is described in
usam/volumes/volume.py. One module per job:

    limits     VolumeLimits and the header-size / geometry checks
    messages   message text: sizes in MiB, library messages without server paths (scrub)
    sniff      format by content; refusal of files that name other files
    volume     the Volume, orientation to and from disk order, volume_hash
    nifti      single-file NIfTI in (from this file alone), write_volume
    sitk_io    SimpleITK reading shared by NRRD and DICOM
    nrrd       NRRD with attached data
    dicom      DICOM file or the one series of a folder
    archive    zip extraction with caps
    reader     read_volume: the one entry point that dispatches to the above
    labelmap   write_labelmap / read_labelmap

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
from usam.volumes.labelmap import read_labelmap, write_labelmap
from usam.volumes.limits import (DEFAULT_LIMITS, MAX_AXIS, MAX_DECODE_BYTES, MAX_FILE_BYTES, MAX_UNZIPPED_BYTES,
                                 MAX_VOXELS, MAX_ZIP_MEMBERS, MAX_ZIP_RATIO, MAX_ZIP_TOTAL_RATIO, MIN_INPLANE,
                                 SPACING_RANGE_MM, VolumeLimits, decode_bytes)
from usam.volumes.messages import scrub
from usam.volumes.nifti import MAX_NIFTI_OFFSET, write_volume
from usam.volumes.reader import read_volume
from usam.volumes.sniff import NRRD_HEADER_SCAN, SUPPORTED, check_nrrd_header, detect_format
from usam.volumes.volume import Volume, canonical_affine, volume_hash

__all__ = [
    "DEFAULT_LIMITS", "MAX_AXIS", "MAX_DECODE_BYTES", "MAX_FILE_BYTES", "MAX_NIFTI_OFFSET", "MAX_UNZIPPED_BYTES",
    "MAX_VOXELS", "MAX_ZIP_MEMBERS", "MAX_ZIP_RATIO", "MAX_ZIP_TOTAL_RATIO", "MIN_INPLANE", "NRRD_HEADER_SCAN",
    "SPACING_RANGE_MM", "SUPPORTED", "Volume", "VolumeLimits", "canonical_affine", "check_nrrd_header",
    "decode_bytes", "detect_format", "read_labelmap", "read_volume", "scrub", "volume_hash", "write_labelmap",
    "write_volume",
]
