"""Prompts: coordinate conversion, automatic points and boxes, validation."""
import numpy as np
import pytest

from usam.errors import PromptError
from usam.prompts import (Prompts, SlicePrompts, box_from_mask, model_to_slice, points_from_mask,
                          slice_box_from_mask, slice_points_from_mask, slice_to_model)


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


def _two_classes(shape: tuple[int, int]) -> np.ndarray:
    """A wall block with a tumor inside it, placed relative to the slice's size."""
    h, w = shape
    lab = np.zeros(shape, np.uint8)
    lab[h // 4:h // 2, w // 3:w // 2] = 1
    lab[h // 3:h // 2 - 2, w // 3 + 2:w // 2 - 1] = 2
    return lab


@pytest.mark.parametrize("shape", [(224, 224), (512, 512), (96, 80), (100, 333)])
def test_slice_points_from_mask_are_points_from_mask_in_slice_pixels(shape):
    """Integer slice pixels on their class (the evenly spaced raster slots); converted they are points_from_mask's."""
    h, w = shape
    lab = _two_classes(shape)
    lab[h - 3:, w - 2:] = 2  # a class pixel on the last row and column
    sp = slice_points_from_mask(lab, k=3)
    assert isinstance(sp, SlicePrompts) and list(sp.point_classes) == [1, 1, 1, 2, 2, 2]
    for c, pts in ((1, sp.points[:3]), (2, sp.points[3:])):
        rows, cols = np.nonzero(lab == c)
        slots = np.linspace(0, len(rows) - 1, 10).round().astype(int)[[0, 2, 4]]
        np.testing.assert_array_equal(pts, np.stack([cols[slots], rows[slots]], 1))
    np.testing.assert_array_equal(sp.to_model(shape).points, points_from_mask(lab, k=3).points)
    last = slice_points_from_mask(np.where(lab == 2, 0, lab) + (np.arange(w) == w - 1) * 2, k=1)
    assert last.points[-1, 0] == w - 1  # the last column stays on the slice
    rng = np.random.default_rng(3)
    rp = slice_points_from_mask(lab, k=4, rng=rng, negatives=2)
    assert list(rp.point_labels) == [1] * 8 + [0, 0]
    xy = rp.points.astype(int)
    np.testing.assert_array_equal(rp.points, xy)
    assert [lab[y, x] for x, y in xy] == [1] * 4 + [2] * 4 + [0, 0]
    assert slice_points_from_mask(np.zeros(shape), k=3).is_empty


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


@pytest.mark.parametrize("shape", [(224, 224), (512, 512), (96, 80), (100, 333)])
def test_slice_box_from_mask_is_box_from_mask_in_slice_pixels(shape):
    """Converted by the one conversion it is box_from_mask's model-frame box (margin counted in 224 pixels)."""
    h, w = shape
    lab = _two_classes(shape)
    for margin, per_class in ((2, False), (0, True), (5.5, True)):
        sb = slice_box_from_mask(lab, margin=margin, per_class=per_class)
        assert isinstance(sb, SlicePrompts)
        old = box_from_mask(lab, margin=margin, per_class=per_class)
        np.testing.assert_allclose(sb.to_model(shape).boxes, old.boxes, atol=1e-4)
        assert list(sb.box_classes) == list(old.box_classes)
    # margin 0: the first and last pixel covered, as a user drags the box
    np.testing.assert_allclose(slice_box_from_mask(lab, margin=0).boxes,
                               [[w // 3, h // 4, w // 2 - 1, h // 2 - 1]])
    assert slice_box_from_mask(np.zeros(shape)).is_empty
    with pytest.raises(PromptError, match="2-D label map"):
        slice_box_from_mask(np.zeros((2,) + shape))


def test_slice_box_from_mask_stays_on_the_slice():
    """A mask on the slice's edge: the box is clipped to the slice's pixels (then to_model clips as ever)."""
    edge = np.zeros((512, 512), np.uint8)
    edge[0:12, 500:512] = 1
    sb = slice_box_from_mask(edge)
    assert sb.boxes.min() >= 0 and sb.boxes[0, 2] == 511 and sb.boxes[0, 1] == 0
    np.testing.assert_allclose(sb.to_model(edge.shape).boxes, box_from_mask(edge).boxes, atol=1e-4)


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


def test_slice_prompts_convert_once_to_the_model_frame():
    from usam.prompts import SlicePrompts, to_model_frame

    h, w = 96, 80
    p = SlicePrompts(points=[[20, 30], [79.9, 95.9]], point_labels=[1, 0], point_classes=[2, 0],
                     boxes=[[5, 6, 40, 50]], box_classes=[1])
    m = p.to_model((h, w))
    assert isinstance(m, Prompts) and m.signature == (2, 1)
    np.testing.assert_allclose(m.points[0], slice_to_model([[20, 30]], (h, w))[0], atol=1e-5)
    assert m.points.max() <= 223.5  # a click on the far half of the last pixel stays in the frame
    np.testing.assert_allclose(m.boxes[0], slice_to_model([[5, 6], [40, 50]], (h, w)).reshape(4), atol=1e-5)
    assert list(m.point_labels) == [1, 0] and list(m.point_classes) == [2, 0] and list(m.box_classes) == [1]
    assert to_model_frame(None, (h, w)) is None and to_model_frame(m, (h, w)) is m
    with pytest.raises(PromptError, match="SlicePrompts"):
        to_model_frame({"points": [[1, 2]]}, (h, w))
    with pytest.raises(PromptError, match="different frames"):
        p + m


def test_a_box_on_the_last_pixel_column_and_row_is_accepted_and_clipped():
    """The reported failure: a box corner on the slice's last pixel (or dragged past it) is inside the frame."""
    from usam.prompts import SlicePrompts

    for h, w in ((512, 512), (96, 80), (100, 333)):
        edge = SlicePrompts(boxes=[[0, 0, w - 1, h - 1]]).to_model((h, w))
        assert edge.boxes.min() >= 0 and edge.boxes.max() <= 223
        past = SlicePrompts(boxes=[[-10, -3, w + 5, h + 20]]).to_model((h, w))
        np.testing.assert_allclose(past.boxes, edge.boxes)
    # the app's and the study's boxes meet here: the same corners give the same model-frame box
    np.testing.assert_allclose(SlicePrompts(boxes=[[10, 20, 30, 40]]).to_model((64, 64)).boxes,
                               box_from_mask(_box_mask(64, 10, 20, 30, 40), margin=0).boxes, atol=1e-5)


def _box_mask(n, x0, y0, x1, y1):
    lab = np.zeros((n, n), np.uint8)
    lab[y0:y1 + 1, x0:x1 + 1] = 1
    return lab


def test_slice_prompts_off_the_slice_are_refused():
    from usam.prompts import SlicePrompts

    with pytest.raises(PromptError, match="outside the 80 x 96 slice"):
        SlicePrompts(points=[[80, 3]], point_labels=[1]).to_model((96, 80))
    with pytest.raises(PromptError, match="outside the 80 x 96 slice"):
        SlicePrompts(points=[[3, -1]], point_labels=[1]).to_model((96, 80))
    with pytest.raises(PromptError, match="box lies outside"):
        SlicePrompts(boxes=[[90, 10, 120, 20]]).to_model((96, 80))
    with pytest.raises(PromptError, match="finite"):
        SlicePrompts(points=[[np.nan, 3]], point_labels=[1])
    with pytest.raises(PromptError, match="x0 <= x1"):
        SlicePrompts(boxes=[[10, 10, 5, 5]])
