"""The corrective click simulator (usam/clicks.py): where the clicks land, their kind and class."""
from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from usam.clicks import Click, click_prompts, next_click, next_clicks
from usam.errors import PromptError


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_positive_click_at_the_centre_of_the_largest_missed_region():
    gt = np.zeros((60, 80), np.uint8)
    gt[_disk(gt.shape, 20, 20, 8)] = 1        # missed: the larger error
    gt[_disk(gt.shape, 40, 60, 4)] = 1        # missed too, smaller
    pred = np.zeros_like(gt)
    click = next_click(pred, gt)
    assert click == Click(x=20, y=20, cls=1, positive=True)


def test_click_lies_at_the_distance_transform_maximum_of_the_largest_component():
    rng = np.random.default_rng(3)
    for trial in range(20):
        gt = (rng.random((50, 70)) < 0.5).astype(np.uint8)
        gt = ndimage.binary_opening(gt, iterations=2).astype(np.uint8) * rng.integers(1, 3)
        pred = ndimage.binary_opening(rng.random((50, 70)) < 0.5, iterations=2).astype(np.uint8)
        click = next_click(pred, gt)
        err = {(c, True): (gt == c) & (pred != c) for c in (1, 2)}
        err.update({(c, False): (gt == 0) & (pred == c) for c in (1, 2)})
        comps = []
        for key, m in err.items():
            lab, n = ndimage.label(m, structure=np.ones((3, 3)))
            comps += [(int((lab == i).sum()), key, lab == i) for i in range(1, n + 1)]
        if not comps:
            assert click is None
            continue
        best = max(s for s, _, _ in comps)
        hit = [(key, m) for s, key, m in comps if m[click.y, click.x]]
        assert len(hit) == 1, trial
        (cls, positive), comp = hit[0]
        assert comp.sum() == best and (click.cls, click.positive) == (cls, positive)
        dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
        assert dist[click.y, click.x] == pytest.approx(dist.max())


def test_negative_click_where_foreground_was_drawn_on_background():
    gt = np.zeros((40, 40), np.uint8)
    pred = np.zeros_like(gt)
    pred[10:21, 5:16] = 2                     # tumour drawn on background: 11 x 11, centre (10, 15)
    assert next_click(pred, gt) == Click(x=10, y=15, cls=2, positive=False)


def test_tumour_drawn_as_normal_wall_gives_a_positive_tumour_click():
    gt = np.zeros((40, 40), np.uint8)
    gt[5:30, 5:30] = 1
    gt[10:25, 10:25] = 2
    pred = np.where(gt > 0, 1, 0).astype(np.uint8)   # the whole structure drawn as normal wall
    click = next_click(pred, gt)
    assert (click.cls, click.positive) == (2, True)
    assert gt[click.y, click.x] == 2 and pred[click.y, click.x] == 1


def test_the_slice_border_counts_as_outside():
    gt = np.zeros((20, 40), np.uint8)
    gt[:, :10] = 1                            # a missed band along the left border, 10 columns wide
    click = next_click(np.zeros_like(gt), gt)
    # mid-band (5 px from the border and from the error's edge), not on column 0 nor on the top or bottom row
    assert click.x in (4, 5) and 4 <= click.y <= 15


def test_no_error_gives_none_and_classes_select_the_kinds():
    gt = np.zeros((30, 30), np.uint8)
    gt[5:15, 5:15] = 1
    gt[20:25, 20:25] = 2
    assert next_click(gt.copy(), gt) is None
    pred = gt.copy()
    pred[pred == 2] = 0                       # only the tumour is missed
    assert next_click(pred, gt, classes=(1,)) is None
    assert next_click(pred, gt, classes=(2,)).cls == 2


def test_deterministic_ties_and_batch_equals_single():
    gt = np.zeros((30, 60), np.uint8)
    gt[5:14, 5:14] = 1                        # two equal missed squares: the first in raster order wins
    gt[5:14, 40:49] = 1
    pred = np.zeros_like(gt)
    assert next_click(pred, gt) == Click(x=9, y=9, cls=1, positive=True)
    assert next_click(pred, gt) == next_click(pred.copy(), gt.copy())
    rng = np.random.default_rng(0)
    gts = rng.integers(0, 3, (6, 32, 32)).astype(np.uint8)
    preds = rng.integers(0, 3, (6, 32, 32)).astype(np.uint8)
    preds[2] = gts[2]                         # one slice without error inside the batch
    batch = next_clicks(preds, gts)
    assert batch == [next_click(p, g) for p, g in zip(preds, gts)]
    assert batch[2] is None and all(c is not None for i, c in enumerate(batch) if i != 2)


def test_click_prompts_and_bad_input():
    prompts = click_prompts([Click(3, 4, 2, True), Click(5, 6, 1, False)])
    assert prompts.points.tolist() == [[3, 4], [5, 6]]
    assert prompts.point_labels.tolist() == [1, 0] and prompts.point_classes.tolist() == [2, 1]
    with pytest.raises(PromptError):
        next_click(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(PromptError):
        next_click(np.zeros((4, 4)), np.zeros((4, 4)), classes=(0,))


def test_eight_speckled_slices_at_224_get_one_click_each_as_alone():
    rng = np.random.default_rng(1)
    gts = np.zeros((8, 224, 224), np.uint8)
    for b in range(8):
        gts[b][_disk((224, 224), 110 + b, 100, 20)] = 1
        gts[b][_disk((224, 224), 115, 105 + b, 8)] = 2
    preds = np.roll(gts, 5, axis=2)
    preds[rng.random(preds.shape) < 0.01] = 1  # speckle: many small components
    clicks = next_clicks(preds, gts)  # its speed (~3 ms, ~16 ms speckled, for 8 slices) is measured, not tested
    assert all(c is not None for c in clicks)
    assert clicks == [next_click(preds[b], gts[b]) for b in range(8)]
