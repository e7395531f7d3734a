"""Volume I/O: canonical orientation, label map round trips, DICOM HU and PHI, bad input."""
import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from usam.errors import VolumeError
from usam.volumes import (Volume, read_labelmap, read_volume, volume_hash, write_labelmap,
                          write_volume)


def marker_array(shape=(20, 24, 12)):
    """Distinct values everywhere, so any flip or transpose is detected."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 1000.0


def save_nifti(path, data, axcodes, zooms=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0)):
    """NIfTI whose voxel axes point along axcodes (e.g. 'LAS')."""
    aff = np.eye(4)
    for i, code in enumerate(axcodes):
        axis = "RAS".index(code) if code in "RAS" else "LPI".index(code)
        aff[:3, i] = 0
        aff[axis, i] = zooms[i] * (1 if code in "RAS" else -1)
    aff[:3, 3] = origin
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return aff


def world(aff, ijk):
    return (aff @ np.r_[np.asarray(ijk, float), 1.0])[:3]


@pytest.mark.parametrize("axcodes", ["RAS", "LAS", "RPI", "LPS", "PSR"])
def test_nifti_canonical_orientation_and_labelmap_lands_on_same_world_voxels(tmp_path, axcodes):
    data = marker_array()
    aff = save_nifti(tmp_path / "ct.nii.gz", data, axcodes)
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert vol.array.dtype == np.float32 and vol.array.ndim == 3
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    # every canonical voxel holds the value of the disk voxel at the same world position
    z, y, x = 3, 5, 7
    value = vol.array[z, y, x]
    ijk = np.argwhere(data == value)[0]
    assert np.allclose(world(vol.affine, (x, y, z)), world(aff, ijk))
    assert sorted(vol.spacing) == pytest.approx([0.8, 0.9, 2.5])
    # a label map written from canonical labels overlays the input voxels in world space
    labels = np.zeros(vol.array.shape, np.uint8)
    labels[z, y, x] = 2
    labels[1, 2, 3] = 1
    out = write_labelmap(labels, vol, tmp_path / "lab.nii.gz")
    lab_img = nib.load(str(out))
    assert np.allclose(lab_img.affine, aff) and lab_img.shape == data.shape
    assert lab_img.get_data_dtype() == np.uint8
    disk = np.asarray(lab_img.dataobj)
    assert np.array_equal(np.argwhere(disk == 2)[0], ijk)
    assert np.allclose(world(aff, np.argwhere(disk == 1)[0]), world(vol.affine, (3, 2, 1)))
    assert np.array_equal(read_labelmap(out, reference=vol), labels)


def test_four_d_single_volume_ok_and_bad_shapes_rejected(tmp_path):
    data = marker_array()[..., None]
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "a.nii"))
    assert read_volume(tmp_path / "a.nii").array.shape == (12, 24, 20)
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 12, 2), np.float32), np.eye(4)), str(tmp_path / "b.nii"))
    with pytest.raises(VolumeError, match="single 3D"):
        read_volume(tmp_path / "b.nii")
    nib.save(nib.Nifti1Image(np.zeros((20, 24), np.float32), np.eye(4)), str(tmp_path / "c.nii"))
    with pytest.raises(VolumeError, match="3D"):
        read_volume(tmp_path / "c.nii")


@pytest.mark.parametrize("make, message", [
    (lambda: np.full((16, 16, 4), np.nan, np.float32), "NaN"),
    (lambda: np.full((16, 16, 4), np.inf, np.float32), "NaN or infinite"),
    (lambda: np.zeros((16, 16, 4), np.complex64), "real number"),
])
def test_bad_values_rejected(tmp_path, make, message):
    nib.save(nib.Nifti1Image(make(), np.eye(4)), str(tmp_path / "x.nii"))
    with pytest.raises(VolumeError, match=message):
        read_volume(tmp_path / "x.nii")


def test_absurd_spacing_and_size_limit(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.float32), np.diag([1, 1, 500, 1])), str(tmp_path / "s.nii"))
    with pytest.raises(VolumeError, match="spacing"):
        read_volume(tmp_path / "s.nii")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.float32), np.eye(4)), str(tmp_path / "ok.nii"))
    with pytest.raises(VolumeError, match="limit"):
        read_volume(tmp_path / "ok.nii", max_bytes=1000)


def test_header_claiming_huge_volume_rejected_before_reading(tmp_path):
    img = nib.Nifti1Image(np.zeros((16, 16, 4), np.int16), np.eye(4))
    raw = bytearray(img.header.binaryblock)
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    hdr.set_data_shape((4000, 4000, 4000))
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
    with pytest.raises(VolumeError, match="too large"):
        read_volume(path)


def test_truncated_and_garbage_files(tmp_path):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32), np.eye(4)),
             str(tmp_path / "t.nii.gz"))
    raw = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError):
        read_volume(tmp_path / "t.nii.gz")
    (tmp_path / "g.nii.gz").write_bytes(b"not a gzip file at all" * 20)
    with pytest.raises(VolumeError):
        read_volume(tmp_path / "g.nii.gz")
    (tmp_path / "g.zip").write_bytes(b"PK\x03\x04 broken" * 20)
    with pytest.raises(VolumeError, match="zip"):
        read_volume(tmp_path / "g.zip")
    (tmp_path / "e.nii").write_bytes(b"")
    with pytest.raises(VolumeError, match="empty"):
        read_volume(tmp_path / "e.nii")
    with pytest.raises(VolumeError, match="unsupported"):
        read_volume(_touch(tmp_path / "x.png"))
    with pytest.raises(VolumeError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")


def _touch(p: Path) -> Path:
    p.write_bytes(b"x")
    return p


# ----------------------------------------------------------------------------- DICOM

def write_dicom_series(folder: Path, n=5, rows=16, cols=20, series_uid="1.2.826.0.1.3680043.8.498.1",
                       slope=2.0, intercept=-1024.0, shuffle=True):
    """A tiny CT series with rescale slope/intercept and a patient name; returns stored values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 1500, size=(n, rows, cols)).astype(np.uint16)
    order = rng.permutation(n) if shuffle else np.arange(n)
    for file_idx, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-778899"
        ds.PatientBirthDate = "19500101"
        ds.InstitutionName = "Secret Hospital"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.98"
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [-10.0, -20.0, 100.0 + 2.5 * int(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.8]                  # row spacing (y), column spacing (x)
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"img{file_idx:03d}.dcm", enforce_file_format=True)
    return stored


