"""Property-based tests of usam.volumes.read_volume on hostile files: random bytes under every
supported name, truncated gzip, random NIfTI headers / shapes / dtypes / affines, corrupted header
bytes, random NRRD headers, zips with unsafe member names and bombs, and size limits enforced
before any byte is parsed. Every outcome is either a valid Volume or a VolumeError (a UsamError
with a message): never another exception, never a file written outside the extraction folder."""
from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usam.errors import UsamError, VolumeError
from usam.volumes import Volume, read_volume

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".zip", ".dcm"]


def _valid_or_error(path: Path, **kw) -> Volume | None:
    """read_volume: a Volume meeting the contract, or VolumeError with a non-empty message."""
    try:
        v = read_volume(path, **kw)
    except VolumeError as exc:
        assert str(exc).strip(), "an error without a message"
        assert "Traceback" not in str(exc)
        return None
    assert isinstance(v, Volume)
    assert v.array.ndim == 3 and v.array.dtype == np.float32 and min(v.array.shape) >= 1
    assert len(v.spacing) == 3 and all(np.isfinite(s) and s > 0 for s in v.spacing)
    assert v.affine.shape == (4, 4) and np.isfinite(v.affine).all()
    return v


def _small_nifti_bytes(gz: bool, shape=(6, 5, 4), dtype=np.int16) -> bytes:
    data = (np.arange(np.prod(shape)) % 200 - 100).reshape(shape).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


@FUZZ
@given(data=st.binary(min_size=1, max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_never_crash(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("rnd") / f"upload{suffix}"
    path.write_bytes(data)
    assert _valid_or_error(path) is None or suffix in (".nii", ".nii.gz", ".nrrd", ".dcm")


@FUZZ
@given(cut=st.floats(0.0, 0.999), gz=st.booleans())
def test_truncated_nifti_is_refused(tmp_path_factory, cut, gz):
    raw = _small_nifti_bytes(gz)
    path = tmp_path_factory.mktemp("trunc") / ("t.nii.gz" if gz else "t.nii")
    path.write_bytes(raw[:max(1, int(len(raw) * cut))])
    with pytest.raises(VolumeError):
        read_volume(path)


@FUZZ
@given(pos=st.integers(0, 347), value=st.integers(0, 255), gz=st.booleans())
def test_corrupted_header_byte(tmp_path_factory, pos, value, gz):
    raw = bytearray(_small_nifti_bytes(False))
    raw[pos] = value
    data = gzip.compress(bytes(raw)) if gz else bytes(raw)
    path = tmp_path_factory.mktemp("hdr") / ("h.nii.gz" if gz else "h.nii")
    path.write_bytes(data)
    _valid_or_error(path)


DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.float32, np.float64,
          np.complex64, np.bool_]
finite = st.floats(-1e4, 1e4, allow_nan=False)
weird = st.one_of(finite, st.just(0.0), st.just(float("nan")), st.just(float("inf")), st.just(1e30))


@FUZZ
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=5), dtype=st.sampled_from(DTYPES),
       affine=st.lists(weird, min_size=12, max_size=12), zooms_ok=st.booleans(), gz=st.booleans(),
       nan_voxel=st.booleans())
def test_random_nifti_headers_shapes_dtypes(tmp_path_factory, shape, dtype, affine, zooms_ok, gz, nan_voxel):
    data = np.ones(shape, dtype=dtype)
    if nan_voxel and np.dtype(dtype).kind == "f":
        data.flat[0] = np.nan
    A = np.eye(4)
    A[:3, :4] = np.asarray(affine).reshape(3, 4) if not zooms_ok else np.diag([0.7, 0.7, 3.0, 1.0])[:3]
    try:
        img = nib.Nifti1Image(data, A)
        path = tmp_path_factory.mktemp("nii") / ("r.nii.gz" if gz else "r.nii")
        nib.save(img, str(path))
    except Exception:
        return                       # nibabel itself refuses to write this header: nothing to read
    v = _valid_or_error(path)
    if v is not None:
        assert v.array.size == int(np.prod(shape))
        assert np.dtype(dtype).kind in "iufb"


