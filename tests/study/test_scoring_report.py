"""Scoring at submission and Table 3 against values computed independently in the test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from study import report, stats
from study.scoring import decode_mask, encode_mask, pairwise_dice, score_case

from .conftest import END, SPACING, START, tiny_labels


def dice(p, g):
    return 2 * np.logical_and(p, g).sum() / (p.sum() + g.sum())


def iou(p, g):
    return np.logical_and(p, g).sum() / np.logical_or(p, g).sum()


def test_mask_codec_roundtrip():
    m = tiny_labels(1)
    assert np.array_equal(decode_mask(encode_mask(m), m.shape), m)
    assert len(encode_mask(m)) < m.size / 10


def test_score_case_matches_independent_dice_iou_volumes():
    gt = tiny_labels(0)[START:END + 1]
    pred = gt.copy()
    pred[1] = 0                                   # one slice missed
    pred[3][pred[3] == 2] = 1                     # tumor on one slice called wall
    s = score_case(pred, gt, SPACING, 2.0)
    for c, name in ((1, "normal"), (2, "tumor")):
        assert s[f"dice_{name}"] == pytest.approx(dice(pred == c, gt == c))
        assert s[f"iou_{name}"] == pytest.approx(iou(pred == c, gt == c))
        vox_ml = np.prod(SPACING) / 1000
        assert s[f"vol_pred_{name}_ml"] == pytest.approx((pred == c).sum() * vox_ml)
        assert s[f"vol_gt_{name}_ml"] == pytest.approx((gt == c).sum() * vox_ml)
    assert s["dice_mean"] == pytest.approx((s["dice_normal"] + s["dice_tumor"]) / 2)
    assert s["nsd_tolerance_mm"] == 2.0


def test_surface_metrics_of_a_one_voxel_shift():
    gt = tiny_labels(0)[START:END + 1]
    same = score_case(gt, gt, SPACING, 2.0)
    assert same["dice_mean"] == 1 and same["nsd_mean"] == 1 and same["hd95_mean"] == 0
    shifted = np.roll(gt, 1, axis=2)             # 0.8 mm in x
    s = score_case(shifted, gt, SPACING, 2.0)
    assert s["nsd_normal"] == pytest.approx(1.0)  # every surface point within 2 mm
    assert 0 < s["hd95_normal"] <= 0.8 + 1e-3
    tight = score_case(shifted, gt, SPACING, 0.1)
    assert tight["nsd_normal"] < 1.0


def test_empty_prediction_and_undefined_class_are_json_safe():
    gt = tiny_labels(0)[START:START + 2]           # slices 2-3: wall only, no tumor
    s = score_case(np.zeros_like(gt), gt, SPACING)
    assert s["dice_normal"] == 0 and s["hd95_normal"] is None and 1 in s["hd95_inf"]
    assert s["dice_tumor"] is None and s["undefined"] == [2]
    assert s["dice_mean"] == 0


def _rec(reader, case, group, d, t=600.0):
    return {"reader": reader, "case": case, "group": group, "arm": "manual", "kind": "reader",
            "dice_normal": d, "dice_tumor": d, "dice_mean": d, "iou_normal": d / 2, "iou_tumor": d / 2,
            "iou_mean": d / 2, "nsd_normal": d, "nsd_tumor": d, "nsd_mean": d, "active_s": t,
            "wall_s": t, "prompt_s": 0.0, "inference_s": 0.0}


RECORDS = [_rec("A", "c1", 1, 0.6, 600), _rec("B", "c1", 1, 0.8, 1200), _rec("A", "c2", 1, 0.5, 300),
           _rec("C", "c1", 3, 0.9), _rec("C", "c2", 3, 0.7),
           {"reader": None, "case": "c1", "group": None, "arm": "usam", "kind": "model", "dice_mean": 0.65,
            "dice_normal": 0.6, "dice_tumor": 0.7, "active_s": 0.0, "wall_s": 0.0, "prompt_s": 0.0,
            "inference_s": 3.0},
           {"reader": None, "case": "c2", "group": None, "arm": "usam", "kind": "model", "dice_mean": 0.55,
            "dice_normal": 0.5, "dice_tumor": 0.6, "active_s": 0.0, "wall_s": 0.0, "prompt_s": 0.0,
            "inference_s": 5.0}]


def test_table3_per_case_averaging_first():
    rows = {r["row"]: r for r in report.table3(RECORDS, n_boot=300, seed=1)}
    g1 = rows["Group 1"]
    # case c1: (0.6 + 0.8) / 2 = 0.7; case c2: 0.5 -> 0.6 (not the annotation mean 0.6333)
    assert g1["dice_mean"] == pytest.approx(0.6)
    assert g1["iou_mean"] == pytest.approx(0.3)
    assert (g1["n"], g1["cases"], g1["readers"]) == (3, 2, 2)
    # time: c1 (600 + 1200) / 2 = 900 s, c2 300 s -> 600 s = 10 min
    assert g1["time_min"] == pytest.approx(10.0)
    lo, hi = g1["dice_mean_ci"]
    assert 0.5 <= lo <= 0.6 <= hi <= 0.8
    assert rows["Group 3"]["dice_mean"] == pytest.approx(0.8)
    assert math.isnan(rows["Group 2"]["dice_mean"]) and rows["Group 2"]["n"] == 0
    u = rows["U-SAM"]
    assert u["dice_mean"] == pytest.approx(0.6) and u["inference_s"] == pytest.approx(4.0) and u["n"] == 2


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    a = stats.bootstrap_ci(RECORDS[:3], "dice_mean", 500, seed=5)
    b = stats.bootstrap_ci(RECORDS[:3], "dice_mean", 500, seed=5)
    assert a == b and a[0] <= 0.6 <= a[1]
    # every replicate of identical values gives the value itself
    same = [_rec(r, c, 1, 0.7) for r in "XYZ" for c in ("c1", "c2", "c3")]
    assert stats.bootstrap_ci(same, "dice_mean", 200) == pytest.approx((0.7, 0.7))


def test_reader_level_view():
    rv = {r["row"]: r for r in report.reader_view(RECORDS, n_boot=200)}
    # reader A: (0.6 + 0.5) / 2 = 0.55, reader B: 0.8 -> 0.675
    assert rv["Group 1"]["dice_mean"]["mean"] == pytest.approx(0.675)
    assert rv["Group 1"]["readers"] == 2


def test_paper_table_is_shown_beside_ours():
    md = report.paper_markdown()
    assert "| Group 1 | 166 min | 54.67/42.83/53.88 | 68.10/48.50/40.65 | 61.38/45.67/47.27 |" in md
    assert "U-SAM/B" in md
    ours = report.markdown_table(report.table3(RECORDS, 100), 2.0)
    assert "NSD tolerance 2 mm" in ours and "60.00 [" in ours


def test_pairwise_dice():
    a = tiny_labels(0)
    assert pairwise_dice(a, a) == 1.0
    b = a.copy()
    b[b == 2] = 0
    assert pairwise_dice(a, b) == pytest.approx((1.0 + 0.0) / 2)


def test_submission_scored_in_3d_over_start_end(study_env):
    """The stored scores equal an independent 3D Dice over start..end of the saved slices."""
    from sqlalchemy import select

    from study.models import Case, Submission

    svc, admin, code, sid = study_env
    svc.register(code, "scorer", "reader-pass-1", group=3)
    tok = svc.login("scorer", "reader-pass-1")
    cv = svc.open_case(tok, svc.next_case(tok).assignment_id)
    with svc.db.session() as s:   # the test (not the reader) knows which case it is
        from study.models import Assignment
        key = s.get(Case, s.get(Assignment, cv.assignment_id).case_id).key
    gt = tiny_labels(int(key[-2:]))
    drawn = {}
    for z in range(cv.start, cv.end + 1, 2):      # every other slice, tumor drawn as wall
        m = gt[z].copy()
        m[m == 2] = 1
        drawn[z] = m
        svc.save_slice(tok, cv.assignment_id, z, m)
    svc.submit(tok, cv.assignment_id)
    pred = np.zeros_like(gt)
    for z, m in drawn.items():
        pred[z] = m
    p, g = pred[START:END + 1], gt[START:END + 1]
    with svc.db.session() as s:
        sub = s.scalar(select(Submission))
        assert sub.scores["dice_normal"] == pytest.approx(dice(p == 1, g == 1))
        assert sub.scores["dice_tumor"] == 0.0
        assert sub.shape == [END - START + 1, 40, 40]
    rep = svc.report(admin)
    g3 = {r["row"]: r for r in rep.rows}["Group 3"]
    assert g3["n"] == 1 and g3["dice_normal"] == pytest.approx(dice(p == 1, g == 1))
