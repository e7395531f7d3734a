"""study.masks: the page's mask text round-trips exactly and is refused unless it is the slice's
size and labels; shape-based interpolation; interpolation plan; slice strip."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from study.errors import InvalidInput
from study.masks import decode_labels, encode_labels, interpolate_labels, plan_interpolation, slice_strip


def _ring(h, w, cy, cx, r0, r1):
    y, x = np.mgrid[:h, :w]
    r = np.hypot(y - cy, x - cx)
    return (r >= r0) & (r <= r1)


def test_round_trip_exact_any_labels():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 7), (40, 40), (512, 512)]:
        lab = rng.integers(0, 3, shape).astype(np.uint8)
        assert np.array_equal(decode_labels(encode_labels(lab), shape), lab)
    lab = np.zeros((40, 30), np.uint8)
    lab[5:9, 3:20] = 2
    text = encode_labels(lab)
    assert text == "rle:40:30:0,153,2,17,0,13,2,17,0,13,2,17,0,13,2,17,0,940"
    b64 = "b64:40:30:" + base64.b64encode(lab.tobytes()).decode()
    assert np.array_equal(decode_labels(b64, (40, 30)), lab)


@pytest.mark.parametrize("text, msg", [
    (None, "could not be read"), (123, "could not be read"), ("", "unknown format"),
    ("png:40:40:abc", "unknown format"), ("rle:41:40:0,1640", "41×40"), ("rle:40:40:0,1599", "cover"),
    ("rle:40:40:0,1601", "cover"), ("rle:40:40:0,0,0,1600", "cover"), ("rle:40:40:3,1600", "labels 0"),
    ("rle:40:40:255,1600", "labels 0"), ("rle:40:40:0,-1600", "run-length"), ("rle:40:40:0,1600,", "run-length"),
    ("rle:40:40:0,,1600", "run-length"), ("rle:40:40:0", "run-length"), ("rle:40:40:", "no runs"),
    ("rle:40:40:0,99999999999999999999", "cover"), ("rle:40:40:0x1,1", "run-length"),
    ("b64:40:40:AAAA", "length"), ("b64:40:40:" + base64.b64encode(bytes([7]) * 1600).decode(), "labels 0"),
    ("b64:40:40:" + "*" * 2136, "length"),
])
def test_refused_payloads(text, msg):
    with pytest.raises(InvalidInput, match=msg):
        decode_labels(text, (40, 40))


def test_huge_payload_header_refused_before_allocation():
    import tracemalloc

    text = "rle:4000:4000:0,16000000"
    tracemalloc.start()
    with pytest.raises(InvalidInput, match="4000×4000"):
        decode_labels(text, (512, 512))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024


def test_interpolation_of_a_ring_moves_and_grows():
    a = _ring(64, 64, 30, 30, 6, 10).astype(np.uint8)
    b = _ring(64, 64, 32, 32, 7, 11).astype(np.uint8)       # a neighbour slice: moved 2 px, wider
    assert np.array_equal(interpolate_labels(a, b, 0.0), a)
    assert np.array_equal(interpolate_labels(a, b, 1.0), b)
    mid = interpolate_labels(a, b, 0.5)
    ys, xs = np.nonzero(mid == 1)
    assert abs(ys.mean() - 31) < 0.5 and abs(xs.mean() - 31) < 0.5    # centre halfway
    mean_area = (int(a.sum()) + int(b.sum())) / 2
    assert abs(int(mid.sum()) - mean_area) < 0.15 * mean_area          # about the mean area
    assert mid[31, 31] == 0                                           # the lumen stays open


def test_interpolation_classes_and_one_sided_class():
    a = np.zeros((40, 40), np.uint8)
    b = np.zeros((40, 40), np.uint8)
    a[10:20, 10:20] = 1
    b[10:20, 10:20] = 1
    b[14:16, 14:16] = 2                          # tumor only on b
    assert not (interpolate_labels(a, b, 0.25) == 2).any()
    assert (interpolate_labels(a, b, 0.75) == 2).sum() == 4
    assert set(np.unique(interpolate_labels(a, b, 0.5))) <= {0, 1, 2}
    with pytest.raises(InvalidInput):
        interpolate_labels(a, np.zeros((4, 4), np.uint8), 0.5)


def test_plan_and_strip():
    st = {2: ("manual", True), 3: ("interpolated", True), 6: ("manual", True), 7: ("empty", False),
          9: ("empty", False), 12: ("model", True)}
    plan = plan_interpolation(st, 2, 12)
    assert plan == [(2, 6, [3, 4, 5]), (9, 12, [10, 11])]            # 7..9 both empty: nothing to fill
    assert slice_strip(st, 2, 7) == ["saved", "interpolated", "untouched", "untouched", "saved", "nothing"]
    assert plan_interpolation({}, 0, 5) == [] and plan_interpolation({2: ("manual", True)}, 0, 5) == []
