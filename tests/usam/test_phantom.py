"""Synthetic pelvic CT phantom (anatomy label map + scanner model): determinism, anatomy,
HU per tissue, the stated shares over a 40-case cohort, cohort files and NIfTI geometry."""
import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from usam.errors import VolumeError
from usam.phantom import DEMO_SEED, demo_case, generate_case, ground_truth
from usam.phantom.cohort import case_seed, generate_cohort, load_anatomy, load_case, load_cohort, load_manifest
from usam.phantom.labels import L, NAMES, OPTIONAL, SEX_ORGANS, TISSUE_HU, TISSUE_OF
from usam.phantom.params import (DISTRACTOR_FRACTION, TUMOR_CONTRAST, TUMOR_FREE_FRACTION, draw_params)


@pytest.fixture(scope="module")
def case():
    return generate_case(11, size="small", has_tumor=True)


@pytest.fixture(scope="module")
def cohort40():
    """The first 40 cases of cohort seed 0 at the small size (what the tests of the shares read)."""
    return [generate_case(case_seed(0, i), "small").info for i in range(40)]


def test_small_case_shapes_labels_and_info(case):
    vol, lab = case.volume, case.labels
    assert vol.array.dtype == np.float32 and lab.dtype == np.uint8 and case.anatomy.dtype == np.uint8
    assert vol.array.shape == lab.shape == case.anatomy.shape and vol.array.shape[1:] == (128, 128)
    assert 1.9 <= vol.spacing[1] == vol.spacing[2] <= 2.0     # inside the app's training range (0.5-2 mm)
    assert set(np.unique(lab)) == {0, 1, 2}
    zs = np.flatnonzero(lab.reshape(len(lab), -1).any(axis=1))
    assert (case.info["rectum_start"], case.info["rectum_end"]) == (zs[0], zs[-1])
    zt = np.flatnonzero((lab == 2).reshape(len(lab), -1).any(axis=1))
    assert (case.info["tumor_start"], case.info["tumor_end"]) == (zt[0], zt[-1])
    voxel_ml = np.prod(vol.spacing) / 1000
    assert case.info["tumor_ml"] == pytest.approx((lab == 2).sum() * voxel_ml, abs=1e-3)
    assert case.info["has_tumor"] and case.info["spacing"] == list(vol.spacing)
    # the labelled rectum runs from the anorectal junction to the rectosigmoid junction (75-125 mm)
    length = case.params.rectum.length
    assert abs((zs[-1] - zs[0] + 1) * vol.spacing[0] - length) <= 2 * vol.spacing[0]
    # the slice at Z = 0 (anorectal junction) is the first labelled one
    z0 = case.info["z0_mm"]
    assert z0 + zs[0] * vol.spacing[0] == pytest.approx(0.0, abs=1e-6)


def test_labels_are_derived_from_the_anatomy_map(case):
    zs = case.info["z0_mm"] + case.volume.spacing[0] * np.arange(len(case.labels))
    assert np.array_equal(case.labels, ground_truth(case.anatomy, zs, case.params.rectum.length))
    a = case.anatomy
    assert np.all(np.isin(a[case.labels == 1], [L["rectum_wall"], L["rectum_folds"]]))
    assert np.all(a[case.labels == 2] == L["tumour"])
    # above the rectosigmoid junction the sigmoid continues unlabelled
    above = zs > case.params.rectum.length + 1
    assert not case.labels[above].any() and (a[above] == L["sigmoid_wall"]).any()


def test_deterministic_for_a_seed_and_varied_across_seeds():
    a, b = generate_case(5, "small"), generate_case(5, "small")
    assert np.array_equal(a.volume.array, b.volume.array) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.anatomy, b.anatomy) and a.info == b.info
    c = generate_case(6, "small")
    assert a.volume.array.shape != c.volume.array.shape or not np.array_equal(a.volume.array, c.volume.array)
    # the same seed is the same patient at both sizes (the scanner is drawn last)
    pa, pf = draw_params(5, "small"), draw_params(5, "full")
    assert pa.rectum == pf.rectum and pa.pelvis == pf.pelvis and pa.organs == pf.organs


