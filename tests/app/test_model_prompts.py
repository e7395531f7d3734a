"""The viewer's prompts reach the library in slice pixels; the library's one conversion handles the slice's edge."""
import numpy as np

from app.segment.prompts import model_prompts
from app.segment.session import PromptItem
from usam.prompts import SlicePrompts, slice_to_model


def test_points_and_the_latest_box_in_slice_pixels():
    items = (PromptItem("point", 10, 20, 1, 2), PromptItem("box", box=(1, 2, 30, 40)),
             PromptItem("point", 5, 6, 0, 1), PromptItem("box", box=(3, 4, 50, 60)))
    p = model_prompts(items)
    assert isinstance(p, SlicePrompts)
    np.testing.assert_array_equal(p.points, [[10, 20], [5, 6]])
    assert list(p.point_labels) == [1, 0] and list(p.point_classes) == [2, 1]
    np.testing.assert_array_equal(p.boxes, [[3, 4, 50, 60]]) and list(p.box_classes) == [0]
    assert model_prompts(()) is None


def test_a_box_on_the_last_pixel_column_reaches_the_model_frame():
    h, w = 96, 80
    m = model_prompts((PromptItem("box", box=(0, 0, w - 1, h - 1)),)).to_model((h, w))
    np.testing.assert_allclose(m.boxes[0], slice_to_model([[0, 0], [w - 1, h - 1]], (h, w)).reshape(4), atol=1e-5)
    assert m.boxes.max() <= 223


def test_the_app_and_the_study_give_the_same_model_frame_box():
    """The two caller copies used to disagree (+1 and no clip in the study): one conversion now."""
    from study.ai_arms import to_prompts

    h, w = 96, 80
    app_box = model_prompts((PromptItem("box", box=(4, 5, 70, 90)),)).to_model((h, w)).boxes
    study_box = to_prompts([], [(4.0, 5.0, 71.0, 91.0, 0, None)]).to_model((h, w)).boxes  # study: end + 1
    np.testing.assert_allclose(app_box, study_box)
