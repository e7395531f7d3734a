"""Synthetic pelvic CT phantom: labels, HU ranges, determinism, cohort files and DataV6 layout."""
import csv
import json

import numpy as np
import pytest

from usam.errors import VolumeError
from usam.phantom import (DEMO_SEED, _draw_params, demo_case, generate_case, generate_cohort,
                          load_case, load_cohort)


@pytest.fixture(scope="module")
def case():
    return generate_case(11, size="small", has_tumor=True)


def test_small_case_shapes_labels_and_info(case):
    vol, lab = case.volume, case.labels
    assert vol.array.dtype == np.float32 and lab.dtype == np.uint8
    assert vol.array.shape == lab.shape and vol.array.shape[1:] == (128, 128)
    assert 20 <= vol.array.shape[0] <= 48
    assert set(np.unique(lab)) == {0, 1, 2}
    zs = np.flatnonzero(lab.reshape(len(lab), -1).any(axis=1))
    assert (case.info["rectum_start"], case.info["rectum_end"]) == (zs[0], zs[-1])
    zt = np.flatnonzero((lab == 2).reshape(len(lab), -1).any(axis=1))
    assert (case.info["tumor_start"], case.info["tumor_end"]) == (zt[0], zt[-1])
    voxel_ml = np.prod(vol.spacing) / 1000
    assert case.info["tumor_ml"] == pytest.approx((lab == 2).sum() * voxel_ml, abs=1e-3)
    assert case.info["has_tumor"] and case.info["spacing"] == list(vol.spacing)
    # the rectum covers a clinically plausible cranio-caudal range
    assert 55 <= (zs[-1] - zs[0] + 1) * vol.spacing[0] <= 175


@pytest.fixture(scope="module")
def full():
    return generate_case(3, size="full", has_tumor=True)


def test_hu_ranges_are_ct_like(full):
    a, lab = full.volume.array, full.labels
    assert a.min() >= -1024 and a.max() > 700           # air and cortical bone
    assert np.all(a == np.round(a))                     # integer HU like a scanner
    wall = np.median(a[lab == 1])
    tumor = np.median(a[lab == 2])
    assert 10 < wall < 80
    assert tumor > wall + 20                            # enhancing tumor stands out from the wall
    # the wall stands out from the fat just outside it
    from scipy import ndimage
    ring = ndimage.binary_dilation(lab > 0, iterations=3) & ~ndimage.binary_dilation(lab > 0, iterations=1)
    assert np.median(a[ring]) < wall - 60


def test_full_size_case_geometry(full):
    c = full
    sz, sy, sx = c.volume.spacing
    assert c.volume.array.shape[1:] == (512, 512)
    assert 0.6 <= sy == sx <= 1.0 and sz in (0.625, 1.25)
    assert 60 <= c.volume.array.shape[0] <= 152
    n_rect = c.info["rectum_end"] - c.info["rectum_start"] + 1
    assert n_rect >= 0.4 * c.volume.array.shape[0]
    assert set(np.unique(c.labels)) == {0, 1, 2}
    # tumor is thicker than the 2-5 mm normal wall: compare mean radial extents via distance maps
    from scipy import ndimage
    z = (c.info["tumor_start"] + c.info["tumor_end"]) // 2
    depth = ndimage.distance_transform_edt(c.labels[z] > 0, sampling=(sy, sx))
    assert depth[c.labels[z] == 2].max() > depth[c.labels[z] == 1].max() + 1.5


def test_deterministic_for_a_seed_and_varied_across_seeds():
    a, b = generate_case(5, "small"), generate_case(5, "small")
    assert np.array_equal(a.volume.array, b.volume.array) and np.array_equal(a.labels, b.labels)
    assert a.info == b.info
    c = generate_case(6, "small")
    assert a.volume.array.shape != c.volume.array.shape or not np.array_equal(a.volume.array, c.volume.array)


def test_tumor_free_cases_exist_at_a_sensible_rate():
    rng_flags = [_draw_params(np.random.default_rng(s), "small", None)["has_tumor"] for s in range(400)]
    free = 1 - np.mean(rng_flags)
    assert 0.08 <= free <= 0.25
    c = generate_case(1, "small", has_tumor=False)
    assert not (c.labels == 2).any() and (c.labels == 1).any() and c.info["tumor_start"] == -1


def test_bad_size_rejected():
    with pytest.raises(VolumeError):
        generate_case(1, size="huge")


def test_demo_case_has_tumor():
    d = demo_case(0, size="small")
    assert d.info["has_tumor"] and d.info["seed"] == DEMO_SEED


def test_cohort_files_splits_determinism_and_npz_layout(tmp_path):
    from usam.__main__ import main

    assert main(["phantom", "--cases", "4", "--seed", "2", "--out", str(tmp_path / "a"), "--size", "small",
                 "--npz-layout"]) == 0
    rows = load_cohort(tmp_path / "a")
    assert [r["case_id"] for r in rows] == ["case_000", "case_001", "case_002", "case_003"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    with open(tmp_path / "a" / "manifest.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in csv_rows] == [r["case_id"] for r in rows]
    assert set(csv_rows[0]) >= {"spacing", "tumor_ml", "rectum_start", "rectum_end", "split", "seed"}
    vol, lab = load_case(tmp_path / "a", rows[0])
    ref = generate_case(rows[0]["seed"], "small")
    assert np.array_equal(lab, ref.labels) and np.array_equal(vol.array, ref.volume.array)
    assert np.allclose(vol.affine, ref.volume.affine, atol=1e-4)
    assert lab[rows[0]["rectum_start"]].any() and not lab[: rows[0]["rectum_start"]].any()
    # deterministic: a second run writes the same manifest and labels
    generate_cohort(tmp_path / "b", 4, 2, size="small")
    m_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    m_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m_a == m_b
    # DataV6: csv col 0 = npz basename, one npz per foreground slice, arrays transposed (first axis = x)
    for split in ("train", "test"):
        with open(tmp_path / "a" / "DataV6" / split / f"{split}_bbox.csv") as f:
            names = [r[0] for r in list(csv.reader(f))[1:]]
        n_fg = sum(r["rectum_end"] - r["rectum_start"] + 1 for r in rows if r["split"] == split)
        assert len(names) == n_fg
        npz = np.load(tmp_path / "a" / "DataV6" / split / f"{split}_npz" / f"{names[0]}.npz")
        assert npz["image"].shape == npz["label"].shape == (224, 224)
        assert 0.0 <= npz["image"].min() and npz["image"].max() <= 1.0
        assert set(np.unique(npz["label"])) <= {0.0, 1.0, 2.0} and npz["label"].max() > 0
    name = names[0]
    case_id, z = name.rsplit("_z", 1)
    row = next(r for r in rows if r["case_id"] == case_id)
    _, lab = load_case(tmp_path / "a", row)
    from PIL import Image
    expect = np.asarray(Image.fromarray(lab[int(z)]).resize((224, 224), Image.NEAREST))
    assert np.array_equal(npz["label"].T, expect)
