"""Metrics against values computed by hand: shifted squares, disks and spheres, empty masks."""
import math

import numpy as np
import pytest

from usam.errors import VolumeError
from usam.metrics import binary_metrics, case_metrics, global_slice_metrics, volume_ml


def squares(L=40, d=6, n=100):
    a = np.zeros((n, n), np.uint8)
    b = a.copy()
    a[20:20 + L, 20:20 + L] = 1
    b[20:20 + L, 20 + d:20 + L + d] = 1
    return a, b


def test_shifted_squares_dice_iou_nsd_hd95():
    L, d, t = 40, 6, 3.0
    a, b = squares(L, d)
    m = binary_metrics(a, b, (1.0, 1.0), nsd_tolerance_mm=t)
    assert m["dice"] == pytest.approx((L - d) / L)
    assert m["iou"] == pytest.approx((L - d) / (L + d))
    # boundary within t: the overlapping parts of the two horizontal edges, plus t at each of the
    # four corners where an edge meets the other square's edge (by symmetry for both surfaces)
    assert m["nsd"] == pytest.approx((2 * L - 2 * d + 4 * t) / (4 * L), abs=0.02)
    assert m["hd95"] == pytest.approx(d)  # a whole edge (25% of the boundary) lies d away


def test_anisotropic_spacing_uses_mm():
    a, b = squares(40, 6)                      # shift of 6 columns = 3 mm at 0.5 mm
    m = binary_metrics(a, b, (2.0, 0.5), nsd_tolerance_mm=3.0)
    assert m["hd95"] == pytest.approx(3.0)
    assert m["nsd"] == pytest.approx(1.0)
    assert m["vol_gt_ml"] == pytest.approx(40 * 40 * 1.0 / 1000)
    m2 = binary_metrics(a, b, (2.0, 0.5), nsd_tolerance_mm=2.0)
    # square 80 x 20 mm shifted 3 mm along its 20 mm side: per surface 2*(17+2) + 2*2 = 42 of 200 mm
    assert m2["nsd"] == pytest.approx(42 / 200, abs=0.02)
    # the same pixels at isotropic 1 mm: 6 mm shift, nothing within 3 mm but corners
    assert binary_metrics(a, b, (1.0, 1.0), 3.0)["hd95"] == pytest.approx(6.0)


def test_shifted_disks_match_lens_area():
    r, d = 40.0, 10.0
    yy, xx = np.mgrid[:160, :160]
    a = (yy - 80) ** 2 + (xx - 70) ** 2 <= r * r
    b = (yy - 80) ** 2 + (xx - 70 - d) ** 2 <= r * r
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    m = binary_metrics(a, b, (1.0, 1.0), 2.0)
    assert m["dice"] == pytest.approx(lens / (math.pi * r * r), abs=0.01)
    assert m["hd95"] == pytest.approx(d, abs=0.5)


def test_shifted_spheres_anisotropic():
    r, d = 12.0, 4.0                              # mm
    sp = (2.0, 1.0, 1.0)
    z, y, x = np.mgrid[:24, :40, :40].astype(float)
    z, y, x = z * sp[0], y * sp[1], x * sp[2]
    a = (z - 24) ** 2 + (y - 20) ** 2 + (x - 18) ** 2 <= r * r
    b = (z - 24) ** 2 + (y - 20) ** 2 + (x - 18 - d) ** 2 <= r * r
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    m = binary_metrics(a, b, sp, 1.0)
    assert m["dice"] == pytest.approx(lens / (4 / 3 * math.pi * r ** 3), abs=0.02)
    assert m["vol_gt_ml"] == pytest.approx(4 / 3 * math.pi * r ** 3 / 1000, rel=0.05)
    assert m["hd95"] == pytest.approx(d, abs=0.6)
    same = binary_metrics(a, a, sp, 1.0)
    assert (same["dice"], same["iou"], same["nsd"], same["hd95"]) == (1.0, 1.0, 1.0, 0.0)


def test_volume_ml():
    m = np.zeros((10, 10, 10), np.uint8)
    m[:5] = 2
    assert volume_ml(m, (2.0, 1.0, 0.5)) == pytest.approx(500 * 1.0 / 1000)


