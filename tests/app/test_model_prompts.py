"""The viewer's prompts reach the library in slice pixels; the library's one conversion handles the slice's edge."""
import numpy as np

from app import segment as H
from usam.prompts import SlicePrompts, slice_to_model


def _last_prompts(s) -> SlicePrompts:
    """The prompts the model received on its last run (the fake predictor records them)."""
    return s.interactive.predictor.calls[-1][1]


def test_points_and_the_latest_box_in_slice_pixels(fake_session):
    s = fake_session
    H.add_point(s, 10, 20, True, 2)
    H.add_box(s, 1, 2, 30, 40)
    H.add_point(s, 5, 6, False, 1)
    H.add_box(s, 3, 4, 50, 60)
    p = _last_prompts(s)
    assert isinstance(p, SlicePrompts)
    np.testing.assert_array_equal(p.points, [[10, 20], [5, 6]])
    assert list(p.point_labels) == [1, 0] and list(p.point_classes) == [2, 1]
    np.testing.assert_array_equal(p.boxes, [[3, 4, 50, 60]])
    assert list(p.box_classes) == [0]                     # the page's box: all foreground, as U-SAM/B


def test_a_box_on_the_last_pixel_column_reaches_the_model_frame(fake_session):
    s = fake_session
    h, w = s.slice_shape
    H.add_box(s, 0, 0, w - 1, h - 1)
    m = _last_prompts(s).to_model((h, w))
    np.testing.assert_allclose(m.boxes[0], slice_to_model([[0, 0], [w - 1, h - 1]], (h, w)).reshape(4), atol=1e-5)
    assert m.boxes.max() <= 223


def test_the_app_and_the_study_give_the_same_model_frame_box(fake_session):
    """The two caller copies used to disagree (+1 and no clip in the study): one conversion now."""
    from study.ai_arms import to_prompts

    s = fake_session
    h, w = s.slice_shape
    H.add_box(s, 4, 5, 70, 90)
    app_box = _last_prompts(s).to_model((h, w)).boxes
    study_box = to_prompts([], [(4.0, 5.0, 71.0, 91.0, 0, None)]).to_model((h, w)).boxes  # study: end + 1
    np.testing.assert_allclose(app_box, study_box)
