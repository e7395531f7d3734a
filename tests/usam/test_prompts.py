"""Prompts: coordinate conversion, automatic points and boxes, validation."""
import numpy as np
import pytest

from usam.errors import PromptError
from usam.prompts import Prompts, box_from_mask, model_to_slice, points_from_mask, slice_to_model


def _labels(h=224, w=224):
    lab = np.zeros((h, w), np.uint8)
    lab[100:120, 80:110] = 1
    lab[105:112, 90:100] = 2
    return lab


def test_slice_model_round_trip_and_pixel_centres():
    xy = np.array([[0, 0], [511, 511], [255.5, 100.25]])
    m = slice_to_model(xy, (512, 512))
    np.testing.assert_allclose(model_to_slice(m, (512, 512)), xy, atol=1e-4)
    # pixel centres map onto pixel centres of the bilinear resize (align_corners=False)
    np.testing.assert_allclose(slice_to_model([[0, 0]], (448, 448)), [[-0.25, -0.25]], atol=1e-6)
    np.testing.assert_allclose(slice_to_model([[10, 20]], (224, 224)), [[10, 20]], atol=1e-6)
    # x follows the width, y the height
    np.testing.assert_allclose(slice_to_model([[447, 223]], (224, 448)), [[223.25, 223]], atol=1e-5)


def test_points_from_mask_deterministic_raster_order():
    lab = _labels()
    p = points_from_mask(lab, k=3, rng=None)
    assert p.points.shape == (6, 2) and list(p.point_classes) == [1, 1, 1, 2, 2, 2]
    assert (p.point_labels == 1).all()
    for (x, y), c in zip(p.points.astype(int), p.point_classes):
        assert lab[y, x] == c  # (x, y) order, on the right class
    # slot 0 of the raster order is the first pixel of the class
    rows, cols = np.nonzero(lab == 1)
    assert tuple(p.points[0]) == (cols[0], rows[0])
    # evenly spaced: slots 0, 2, 4 of 10 linspace slots
    slots = np.linspace(0, len(rows) - 1, 10).round().astype(int)[[0, 2, 4]]
    np.testing.assert_array_equal(p.points[:3], np.stack([cols[slots], rows[slots]], 1))
    assert points_from_mask(lab, k=3) .to_dict() == p.to_dict()


def test_points_from_mask_random_negatives_and_absent_class():
    lab = _labels()
    lab[lab == 2] = 1
    rng = np.random.default_rng(0)
    p = points_from_mask(lab, k=5, rng=rng, negatives=2)
    assert list(p.point_classes) == [1] * 5 + [0, 0] and list(p.point_labels) == [1] * 5 + [0, 0]
    xy = p.points.astype(int)
    assert all(lab[y, x] == 1 for x, y in xy[:5]) and all(lab[y, x] == 0 for x, y in xy[5:])
    assert points_from_mask(np.zeros((50, 50)), k=3).is_empty


def test_points_from_mask_on_a_larger_slice_are_in_the_model_frame():
    lab = np.zeros((448, 448), np.uint8)
    lab[200:240, 160:220] = 2
    p = points_from_mask(lab, k=1)
    back = model_to_slice(p.points, lab.shape).round().astype(int)
    assert lab[back[0, 1], back[0, 0]] == 2
    assert p.points.max() < 224


def test_box_from_mask_union_and_per_class():
    lab = _labels()
    u = box_from_mask(lab)
    np.testing.assert_allclose(u.boxes, [[78, 98, 111, 121]])
    assert list(u.box_classes) == [0]
    pc = box_from_mask(lab, margin=0, per_class=True)
    np.testing.assert_allclose(pc.boxes, [[80, 100, 109, 119], [90, 105, 99, 111]])
    assert list(pc.box_classes) == [1, 2]
    edge = np.zeros((224, 224), np.uint8)
    edge[0:5, 220:224] = 1
    np.testing.assert_allclose(box_from_mask(edge).boxes, [[218, 0, 223, 6]])
    assert box_from_mask(np.zeros((10, 10))).is_empty


def test_prompts_validation_and_dict_round_trip():
    p = Prompts(points=[[1, 2]], point_labels=[1], point_classes=[2], boxes=[[0, 0, 5, 5]], box_classes=[0])
    assert Prompts.from_dict(p.to_dict()).to_dict() == p.to_dict()
    assert p.signature == (1, 1) and Prompts.empty().is_empty
    assert (p + Prompts(points=[[3, 3]], point_labels=[0])).signature == (2, 1)
    with pytest.raises(PromptError):
        Prompts(points=[[300, 2]], point_labels=[1])
    with pytest.raises(PromptError):
        Prompts(points=[[3, 2]], point_labels=[2])
    with pytest.raises(PromptError):
        Prompts(points=[[3, 2]], point_labels=[1], point_classes=[5])
    with pytest.raises(PromptError):
        Prompts(boxes=[[10, 10, 5, 5]])
