"""Out-of-distribution checks (app/ood.py): quiet on a phantom, a notice on volumes and outputs unlike it."""
from __future__ import annotations

import numpy as np

from app import measure, ood


def test_phantom_volume_gives_no_finding(small_case):
    v = small_case.volume
    assert ood.volume_findings(v.array, v.spacing) == []
    m = measure.measurements(small_case.labels, v.spacing)
    assert ood.measurement_findings(m, small_case.labels, v.spacing) == []
    assert ood.notice_html([]) == ""


def test_full_size_phantom_gives_no_finding():
    from app.segment import demo_case

    c = demo_case(1, "full")
    assert ood.volume_findings(c.volume.array, c.volume.spacing) == []


def test_every_drawn_phantom_scanner_is_inside_the_training_range():
    """The geometry limits hold every scanner the phantom draws (usam/phantom/params.py), at both sizes."""
    from usam.phantom import _fine_grid, draw_params

    px, sz, cov = [], [], []
    for seed in range(300):
        for size in ("small", "full"):
            cp = draw_params(seed, size)
            zf, k = _fine_grid(cp)
            px.append(cp.scanner.px), sz.append(cp.scanner.thickness), cov.append(len(zf) // k * cp.scanner.thickness)
    assert ood.PIXEL_MM[0] <= min(px) and max(px) <= ood.PIXEL_MM[1]
    assert 0.6 <= min(p for p in px if p < 1.5) and max(p for p in px if p < 1.5) <= 1.0       # full: 0.6-1.0 mm
    assert {0.625, 2.5, 3.0, 5.0} <= set(sz) and max(sz) == ood.MAX_SLICE_MM
    assert 200 < max(cov) <= ood.TRAIN_COVERAGE_MM < ood.MAX_COVERAGE_MM
    flat = np.zeros((int(ood.TRAIN_COVERAGE_MM // 5), 8, 8), np.float32)
    assert not [f for f in ood.volume_findings(flat, (5.0, 0.6, 0.6)) if "Slice" in f.message or "covers" in f.message
                or "Pixel" in f.message]


def test_normalised_image_is_flagged(small_case):
    a = np.asarray(small_case.volume.array, np.float32)
    norm = (a - a.min()) / (a.max() - a.min())       # a 0..1 image, e.g. an exported PNG stack
    f = ood.volume_findings(norm, small_case.volume.spacing)
    assert [x.concerns for x in f] == ["volume"]
    assert "span only" in f[0].message


def test_values_beyond_ct_range_are_flagged(small_case):
    a = np.asarray(small_case.volume.array, np.float32) * 10.0
    f = ood.volume_findings(a, small_case.volume.spacing)
    assert f and "outside the CT range" in f[0].message


def test_bone_heavy_body_and_geometry_are_flagged():
    rng = np.random.default_rng(0)
    vol = np.full((120, 64, 64), -1000.0, np.float32)
    vol[:, 8:56, 8:56] = rng.uniform(300, 1500, (120, 48, 48))   # a body that is mostly bone
    f = ood.volume_findings(vol, (3.0, 2.5, 2.5))                 # 360 mm coverage, 2.5 mm pixels
    text = " ".join(x.message for x in f)
    assert "soft tissue" in text and "Pixel spacing" in text and "360 mm" in text
    assert "85-97 %" in text and "at most 258 mm" in text                  # the phantom's ranges, quoted
    assert len(f) == 3


def test_coarse_slices_are_flagged(small_case):
    f = ood.volume_findings(small_case.volume.array, (7.5, 0.8, 0.8))
    assert any("Slice spacing 7.50" in x.message for x in f)


def _probs(fg_p: float, shape=(32, 32)) -> np.ndarray:
    """(3, h, w) probabilities: a 10 x 10 foreground square at class-1 probability fg_p."""
    p = np.zeros((3,) + shape, np.float32)
    p[0] = 1.0
    p[:, 10:20, 10:20] = np.array([(1 - fg_p) / 2, fg_p, (1 - fg_p) / 2])[:, None, None]
    return p


def test_confident_output_gives_no_finding():
    st = ood.uncertainty_stats([_probs(0.97), _probs(0.95)])
    assert st["pixels"] == 200 and st["low_conf_share"] == 0.0
    assert st["mean_entropy"] < 0.2
    assert ood.uncertainty_findings(st) == []


def test_unsure_output_is_flagged():
    st = ood.uncertainty_stats([_probs(0.5), _probs(0.97)])
    assert st["low_conf_share"] == 0.5
    f = ood.uncertainty_findings(st)
    assert [x.concerns for x in f] == ["model"] and "50 %" in f[0].message


def test_no_foreground_or_no_distribution_makes_no_statement():
    empty = np.zeros((3, 8, 8), np.float32)
    empty[0] = 1
    assert ood.uncertainty_stats([empty]) is None
    zeros_fg = np.zeros((3, 8, 8), np.float32)
    zeros_fg[1] = 5.0  # foreground everywhere, but not a distribution (a stand-in predictor)
    assert ood.uncertainty_stats([zeros_fg]) is None
    assert ood.uncertainty_findings(None) == []


def test_implausible_measurements_are_flagged():
    # the real-CT run: tumour 148.6 mL, extent 336 mm, diameter 276.6 mm
    m = {"tumor_ml": 148.6, "normal_rectum_ml": 60.0, "tumor_craniocaudal_extent_mm": 336.0,
         "tumor_max_axial_diameter_mm": 276.6}
    lab = np.zeros((300, 4, 4), np.uint8)
    lab[10:290, 1, 1] = 2
    f = ood.measurement_findings(m, lab, (1.2, 1.0, 1.0))
    text = " ".join(x.message for x in f)
    assert len(f) == 4 and "148.6 mL" in text and "336 mm" in text and "277 mm" in text
    assert "span 336 mm" in text  # 280 slices x 1.2 mm


def test_notice_escapes_and_lists_every_finding():
    f = [ood.Finding("volume", "a <b>"), ood.Finding("model", "c")]
    h = ood.notice_html(f, "the whole-volume result")
    assert h.count("<li>") == 2 and "a &lt;b&gt;" in h and "whole-volume result" in h
    assert 'role="alert"' in h
