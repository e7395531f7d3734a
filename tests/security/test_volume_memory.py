"""Issue 13 §2 replayed on the library path: a small file must not cost gigabytes. Sizes come
from headers and are checked before any voxel is allocated (tracemalloc measures the peak of
Python/numpy allocations of the call); a zip is checked from its central directory before any
byte is written, and again while streaming (headers can lie)."""
from __future__ import annotations

import contextlib
import gzip
import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from usam.errors import VolumeError
from app.settings import AppLimits
from usam.volumes import DEFAULT_LIMITS, VolumeLimits, decode_bytes, read_volume

MB = 1 << 20
APP = AppLimits().volume_limits()     # what the app reads uploads under (README "Limits")


def peak_of(fn, *a, **k):
    """(result or exception, peak traced bytes) of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        try:
            out = fn(*a, **k)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def zeros_512(tmp_path_factory) -> Path:
    """The reported file: a ~130 KB gzip NIfTI of 512^3 uint8 zeros (128 MiB of data)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 512))
    hdr.set_data_dtype(np.uint8)
    hdr.set_zooms((0.8, 0.8, 1.0))
    hdr["vox_offset"] = 352
    hdr.set_sform(np.diag([0.8, 0.8, 1.0, 1.0]), code=1)
    path = tmp_path_factory.mktemp("bomb") / "zeros512.nii.gz"
    zeros = bytes(8 * MB)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        for _ in range(16):
            f.write(zeros)
    return path


def test_gzip_nifti_of_512_cubed_refused_from_its_header(zeros_512):
    assert zeros_512.stat().st_size < 200_000
    out, peak = peak_of(read_volume, zeros_512, limits=APP)
    assert isinstance(out, VolumeError), out
    assert "too large" in str(out) and "(512, 512, 512)" in str(out), str(out)
    assert peak < 4 * MB, f"peak {peak / MB:.1f} MiB while refusing"
    # the memory rule alone (no voxel cap) refuses it too: 512^3 x (1 + 4) bytes > 512 MiB
    out, peak = peak_of(read_volume, zeros_512, limits=VolumeLimits(max_decode_bytes=512 * MB))
    assert isinstance(out, VolumeError) and "memory" in str(out) and "512 × 512 × 512" in str(out), out
    assert peak < 4 * MB


def test_voxel_cap_refuses_before_reading(zeros_512):
    limits = VolumeLimits(max_decode_bytes=8 << 30, max_voxels=1 << 26)
    out, peak = peak_of(read_volume, zeros_512, limits=limits)
    assert isinstance(out, VolumeError) and "too large" in str(out), out
    assert peak < 4 * MB


def test_accepted_volume_peak_is_its_dtype_plus_float32(tmp_path):
    """An accepted read costs the file's own array plus the float32 array it returns, nothing more."""
    data = np.random.default_rng(0).integers(-1024, 2000, size=(256, 256, 48)).astype(np.int16)
    p = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-0.8, -0.8, 2.5, 1])), str(p))
    vol, peak = peak_of(read_volume, p)
    assert not isinstance(vol, Exception), vol
    bound = decode_bytes(data.size, 2)                      # 6 bytes per voxel: 18 MiB here
    assert peak <= bound + 2 * MB, f"peak {peak / MB:.1f} MiB > {bound / MB:.1f} MiB + 2"
    assert vol.array.dtype == np.float32 and vol.array.shape == (48, 256, 256)
    # the same voxel values (orientation itself is tested in tests/usam/test_volumes.py)
    assert np.array_equal(np.sort(vol.array, axis=None), np.sort(data, axis=None).astype(np.float32))


def _wide_zip(n=300) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(n):
            zf.writestr(f"s/{i:03d}.dcm", bytes(MB))
    return buf.getvalue()


@contextlib.contextmanager
def _kept_dir(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    yield str(folder)


def _written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_zip_of_300_one_mib_members_refused_with_nothing_written(tmp_path, monkeypatch):
    import usam.volumes.reader as V

    p = tmp_path / "wide.zip"
    p.write_bytes(_wide_zip())
    assert p.stat().st_size < 400_000
    extracted = tmp_path / "extracted"
    monkeypatch.setattr(V.tempfile, "TemporaryDirectory", lambda **k: _kept_dir(extracted))
    out, peak = peak_of(read_volume, p, limits=APP)
    assert isinstance(out, VolumeError) and "zip bomb" in str(out), out
    assert _written(extracted) == 0 and peak < 8 * MB
    # without the ratio rule the total cap (from the central directory) refuses it, still before writing
    out, _ = peak_of(read_volume, p, limits=VolumeLimits(max_zip_total_ratio=10**6, max_unzipped_bytes=64 * MB))
    assert isinstance(out, VolumeError) and "expands to" in str(out), out
    assert _written(extracted) == 0


def test_zip_whose_headers_lie_is_cut_at_the_declared_size(tmp_path, monkeypatch):
    """A member declaring 1 MiB that inflates to 8 MiB: never more than the declared bytes reach disk."""
    import usam.volumes.reader as V

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/0.dcm", np.random.default_rng(1).integers(0, 4, 8 * MB, dtype=np.uint8).tobytes())
    raw = bytearray(buf.getvalue())
    declared = MB
    lh = raw.find(b"PK\x03\x04")
    struct.pack_into("<I", raw, lh + 22, declared)          # local header: uncompressed size
    cd = raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, declared)          # central directory: uncompressed size
    p = tmp_path / "liar.zip"
    p.write_bytes(bytes(raw))
    extracted = tmp_path / "extracted"
    monkeypatch.setattr(V.tempfile, "TemporaryDirectory", lambda **k: _kept_dir(extracted))
    out, _ = peak_of(read_volume, p)
    assert isinstance(out, VolumeError) and "corrupt" in str(out), out
    assert _written(extracted) <= declared


def test_dicom_series_size_checked_from_the_first_header(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from tests.usam.test_volumes import write_dicom_series

    write_dicom_series(tmp_path / "series", n=5, rows=16, cols=20)

    def boom(*a, **k):
        raise AssertionError("pixels were read before the size check")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", boom)
    with pytest.raises(VolumeError, match="too large"):
        read_volume(tmp_path / "series", limits=VolumeLimits(max_voxels=1000))
    with pytest.raises(VolumeError, match="memory"):
        read_volume(tmp_path / "series", limits=VolumeLimits(max_decode_bytes=5 * 16 * 20 * 5))


def test_default_limits_are_the_documented_ones():
    """README "Limits": the app's (uploads) and the library's (the operator's own files)."""
    assert (APP.max_file_bytes, APP.max_decode_bytes, APP.max_unzipped_bytes, APP.max_zip_members) == \
        (1 << 30, 512 * MB, 1 << 30, 5000)
    assert APP.max_voxels == min(1 << 27, 512 * MB // 6)
    assert DEFAULT_LIMITS.max_voxels == 1 << 29 and DEFAULT_LIMITS.max_decode_bytes == 4 << 30
    assert DEFAULT_LIMITS.max_unzipped_bytes == 2 << 30 and DEFAULT_LIMITS.max_zip_members == 5000
