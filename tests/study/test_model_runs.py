"""The U-SAM/P and U-SAM/B rows prompt the predictor in slice pixels, on the slice's own extents."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from study.model_runs import prompts_for, run_case
from usam.prompts import SlicePrompts

H, W = 40, 48


def _gt() -> np.ndarray:
    """Slices 1..3 hold a wall block that reaches the last pixel column and a tumor inside it; 0 and 4 are empty."""
    gt = np.zeros((5, H, W), np.uint8)
    gt[1:4, 10:30, 30:W] = 1
    gt[1:4, 15:22, 40:46] = 2
    return gt


class _Spy:
    """A predictor that records what it is given and passes it on to the real one."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def predict(self, z, prompts):
        self.seen.append((z, prompts))
        return self.inner.predict(z, prompts)


@pytest.fixture(scope="module")
def predictor():
    from usam.model import build_usam, get_config
    from usam.model.fast import FastUsam
    from usam.predictor import VolumePredictor

    torch.manual_seed(0)
    model = FastUsam(build_usam(get_config("demo")).eval())
    hu = np.where(_gt() > 0, 40.0, -50.0).astype(np.float32)
    return VolumePredictor(model, SimpleNamespace(array=hu), {"preprocessing": {"window": [-150, 250]}}, device="cpu")


def test_box_arm_gives_the_slice_box_to_the_last_column():
    gt = _gt()[2]
    p = prompts_for("usam_b", gt)
    assert isinstance(p, SlicePrompts) and len(p.points) == 0 and list(p.box_classes) == [0]
    m = 2 * W / 224, 2 * H / 224   # the margin of 2 is counted in 224-frame pixels
    np.testing.assert_allclose(p.boxes, [[30 - m[0], 10 - m[1], W - 1, 29 + m[1]]], atol=1e-5)
    model = p.to_model(gt.shape)   # the corner on the last column: its pixel centre, inside the model frame
    assert model.boxes.min() >= 0 and model.boxes[0, 2] == pytest.approx((W - 0.5) * 224 / W - 0.5, abs=1e-3)
    assert prompts_for("usam", gt) is None and prompts_for("usam_b", np.zeros_like(gt)) == "skip"


def test_point_arm_gives_three_pixels_per_class_on_the_class():
    gt = _gt()[2]
    p = prompts_for("usam_p", gt)
    assert isinstance(p, SlicePrompts) and len(p.boxes) == 0
    assert list(p.point_classes) == [1, 1, 1, 2, 2, 2] and (p.point_labels == 1).all()
    xy = p.points.astype(int)
    np.testing.assert_array_equal(p.points, xy)   # whole slice pixels, not a 224-frame position
    assert [gt[y, x] for x, y in xy] == [1, 1, 1, 2, 2, 2]
    assert xy[:3, 0].min() >= 30 and xy[:, 0].max() < W and xy[3:, 0].min() >= 40 and xy[3:, 0].max() <= 45
    assert xy[:, 1].min() >= 10 and xy[:, 1].max() <= 29


@pytest.mark.parametrize("variant", ["usam_p", "usam_b"])
def test_prompted_arms_run_on_a_small_case_in_slice_pixels(predictor, variant):
    gt = _gt()
    spy = _Spy(predictor)
    labels, secs = run_case(spy, gt, 0, 4, variant)
    assert labels.shape == gt.shape and labels.dtype == np.uint8 and secs > 0
    assert [z for z, _ in spy.seen] == [1, 2, 3]          # empty slices are not prompted
    assert not labels[0].any() and not labels[4].any()
    for z, p in spy.seen:
        assert isinstance(p, SlicePrompts)
        p.validate(gt[z].shape)                            # on the slice, in its own pixels
        coords = np.concatenate([p.points.reshape(-1, 2), p.boxes.reshape(-1, 2)])
        rows, cols = np.nonzero(gt[z])
        assert coords[:, 0].max() == cols.max() if variant == "usam_b" else coords[:, 0].max() <= cols.max()
        assert coords[:, 0].min() >= cols.min() - 1 and coords[:, 1].min() >= rows.min() - 1
        assert coords[:, 1].max() <= rows.max() + 1