@pytest.mark.parametrize("sex", ["male", "female"])
def test_every_structure_is_in_the_anatomy_map(sex):
    seed = next(s for s in range(1, 200) if draw_params(s, "small").organs.sex == sex)
    c = generate_case(seed, "small")
    present = {NAMES[i] for i in np.unique(c.anatomy)}
    other = SEX_ORGANS["female" if sex == "male" else "male"]
    assert set(NAMES) - OPTIONAL - set(other) <= present
    assert not set(other) & present
    # continuous across slices: the sacrum and the rectal wall have no gap along Z
    for name in ("sacrum", "rectum_wall", "femoral_head"):
        z = np.flatnonzero((c.anatomy == L[name]).reshape(len(c.anatomy), -1).any(axis=1))
        assert len(z) >= 2 and np.all(np.diff(z) == 1), name


def test_drawn_hu_lie_in_the_stated_ranges():
    for seed in range(60):
        cp = draw_params(seed, "full")
        ph = 1 if cp.scanner.phase == "portal-venous" else 0
        for tissue, ranges in TISSUE_HU.items():
            lo, hi = ranges[ph]
            assert lo <= cp.scanner.hu[tissue] <= hi, (seed, tissue)


def test_image_hu_per_tissue_inside_its_range():
    c = generate_case(3, "full")
    a, anat = c.volume.array, c.anatomy
    ph = 1 if c.params.scanner.phase == "portal-venous" else 0
    assert a.min() >= -1024 and a.max() <= 3071 and np.all(a == np.round(a))
    checked = 0
    for name in ("subcutaneous_fat", "pelvic_fat", "gluteus_maximus", "other_muscle", "urine", "femoral_head",
                 "iliac_artery", "bladder_wall", "rectum_wall"):
        core = ndimage.binary_erosion(anat == L[name], iterations=2, structure=np.ones((1, 3, 3)))
        if core.sum() < 50:
            continue
        lo, hi = TISSUE_HU[TISSUE_OF[name]][ph]
        med = float(np.median(a[core]))
        sc = c.params.scanner   # the scanner's slow bias, cupping and beam hardening come on top of the tissue mean
        margin = 15 + sc.cupping + sc.bias + sc.hardening
        assert lo - margin <= med <= hi + margin, (name, med, lo, hi)
        checked += 1
    assert checked >= 6
    # air around the patient and cortical bone look like CT
    assert np.median(a[anat == L["background"]]) < -900
    assert np.percentile(a[anat == L["femoral_head_cortex"]], 90) > 500


def test_stated_shares_over_a_40_case_cohort(cohort40):
    infos = cohort40
    gas_free = np.mean([i["gas_free_share"] for i in infos])
    assert gas_free >= 0.45                                     # README: about half of rectal slices have no gas
    near = np.mean([i["nearest_bowel_mm"] is not None and i["nearest_bowel_mm"] <= 20 for i in infos])
    assert near >= DISTRACTOR_FRACTION                          # a loop touches or lies within 2 cm
    tum = [i for i in infos if i["has_tumor"]]
    assert abs(len(tum) / len(infos) - (1 - TUMOR_FREE_FRACTION)) <= 0.12
    iso = np.mean([i["tumour_contrast_kind"] == "iso" for i in tum])
    assert abs(iso - TUMOR_CONTRAST["iso"][1]) <= 0.15
    assert all(abs(i["tumour_contrast_hu"]) <= 6.0 for i in tum if i["tumour_contrast_kind"] == "iso")
    assert {"gas", "fluid", "faeces", "collapsed"} <= {c for i in infos for c in i["content"]}
    assert {i["sex"] for i in infos} == {"male", "female"}
    # slice thickness at the full size: the same cohort's scanner draws
    thick = [draw_params(case_seed(0, i), "full").scanner.thickness for i in range(40)]
    assert np.mean([t >= 2.5 for t in thick]) >= 0.4 and min(thick) <= 1.25
    assert {"portal-venous", "non-contrast"} == {draw_params(case_seed(0, i), "full").scanner.phase for i in range(40)}


def test_collapsed_segment_has_no_lumen_and_gas_segment_has_gas():
    seed = next(s for s in range(200) if draw_params(s, "small").rectum.content[1] == "collapsed"
                and draw_params(s, "small").rectum.content[0] == "gas")
    c = generate_case(seed, "small")
    zs = c.info["z0_mm"] + c.volume.spacing[0] * np.arange(len(c.labels))
    L3 = c.params.rectum.length / 3
    mid = (zs > L3 + 8) & (zs < 2 * L3 - 8)
    low = (zs > 4) & (zs < L3 - 8)
    lumen = [L["rectum_gas"], L["rectum_fluid"], L["rectum_faeces"]]
    assert not np.isin(c.anatomy[mid], lumen).any()
    assert (c.anatomy[low] == L["rectum_gas"]).any()


def test_bad_size_rejected():
    with pytest.raises(VolumeError):
        generate_case(1, size="huge")


