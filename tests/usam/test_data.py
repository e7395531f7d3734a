"""Data readers, label resizing, training prompts (usam/data.py) and augmentation
(usam/training/augment.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from usam import data as D
from usam.errors import UsamError
from usam.training import augment as A


def _write_npz_root(root, names_train, names_test, image, label):
    for part, names in (("train", names_train), ("test", names_test)):
        (root / part / f"{part}_npz").mkdir(parents=True)
        with open(root / part / f"{part}_bbox.csv", "w") as fh:
            fh.write("name,bbox\n")
            for n in names:
                fh.write(f'{n},"[0, 0, 1, 1]"\n')
                # stored transposed: first axis = x
                np.savez(root / part / f"{part}_npz" / f"{n}.npz", image=image.T, label=label.T.astype(float))


def test_npz_reader_transposes_back_to_display_orientation(tmp_path):
    image = np.zeros((6, 8), np.float32)  # (y, x): 6 rows, 8 columns
    image[1, 5] = 0.75  # row 1, column 5
    label = np.zeros((6, 8), np.uint8)
    label[4, 2] = 2
    label[0, 7] = 3  # >2 -> tumour, as the public code does
    _write_npz_root(tmp_path, ["a_001", "b_002"], ["t_001"], image, label)
    img, lab = D.read_npz_slice(tmp_path / "train" / "train_npz" / "a_001.npz")
    assert img.shape == (6, 8) and lab.shape == (6, 8)
    assert img[1, 5] == pytest.approx(0.75) and img.sum() == pytest.approx(0.75)
    assert lab[4, 2] == 2 and lab[0, 7] == 2 and lab.sum() == 4
    assert D.detect_format(tmp_path) == "npz"
    # splits: test/ is test, train/ minus a stable val share is train
    assert [p.stem for p in D.list_npz_slices(tmp_path, "test")] == ["t_001"]
    train = D.list_npz_slices(tmp_path, "train", val_fraction=0.0)
    assert [p.stem for p in train] == ["a_001", "b_002"]
    with pytest.raises(UsamError):
        D.list_npz_slices(tmp_path, "val", val_fraction=0.0)
    assert len(D.list_npz_slices(tmp_path, "val", val_fraction=1.0)) == 2
    cases = list(D.iter_cases(tmp_path, "test"))
    assert cases[0].prewindowed and cases[0].image.shape == (1, 6, 8)


def test_detect_format_rejects_unknown_folder(tmp_path):
    with pytest.raises(UsamError, match="neither"):
        D.detect_format(tmp_path)


def test_resize_labels_nearest_and_onehot():
    lab = np.zeros((1, 448, 448), np.uint8)
    lab[0, 100:200, 100:200] = 1
    lab[0, 300:302, :] = 2  # a 2 px line: 1 px at 224
    for method in D.LABEL_RESIZE:
        out = D.resize_labels(lab, 224, method)
        assert out.shape == (1, 224, 224) and out.dtype == np.uint8
        assert (out[0] == 1).sum() == 50 * 50
    # an exact 2x downsampling keeps the 1 px line in both methods
    assert (D.resize_labels(lab, 224, "nearest")[0] == 2).sum() == 224
    with pytest.raises(UsamError):
        D.resize_labels(lab, 224, "cubic")


def test_rotate_pair_keeps_labels_and_fills():
    img = torch.zeros(32, 32)
    lab = torch.zeros(32, 32, dtype=torch.uint8)
    lab[10:22, 14:18] = 1
    r_img, r_lab = A.rotate_pair(img, lab, 90.0, fill=-1.0)
    # a 90 degree rotation turns the vertical bar horizontal, labels stay integers
    assert set(torch.unique(r_lab).tolist()) <= {0, 1}
    assert r_lab.sum().item() == lab.sum().item()
    rows = torch.nonzero(r_lab)[:, 0]
    assert rows.max() - rows.min() + 1 == 4
    img2, lab2 = A.rotate_pair(img, lab, 20.0, fill=-1.0)
    assert img2[0, 0].item() == pytest.approx(-1.0)  # the corner comes from outside: fill
    assert img2[16, 16].item() == pytest.approx(0.0)


def test_augment_pair_is_seeded_and_moves_image_with_label():
    img = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64)
    lab = torch.zeros(64, 64, dtype=torch.uint8)
    lab[5:9, 40:50] = 2
    seen_changed = 0
    for seed in range(12):
        a = A.augment_pair(img, lab, np.random.default_rng(seed))
        b = A.augment_pair(img, lab, np.random.default_rng(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        if not torch.equal(a[1], lab):
            seen_changed += 1
        if a[0].shape == img.shape and torch.equal(torch.sort(a[0].flatten())[0], torch.sort(img.flatten())[0]):
            # rot90/flip: a permutation of the pixels, applied alike to the label
            inside = a[0][a[1] == 2]
            assert torch.equal(torch.sort(inside)[0], torch.sort(img[lab == 2])[0])
    assert seen_changed >= 4
    # probabilities 0: identity
    same = A.augment_pair(img, lab, np.random.default_rng(0), p_rot90=0.0, p_rotate=0.0)
    assert torch.equal(same[0], img) and torch.equal(same[1], lab)


def _handwritten_augment(image, label, rng, p_rot90=0.5, p_rotate=0.5, max_degrees=20.0, fill=0.0):
    """The augmentation as it was written before MONAI's transforms (commit 12e8449)."""
    if rng.random() < p_rot90:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = torch.flip(torch.rot90(image, k, (0, 1)), (axis,))
        label = torch.flip(torch.rot90(label, k, (0, 1)), (axis,))
        return image.contiguous(), label.contiguous()
    if rng.random() < p_rotate:
        return A.rotate_pair(image, label, float(rng.uniform(-max_degrees, max_degrees)), fill)
    return image, label


