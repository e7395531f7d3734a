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
    """An interactive session that records the prompts it is given and passes them on to the real one."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def segment(self, z):
        return self.inner.segment(z)

    def clear(self, z):
        return self.inner.clear(z)

    def add_prompts(self, z, prompts, use_mask=True):
        self.seen.append((z, prompts))
        assert use_mask is False      # the paper's protocol: every slice from a fresh start
        return self.inner.add_prompts(z, prompts, use_mask=use_mask)


def _model():
    from usam.model import build_usam, get_config
    from usam.model.fast import FastUsam

    torch.manual_seed(0)
    return FastUsam(build_usam(get_config("demo")).eval())


@pytest.fixture(scope="module")
def predictor():
    from usam.interactive import InteractiveSession

    hu = np.where(_gt() > 0, 40.0, -50.0).astype(np.float32)
    return InteractiveSession(_model(), SimpleNamespace(array=hu), {"preprocessing": {"window": [-150, 250]}},
                              device="cpu")


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


def test_a_variant_run_gives_the_volume_predictors_masks_whatever_ran_before(predictor):
    """Each slice of a model run starts afresh: the same masks as VolumePredictor.predict, even after another arm."""
    from usam.predictor import VolumePredictor

    gt = _gt()
    first, _ = run_case(predictor, gt, 0, 4, "usam_p")
    box, _ = run_case(predictor, gt, 0, 4, "usam_b")
    again, _ = run_case(predictor, gt, 0, 4, "usam_p")
    np.testing.assert_array_equal(first, again)
    ref = VolumePredictor(predictor.predictor.model, predictor.volume, {"preprocessing": {"window": [-150, 250]}},
                          device="cpu")
    for z in (1, 2, 3):
        np.testing.assert_array_equal(box[z], ref.predict(z, prompts_for("usam_b", gt[z])).labels)


def test_the_readers_next_click_feeds_the_previous_output_back_and_a_removed_click_starts_afresh():
    from study.ai_arms import run_prompts
    from tests.fakes import FakeSession

    class Pred:
        def predict(self, z, prompts):
            return SimpleNamespace(labels=np.zeros((H, W), np.uint8))

    sess = FakeSession(Pred())
    one = SlicePrompts(points=[[3, 4]], point_labels=[1], point_classes=[2])
    two = SlicePrompts(points=[[3, 4], [10, 12]], point_labels=[1, 0], point_classes=[2, 1])
    run_prompts(sess, 2, one)
    run_prompts(sess, 2, two)                         # one more click: only it is added, with the mask
    assert sess.calls[-1] == ("add_prompts", 2, True) and len(sess.prompts(2)) == 2
    boxed = two + SlicePrompts(boxes=[[0, 0, 20, 20]], box_classes=[0])
    run_prompts(sess, 2, boxed)                       # a new box: added, with the mask
    assert sess.calls[-1] == ("add_prompts", 2, True) and len(sess.prompts(2)) == 3
    run_prompts(sess, 2, one)                         # clicks taken away: the slice starts again from `one`
    assert sess.calls[-2:] == [("clear", 2, False), ("add_prompts", 2, False)] and len(sess.prompts(2)) == 1
    run_prompts(sess, 2, None)
    assert sess.calls[-1] == ("segment", 2, False) and sess.prompts(2) == ()