@FUZZ
@given(sizes=st.lists(st.integers(-2, 9), min_size=1, max_size=4),
       typ=st.sampled_from(["short", "float", "double", "uchar", "int", "complex", "block", "bogus"]),
       encoding=st.sampled_from(["raw", "gzip", "ascii", "bzip2", "none"]),
       spacing=st.lists(weird, min_size=3, max_size=3), payload=st.binary(max_size=800))
def test_random_nrrd_headers(tmp_path_factory, sizes, typ, encoding, spacing, payload):
    header = (f"NRRD0004\ntype: {typ}\ndimension: {len(sizes)}\nsizes: {' '.join(map(str, sizes))}\n"
              f"encoding: {encoding}\nendian: little\nspace: left-posterior-superior\n"
              f"space directions: ({spacing[0]},0,0) (0,{spacing[1]},0) (0,0,{spacing[2]})\n\n")
    path = tmp_path_factory.mktemp("nrrd") / "r.nrrd"
    path.write_bytes(header.encode() + payload)
    _valid_or_error(path)


UNSAFE = st.sampled_from(["../evil.dcm", "../../etc/cron.d/x", "/abs/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm",
                          "..\\..\\evil.dcm", "ok/../../../evil"])


@FUZZ
@given(bad=UNSAFE, n_ok=st.integers(0, 3))
def test_zip_path_traversal_names_refused_and_nothing_written_outside(tmp_path_factory, bad, n_ok):
    root = tmp_path_factory.mktemp("zip")
    upload = root / "uploads" / "series.zip"
    upload.parent.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n_ok):
            zf.writestr(f"series/{i}.dcm", b"not really dicom")
        info = zipfile.ZipInfo("placeholder")
        info.filename = bad                   # bypass ZipInfo's own name clean-up
        zf.writestr(info, b"payload")
    upload.write_bytes(buf.getvalue())
    before = sorted(p for p in root.rglob("*"))
    with pytest.raises(VolumeError, match="unsafe file name|not a readable zip"):
        read_volume(upload)
    assert sorted(p for p in root.rglob("*")) == before


def test_zip_bomb_refused_before_extraction(tmp_path, monkeypatch):
    """A member that inflates 1000x is refused from the central directory, before any byte is inflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/0.dcm", b"\0" * (64 << 20))    # 64 MiB of zeros -> ~64 KiB
    path = tmp_path / "bomb.zip"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < (1 << 20)

    def no_inflate(*a, **k):
        raise AssertionError("a zip member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_inflate)
    with pytest.raises(VolumeError, match="zip bomb|over the limit"):
        read_volume(path)


def test_many_members_and_total_expansion_refused(tmp_path):
    """Many 1 MiB members (each just under the per-member ratio rule) whose sum is 40 MiB: refused
    by the total-expansion limit (4 x max_bytes) although the zip itself is small."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"s/{i}.dcm", b"\0" * (1 << 20))
    path = tmp_path / "wide.zip"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < (1 << 20)
    with pytest.raises(VolumeError, match="expands to"):
        read_volume(path, max_bytes=1 << 20)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".zip", ".dcm"])
def test_oversized_upload_refused_before_parsing(tmp_path, monkeypatch, suffix):
    """max_bytes is checked on the file size before any reader is called."""
    import SimpleITK as sitk

    path = tmp_path / f"big{suffix}"
    path.write_bytes(b"\0" * 5000)

    def boom(*a, **k):
        raise AssertionError("a reader was called for an oversized file")

    monkeypatch.setattr(nib, "load", boom)
    monkeypatch.setattr(zipfile, "ZipFile", boom)
    monkeypatch.setattr(sitk, "ImageFileReader", boom)
    with pytest.raises(VolumeError, match="over the .* limit"):
        read_volume(path, max_bytes=4096)
    assert issubclass(VolumeError, UsamError)