def test_monai_rot90_flip_is_bit_identical_to_the_handwritten_one():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(40, 56, generator=g)  # not square: a wrong axis changes the shape
    lab = torch.randint(0, 3, (40, 56), generator=g).to(torch.uint8)
    for k in range(4):
        for axis in range(2):
            a_img, a_lab = A.rot90_flip_pair(img, lab, k, axis)
            ref_img = torch.flip(torch.rot90(img, k, (0, 1)), (axis,))
            ref_lab = torch.flip(torch.rot90(lab, k, (0, 1)), (axis,))
            assert type(a_img) is torch.Tensor and a_img.dtype == img.dtype and a_lab.dtype == torch.uint8
            assert torch.equal(a_img, ref_img) and torch.equal(a_lab, ref_lab), (k, axis)
    from monai.data import get_track_meta

    assert get_track_meta()  # MONAI's global MetaTensor flag is left as it was


def test_augmentation_same_seed_same_output_as_before():
    """Same seeds -> the same samples, bit for bit, as the hand-written augmentation."""
    g = torch.Generator().manual_seed(1)
    img = torch.randn(64, 64, generator=g)
    lab = torch.randint(0, 3, (64, 64), generator=g).to(torch.uint8)
    kinds = set()
    for seed in range(40):
        ours = A.augment_pair(img, lab, np.random.default_rng([3, 1, seed]), fill=-0.6)
        ref = _handwritten_augment(img, lab, np.random.default_rng([3, 1, seed]), fill=-0.6)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1]), seed
        kinds.add("same" if torch.equal(ours[0], img) else "rot90" if ours[0].abs().sum().isclose(img.abs().sum())
                  else "rotate")
    assert kinds == {"same", "rot90", "rotate"}  # all three branches were compared


def test_monai_rotated_agrees_with_our_rotation_within_float_rounding():
    """Why the rotation stays ours: MONAI's Rotated (angle of opposite sign) gives the same
    rotation only to float rounding (about 1e-4 here), not bit for bit."""
    import math

    from monai.transforms import Rotated

    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    img = torch.sin(xx / 7) + torch.cos(yy / 5)  # smooth, so a grid difference is a value difference
    lab = ((yy - 40) ** 2 + (xx - 55) ** 2 < 300).to(torch.uint8)
    for deg in (-17.0, 4.5, 12.0):
        ours_img, ours_lab = A.rotate_pair(img, lab, deg, fill=-1.0)
        out = Rotated(keys=["image", "label"], angle=-math.radians(deg), mode=["bilinear", "nearest"],
                      padding_mode="zeros")({"image": (img + 1.0)[None], "label": lab.float()[None]})
        monai_img = out["image"][0].as_tensor() - 1.0
        monai_lab = out["label"][0].as_tensor().round().to(torch.uint8)
        assert (monai_img - ours_img).abs().max().item() < 1e-3
        assert (monai_lab != ours_lab).float().mean().item() < 1e-3


def _slice_set(n=4):
    labels = torch.zeros(n, 224, 224, dtype=torch.uint8)
    labels[:, 100:130, 90:140] = 1
    labels[:, 110:120, 100:110] = 2
    images = torch.randn(n, 224, 224).to(torch.float16)
    return D.SliceSet(images, labels, [f"c{i // 2}" for i in range(n)], np.arange(n))


