"""Issue 13 §1 replayed on the library path (usam.volumes.read_volume, what /load_volume and
/load_reference call): a volume file must never make the reader open another file. NRRD detached
headers and every spelling of `data file`, MetaImage ElementDataFile, NIfTI / Analyze
header-image pairs are refused with a clear message before any reader library sees the file;
the format is told by content, not by name."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from usam.errors import VolumeError
from usam.volumes import detect_format, read_volume

SECRET = b"USAM_STUDY_ADMIN_PASSWORD=hunter2-do-not-leak\n" * 20


@pytest.fixture()
def secret(tmp_path) -> Path:
    p = tmp_path / "secret.bin"
    p.write_bytes(SECRET[:512])
    return p


@pytest.fixture()
def no_reader_library(monkeypatch):
    """Fail the test if SimpleITK or nibabel's image loader is reached: refusal comes first."""
    import SimpleITK as sitk

    def boom(*a, **k):
        raise AssertionError("a reader library was called for a file that names another file")

    monkeypatch.setattr(sitk, "ImageFileReader", boom)
    monkeypatch.setattr(nib, "load", boom)


def _nrrd(data_line: str, sep: str = "\n") -> bytes:
    lines = ["NRRD0004", "type: uint8", "dimension: 3", "sizes: 8 8 8", "spacings: 1 1 1", "encoding: raw"]
    return (sep.join(lines) + sep + data_line + "\n").encode("latin-1")


@pytest.mark.parametrize("name", ["upload.nrrd", "upload.nhdr", "upload.nii", "upload"])
@pytest.mark.parametrize("data_line", [
    "data file: {p}", "datafile: {p}", "DATA FILE: {p}", "data\tfile: {p}", "data_file: {p}",
    "data file: LIST\n{p}", "data file: ./{n}", "  data file: {p}",
])
def test_nrrd_external_data_refused(tmp_path, secret, no_reader_library, name, data_line):
    up = tmp_path / "up" / name
    up.parent.mkdir()
    up.write_bytes(_nrrd(data_line.format(p=secret, n=secret.name)))
    with pytest.raises(VolumeError, match="separate data file"):
        read_volume(up)
    assert secret.read_bytes() == SECRET[:512]


def test_nrrd_data_file_hidden_behind_a_carriage_return(tmp_path, secret, no_reader_library):
    """NrrdIO ends a header line at a lone CR too: the check splits lines the same way."""
    up = tmp_path / "cr.nrrd"
    up.write_bytes(_nrrd(f"data file: {secret}", sep="\r"))
    with pytest.raises(VolumeError, match="separate data file"):
        read_volume(up)


def test_nrrd_without_attached_data_refused(tmp_path, no_reader_library):
    up = tmp_path / "header_only.nrrd"
    up.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: raw\n")   # no blank line
    with pytest.raises(VolumeError, match="no data attached"):
        read_volume(up)


def test_the_reported_attack_reads_nothing_of_proc_environ(tmp_path, no_reader_library):
    up = tmp_path / "x.nrrd"
    up.write_bytes(_nrrd("data file: /proc/self/environ"))
    with pytest.raises(VolumeError) as e:
        read_volume(up)
    assert "/proc" not in str(e.value) and "environ" not in str(e.value)


@pytest.mark.parametrize("name", ["x.mha", "x.mhd", "x.nrrd", "x.nii"])
@pytest.mark.parametrize("edf", ["/etc/passwd", "{p}", "LIST", "LOCAL"])
def test_metaimage_refused(tmp_path, secret, no_reader_library, name, edf):
    up = tmp_path / name
    up.write_bytes(("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\n"
                    f"ElementDataFile = {edf.format(p=secret)}\n").encode())
    with pytest.raises(VolumeError, match="MetaImage|separate data file"):
        read_volume(up)


@pytest.mark.parametrize("klass", [nib.Nifti1Pair, nib.AnalyzeImage, nib.Nifti2Pair])
@pytest.mark.parametrize("upload_name", ["scan.nii", "scan.hdr", "scan.nii.gz"])
def test_header_image_pairs_refused(tmp_path, no_reader_library, klass, upload_name):
    """A pair's header sits next to its .img: uploaded under any name it is refused, and the
    neighbouring .img (which a name-based reader would open) is never read."""
    data = np.arange(16 * 16 * 4, dtype=np.int16).reshape(16, 16, 4)
    src = tmp_path / "pair.hdr"
    nib.save(klass(data, np.eye(4)), str(src))
    up = tmp_path / "up" / upload_name
    up.parent.mkdir()
    raw = src.read_bytes()
    if upload_name.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw)
    up.write_bytes(raw)
    os.replace(tmp_path / "pair.img", up.parent / (up.name.split(".")[0] + ".img"))
    with pytest.raises(VolumeError, match="pairs"):
        read_volume(up)


def test_format_from_content_not_name(tmp_path):
    data = (np.arange(16 * 16 * 4) % 300).reshape(16, 16, 4).astype(np.int16)
    nii = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1])), str(nii))
    renamed = tmp_path / "looks_like.zip"
    renamed.write_bytes(nii.read_bytes())
    assert detect_format(renamed) == "nifti1-gz"
    assert np.array_equal(read_volume(renamed).array, read_volume(nii).array)
    # a zip named .nii.gz is a zip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("s/0.dcm", b"not dicom")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(buf.getvalue())
    assert detect_format(fake) == "zip"
    with pytest.raises(VolumeError, match="no DICOM series"):
        read_volume(fake)


def test_symlink_member_and_member_count_refused(tmp_path):
    from usam.volumes import VolumeLimits

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("s/link.dcm")
        info.external_attr = (0o120777 << 16)        # a symbolic link to /etc/passwd
        zf.writestr(info, "/etc/passwd")
    p = tmp_path / "link.zip"
    p.write_bytes(buf.getvalue())
    with pytest.raises(VolumeError, match="symbolic link"):
        read_volume(p)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(11):
            zf.writestr(f"s/{i}.dcm", b"x")
    p = tmp_path / "many.zip"
    p.write_bytes(buf.getvalue())
    with pytest.raises(VolumeError, match="holds 11 files"):
        read_volume(p, limits=VolumeLimits(max_zip_members=10))


def test_library_messages_carry_no_server_paths(tmp_path):
    deep = tmp_path / "srv" / "gradio" / "0123abcd"
    deep.mkdir(parents=True)
    for name, raw in [("t.nii.gz", b"\x1f\x8b" + b"\x00" * 40), ("t.nrrd", b"NRRD0004\ntype: bogus\n\nxx"),
                      ("t.zip", b"PK\x03\x04 broken" * 10), ("t.dcm", b"\0" * 128 + b"DICM" + b"\1" * 64)]:
        p = deep / name
        p.write_bytes(raw)
        with pytest.raises(VolumeError) as e:
            read_volume(p)
        assert str(tmp_path) not in str(e.value) and "/srv/gradio" not in str(e.value), str(e.value)
