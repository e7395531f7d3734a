"""Single-file NIfTI-1/2 (.nii, .nii.gz) in, read from this file alone; a Volume's HU array out as NIfTI."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from usam.errors import VolumeError
from usam.volumes.limits import READ_CHUNK, VolumeLimits, check_dtype, check_geometry, squeeze_to_3d
from usam.volumes.messages import scrub
from usam.volumes.volume import Volume, build_volume, to_disk_order

MAX_NIFTI_OFFSET = 16 << 20       # header extensions beyond this are not a CT file


def read_nifti(path: Path, kind: str, limits: VolumeLimits) -> Volume:
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
            shape3 = squeeze_to_3d(shape)
            check_dtype(dtype)
            check_geometry(shape3, affine, limits, np.dtype(dtype).itemsize, path.name)  # before any data
            if not math.isfinite(offset) or not (nhdr + 4 <= offset <= MAX_NIFTI_OFFSET):
                raise VolumeError(f"the NIfTI header of {path.name} gives an invalid data offset ({offset:g})")
            skip = int(offset) - nhdr
            while skip > 0:                        # forward only (also in gzip): extensions are skipped
                got = len(f.read(min(skip, READ_CHUNK)))
                if not got:
                    raise VolumeError(f"the data of {path.name} is truncated")
                skip -= got
            data = np.empty(math.prod(shape3), dtype=dtype)
            buf = memoryview(data.view(np.uint8))
            done = 0
            while done < buf.nbytes:
                got = f.readinto(buf[done:done + READ_CHUNK * 16])
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
    return build_volume(data_xyz, affine, source, slope, inter)


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write a Volume's HU array as NIfTI (float32, or int16 when lossless) in its file's disk order."""
    import nibabel as nib

    path = Path(path)
    data = to_disk_order(volume.array, volume.source)
    if np.all(data == np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    affine = np.asarray(volume.source.get("affine_on_disk", volume.affine), dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