def test_empty_conventions_and_means():
    gt = np.zeros((30, 30), np.uint8)
    gt[5:15, 5:15] = 1
    pred = gt.copy()
    res = case_metrics(pred, gt, (1.0, 1.0))
    assert res["undefined"] == [2]
    assert all(math.isnan(res["per_class"][2][k]) for k in ("dice", "iou", "nsd", "hd95"))
    assert res["mean"]["dice"] == 1.0 and res["mean"]["hd95"] == 0.0
    assert res["nsd_tolerance_mm"] == 2.0
    pred[20:25, 20:25] = 2                  # tumor predicted, none in ground truth
    res = case_metrics(pred, gt, (1.0, 1.0))
    c2 = res["per_class"][2]
    assert (c2["dice"], c2["iou"], c2["nsd"]) == (0.0, 0.0, 0.0) and c2["hd95"] == math.inf
    assert res["undefined"] == [] and res["mean"]["dice"] == 0.5 and res["mean"]["hd95"] == math.inf
    both_empty = case_metrics(np.zeros((4, 8, 8)), np.zeros((4, 8, 8)), (1, 1, 1))
    assert both_empty["undefined"] == [1, 2] and math.isnan(both_empty["mean"]["dice"])


def test_bad_inputs_raise_volume_error():
    with pytest.raises(VolumeError):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 5)), (1, 1))
    with pytest.raises(VolumeError):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(VolumeError):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), (0, 1))


def test_global_slice_metrics_sums_before_dividing():
    g1 = np.zeros((10, 10), np.uint8); g1[0:2, 0:5] = 1           # 10 px
    p1 = np.zeros((10, 10), np.uint8); p1[0:2, 0:3] = 1           # 6 px, 6 overlap
    g2 = np.zeros((10, 10), np.uint8); g2[5:6, 0:2] = 1; g2[8:10, 8:10] = 2   # 2 px class 1, 4 px class 2
    p2 = np.zeros((10, 10), np.uint8); p2[8:10, 9:10] = 2          # 0 px class 1, 2 px class 2 (2 overlap)
    bg = np.zeros((10, 10), np.uint8)
    pb = np.zeros((10, 10), np.uint8); pb[0, 0] = 1                 # background slice: skipped
    res = global_slice_metrics([(p1, g1), (p2, g2), (pb, bg)])
    assert res["slices"] == 2
    assert res["per_class"][1]["dice"] == pytest.approx(2 * 6 / (6 + 12))
    assert res["per_class"][1]["iou"] == pytest.approx(6 / 12)
    assert res["per_class"][2]["dice"] == pytest.approx(2 * 2 / (2 + 4))
    assert res["mean"]["dice"] == pytest.approx((12 / 18 + 4 / 6) / 2)
    with_bg = global_slice_metrics([(p1, g1), (p2, g2), (pb, bg)], foreground_only=False)
    assert with_bg["slices"] == 3 and with_bg["per_class"][1]["pred"] == 7


def test_matches_deepmind_surface_distance_reference_values():
    """Values computed once with DeepMind's surface-distance package (pip surface-distance 0.1)."""
    yy, xx = np.mgrid[:100, :100]
    r2a, r2b = (yy - 50) ** 2 + (xx - 50) ** 2, (yy - 52) ** 2 + (xx - 49) ** 2
    a = (r2a < 30 ** 2) & ~(r2a < 26 ** 2)          # two rings, like a rectal wall
    b = (r2b < 31 ** 2) & ~(r2b < 25 ** 2)
    m1 = binary_metrics(a, b, (0.8, 0.8), 1.0)
    m2 = binary_metrics(a, b, (0.8, 0.8), 2.0)
    assert m1["nsd"] == pytest.approx(0.5423, abs=1e-4) and m2["nsd"] == pytest.approx(0.8487, abs=1e-4)
    assert m1["hd95"] == pytest.approx(2.400, abs=1e-3)
    sp = (2.5, 0.8, 0.8)
    z, y, x = np.mgrid[:30, :60, :60]
    zz, yy, xx = z * sp[0], y * sp[1], x * sp[2]
    a = (zz - 35) ** 2 / 1.2 + (yy - 25) ** 2 + (xx - 24) ** 2 <= 15 ** 2
    b = (zz - 37) ** 2 + (yy - 27) ** 2 / 0.8 + (xx - 28) ** 2 <= 14 ** 2
    m = binary_metrics(a, b, sp, 2.0)
    assert m["nsd"] == pytest.approx(0.4354, abs=1e-4)
    assert m["hd95"] == pytest.approx(5.657, abs=1e-3)