def test_train_slices_reproducible_per_epoch():
    ds = A.TrainSlices(_slice_set(), augment=True, seed=3)
    ds.set_epoch(1)
    x1, y1 = ds[2]
    x2, y2 = ds[2]
    assert x1.shape == (3, 224, 224) and y1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[0], x1[2])


def test_sample_prompts_points_box_and_classes():
    lab = np.zeros((224, 224), np.uint8)
    lab[100:130, 90:140] = 1
    lab[110:120, 100:110] = 2
    rng = np.random.default_rng(0)
    p = D.sample_prompts(lab, "points", 3, rng, negatives=2)
    assert len(p.points) == 8
    assert list(p.point_classes) == [1, 1, 1, 2, 2, 2, 0, 0]
    assert list(p.point_labels) == [1] * 6 + [0, 0]
    for (x, y), c, l in zip(p.points, p.point_classes, p.point_labels):
        # (x, y) = (column, row): the point lies on a pixel of its class
        v = lab[int(round(y)), int(round(x))]
        assert (v == c) if l == 1 else (v == 0)
    b = D.sample_prompts(lab, "box", 0, np.random.default_rng(1), max_margin=4)
    x0, y0, x1, y1 = b.boxes[0]
    assert len(b.points) == 0 and b.box_classes.tolist() == [0]
    assert 86 <= x0 <= 90 and 96 <= y0 <= 100 and 139 <= x1 <= 143 and 129 <= y1 <= 133
    bp = D.sample_prompts(lab, "box+points", 1, np.random.default_rng(2))
    assert len(bp.points) == 2 and len(bp.boxes) == 1
    assert D.sample_prompts(lab, "none", 3, rng).is_empty
    assert D.sample_prompts(np.zeros_like(lab), "box", 3, rng).is_empty
    # a box at the frame's edge stays inside the frame after jitter
    edge = np.zeros((224, 224), np.uint8)
    edge[0:5, 219:224] = 1
    e = D.sample_prompts(edge, "box", 0, np.random.default_rng(3), max_margin=4)
    assert e.boxes.min() >= 0 and e.boxes.max() <= 223


def test_choose_batch_mode_mixed_covers_all_rows():
    rng = np.random.default_rng(0)
    seen = {D.choose_batch_mode("mixed", 3, rng) for _ in range(200)}
    assert seen == set(D.MIXED_CHOICES)
    assert D.choose_batch_mode("points", 5, rng) == ("points", 5)
    with pytest.raises(UsamError):
        D.choose_batch_mode("scribble", 3, rng)


def test_eval_prompts_are_deterministic_and_in_model_frame():
    lab = np.zeros((448, 448), np.uint8)
    lab[200:260, 180:280] = 1
    a = D.eval_prompts(lab, "points3")
    b = D.eval_prompts(lab, "points3")
    assert np.array_equal(a.points, b.points) and len(a.points) == 3
    assert a.points[:, 0].min() >= 180 / 2 - 1 and a.points[:, 0].max() <= 280 / 2
    box = D.eval_prompts(lab, "box").boxes[0]
    assert box[0] == pytest.approx(90 - 0.25 - 2) and box[3] == pytest.approx((259 + 0.5) / 2 - 0.5 + 2)


def test_eval_z_range_from_manifest_or_extent():
    lab = np.zeros((10, 4, 4), np.uint8)
    lab[3:6, 1, 1] = 1
    assert D.eval_z_range(lab) == (3, 6)
    assert D.eval_z_range(lab, {"rectum_start": 2, "rectum_end": 7}) == (2, 8)
    assert D.eval_z_range(np.zeros_like(lab)) is None


def test_phantom_cohort_lists_and_loads_with_absolute_paths(tmp_path):
    from usam.phantom import generate_cohort

    generate_cohort(tmp_path, cases=3, seed=1, size="small")
    rows = D.list_cases(tmp_path, "test")
    assert len(rows) == 1 and rows[0]["split"] == "test"
    for key in ("image", "label", "anatomy"):
        assert rows[0][key].startswith(str(tmp_path.resolve())) and (tmp_path / rows[0][key]).is_file()
    assert D.eval_z_range(np.zeros((rows[0]["shape"][0], 1, 1), np.uint8), rows[0]) == \
        (rows[0]["rectum_start"], rows[0]["rectum_end"] + 1)