def test_demo_case_has_tumor():
    d = demo_case(0, size="small")
    assert d.info["has_tumor"] and d.info["seed"] == DEMO_SEED


def test_cohort_files_aligned_affine_and_manifest(tmp_path):
    generate_cohort(tmp_path / "a", 3, 2, size="small", npz_layout=True)
    man = load_manifest(tmp_path / "a")
    rows = load_cohort(tmp_path / "a")
    assert [r["case_id"] for r in rows] == ["case_000", "case_001", "case_002"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert man["anatomy_labels"]["0"] == "background" and man["anatomy_labels"][str(L["tumour"])] == "tumour"
    for key in ("sex", "content", "distractor", "tumour_contrast_hu", "slice_thickness", "phase", "prosthesis"):
        assert key in rows[0]
    with open(tmp_path / "a" / "manifest.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in csv_rows] == [r["case_id"] for r in rows]
    row = rows[0]
    vol, lab = load_case(tmp_path / "a", row)
    anat = load_anatomy(tmp_path / "a", row, vol)
    ref = generate_case(row["seed"], "small")
    assert np.array_equal(lab, ref.labels) and np.array_equal(vol.array, ref.volume.array)
    assert np.array_equal(anat, ref.anatomy)
    assert np.allclose(vol.affine, ref.volume.affine, atol=1e-4)
    # NIfTI affine: spacing on the diagonal, x index towards patient left, y towards posterior
    sz, sy, sx = vol.spacing
    assert np.allclose(np.abs(np.diag(vol.affine)[:3]), [sx, sy, sz])
    heads = np.argwhere(anat == L["femoral_head"])                 # (z, y, x)
    n = anat.shape[2]
    ras = lambda zyx: vol.affine @ np.array([zyx[2], zyx[1], zyx[0], 1.0])  # noqa: E731
    right = heads[heads[:, 2] < n // 2].mean(axis=0)
    left = heads[heads[:, 2] >= n // 2].mean(axis=0)
    assert ras(right)[0] > ras(left)[0]                            # RAS: +x = patient right
    sac = np.argwhere(anat == L["sacrum"]).mean(axis=0)
    bladder = np.argwhere(anat == L["urine"]).mean(axis=0)
    assert ras(bladder)[1] > ras(sac)[1]                            # bladder anterior to the sacrum
    assert lab[row["rectum_start"]].any() and not lab[: row["rectum_start"]].any()
    # deterministic: a second run writes the same manifest
    generate_cohort(tmp_path / "b", 3, 2, size="small")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == \
        json.loads((tmp_path / "b" / "manifest.json").read_text())
    # DataV6: one npz per foreground slice, arrays transposed (first axis = x)
    for split in ("train", "test"):
        with open(tmp_path / "a" / "DataV6" / split / f"{split}_bbox.csv") as f:
            names = [r[0] for r in list(csv.reader(f))[1:]]
        n_fg = sum(r["rectum_end"] - r["rectum_start"] + 1 for r in rows if r["split"] == split)
        assert len(names) == n_fg
        npz = np.load(tmp_path / "a" / "DataV6" / split / f"{split}_npz" / f"{names[0]}.npz")
        assert npz["image"].shape == npz["label"].shape == (224, 224)
        assert set(np.unique(npz["label"])) <= {0.0, 1.0, 2.0} and npz["label"].max() > 0


def test_unreadable_manifest_is_a_volume_error(tmp_path):
    with pytest.raises(VolumeError):
        load_cohort(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(VolumeError):
        load_cohort(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": 3}))
    with pytest.raises(VolumeError):
        load_cohort(tmp_path)


def test_cli_flags_of_python_m_usam_phantom(tmp_path, capsys):
    import argparse

    from usam.__main__ import main
    from usam.phantom import add_arguments

    out = tmp_path / "c"
    assert main(["phantom", "--cases", "3", "--seed", "4", "--out", str(out), "--size", "small",
                 "--npz-layout"]) == 0
    assert "wrote 3 cases" in capsys.readouterr().out
    rows = load_cohort(out)
    assert [r["seed"] for r in rows] == [case_seed(4, i) for i in range(3)]
    assert (out / rows[1]["anatomy"]).is_file()
    assert load_manifest(out)["generator"] == "usam.phantom (anatomy v2)"
    assert sorted(p.name for p in (out / "DataV6").iterdir()) == sorted({r["split"] for r in rows})
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    with pytest.raises(SystemExit):
        ap.parse_args(["--out", str(tmp_path), "--size", "huge"])