def test_dicom_folder_hu_geometry_and_no_phi(tmp_path):
    stored = write_dicom_series(tmp_path / "series")
    vol = read_volume(tmp_path / "series")
    # DICOM patient axes are LPS: columns go to patient left, rows posterior -> canonical as is
    assert np.allclose(vol.array, stored * 2.0 - 1024.0)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert np.allclose(world(vol.affine, (0, 0, 0)), [10.0, 20.0, 100.0])   # LPS (-10,-20,100) in RAS
    text = repr(vol.source)
    for phi in ("Doe", "Jane", "PID-778899", "19500101", "Secret", "1.2.826.0.1.3680043.8.498"):
        assert phi not in text
    # label maps of a DICOM input are written in its voxel order with its geometry
    labels = np.zeros(vol.array.shape, np.uint8)
    labels[1, 2, 3] = 1
    out = write_labelmap(labels, vol, tmp_path / "lab.nii.gz")
    assert np.array_equal(read_labelmap(out, reference=vol), labels)
    assert "Doe" not in (tmp_path / "lab.nii.gz").read_bytes().decode("latin-1")


def zip_folder(folder: Path, out: Path, prefix="") -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return out


def test_dicom_zip_ok_and_several_series_rejected(tmp_path):
    stored = write_dicom_series(tmp_path / "a" / "one")
    vol = read_volume(zip_folder(tmp_path / "a", tmp_path / "one.zip"))
    assert np.allclose(vol.array, stored * 2.0 - 1024.0)
    write_dicom_series(tmp_path / "a" / "two", series_uid="1.2.826.0.1.3680043.8.498.2")
    with pytest.raises(VolumeError, match="series"):
        read_volume(zip_folder(tmp_path / "a", tmp_path / "two.zip"))


def test_zip_path_traversal_and_bomb_rejected(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../../etc/evil.dcm", b"x" * 100)
    with pytest.raises(VolumeError, match="unsafe"):
        read_volume(tmp_path / "evil.zip")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (8 << 20))
    with pytest.raises(VolumeError, match="zip bomb"):
        read_volume(tmp_path / "bomb.zip")


# ----------------------------------------------------------------------------- NRRD, writing, hashing

def test_nrrd_read_and_labelmap_round_trip(tmp_path):
    import nrrd

    data = marker_array((12, 16, 6))  # pynrrd order (x, y, z)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.7, 0.8, 3.0]),
              "space origin": np.array([1.0, 2.0, 3.0])}
    nrrd.write(str(tmp_path / "ct.nrrd"), data, header, index_order="F")
    vol = read_volume(tmp_path / "ct.nrrd")
    assert np.allclose(vol.array, data.transpose(2, 1, 0))   # LPS axes: already canonical
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.7))
    labels = (vol.array > vol.array.mean()).astype(np.uint8)
    for name in ("lab.nrrd", "lab.nii.gz"):
        assert np.array_equal(read_labelmap(write_labelmap(labels, vol, tmp_path / name), reference=vol), labels)


def test_write_volume_round_trip_and_labelmap_checks(tmp_path):
    data = marker_array()
    save_nifti(tmp_path / "ct.nii.gz", data, "RPI")
    vol = read_volume(tmp_path / "ct.nii.gz")
    again = read_volume(write_volume(vol, tmp_path / "copy.nii.gz"))
    assert np.array_equal(again.array, vol.array) and np.allclose(again.affine, vol.affine)
    assert volume_hash(again) == volume_hash(vol)
    changed = Volume(vol.array + 1, vol.spacing, vol.affine, vol.source)
    assert volume_hash(changed) != volume_hash(vol)
    with pytest.raises(VolumeError, match="shape"):
        write_labelmap(np.zeros((2, 2, 2), np.uint8), vol, tmp_path / "l.nii.gz")
    with pytest.raises(VolumeError, match="0..255"):
        write_labelmap(np.full(vol.array.shape, 300), vol, tmp_path / "l.nii.gz")
    other = np.zeros((16, 16, 4), np.uint8)
    nib.save(nib.Nifti1Image(other, np.eye(4)), str(tmp_path / "other.nii.gz"))
    with pytest.raises(VolumeError, match="shape"):
        read_labelmap(tmp_path / "other.nii.gz", reference=vol)


def test_nifti_scaling_gives_hu(tmp_path):
    stored = np.random.default_rng(2).integers(0, 2000, size=(16, 16, 5)).astype(np.int16)
    img = nib.Nifti1Image(stored, np.diag([-0.7, -0.7, 2.0, 1.0]))  # already L, P, S
    img.header.set_slope_inter(0.5, -1024)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    vol = read_volume(tmp_path / "scaled.nii.gz")
    assert np.allclose(vol.array, stored.transpose(2, 1, 0) * 0.5 - 1024)
