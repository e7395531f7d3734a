"""The study's prompt tuples reach the library in slice pixels; its exclusive box end becomes the last pixel."""
import numpy as np

from study.ai_arms import to_prompts
from usam.prompts import SlicePrompts


def test_points_and_box_in_slice_pixels_and_the_last_column():
    h, w = 96, 80
    p = to_prompts([(10.0, 20.0, 2, True, None), (5.0, 6.0, 1, False, 12.0)], [(0.0, 0.0, float(w), float(h), 0, None)])
    assert isinstance(p, SlicePrompts)
    np.testing.assert_array_equal(p.points, [[10, 20], [5, 6]])
    assert list(p.point_labels) == [1, 0] and list(p.point_classes) == [2, 1]
    # the study's box ends one past its last pixel (x1 <= w): the library gets the last pixel
    np.testing.assert_array_equal(p.boxes, [[0, 0, w - 1, h - 1]])
    m = p.to_model((h, w))  # a corner on the last pixel column no longer leaves the 224 frame
    assert m.boxes.min() >= 0 and m.boxes.max() <= 223
    assert to_prompts([], []).is_empty
