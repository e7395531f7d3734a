"""Evaluation protocols on a hand-made set with numbers known in advance (usam/evaluate.py)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from usam import data as D
from usam import evaluate as E
from usam.errors import UsamError


def _case(case_id: str, tumor: bool) -> D.CaseData:
    """224 x 224 slices (so both protocols see the same pixels): a 20x20 rectum square on
    slices 1-2 and a 10x10 tumour square beside it."""
    labels = np.zeros((4, 224, 224), np.uint8)
    labels[1:3, 100:120, 100:120] = 1
    if tumor:
        labels[1:3, 130:140, 100:110] = 2
    image = np.zeros(labels.shape, np.float32)
    return D.CaseData(case_id, "test", image, labels, (2.0, 1.0, 1.0), {})


CASES = [_case("A", tumor=True), _case("B", tumor=False)]


def _prediction(case_id: str, mode: str) -> np.ndarray:
    """none: rectum exact, tumour missed. box: case A rectum shifted 10 columns, tumour exact;
    case B rectum exact plus one spurious tumour pixel."""
    gt = next(c for c in CASES if c.case_id == case_id).labels
    pred = gt.copy()
    if mode == "none":
        pred[pred == 2] = 0
    elif case_id == "A":
        pred[pred == 1] = 0
        pred[1:3, 100:120, 110:130] = 1
    else:
        pred[1, 50, 50] = 2
    return pred


def _fake_case_predictor(calls: list):
    def predict_case(case, zs, prompts):
        calls.append((case.case_id, list(zs)))
        for p in prompts["none"]:
            assert p.is_empty
        for z, p in zip(zs, prompts["box"]):
            assert len(p.boxes) == (1 if case.labels[z].any() else 0)
        return {m: _prediction(case.case_id, m)[zs] for m in prompts}
    return predict_case


def test_case3d_numbers_known_in_advance():
    calls: list = []
    res = E.evaluate_case3d(CASES, _fake_case_predictor(calls), ["none", "box"], nsd_tolerance_mm=2.0)
    assert calls == [("A", [1, 2]), ("B", [1, 2])]  # the ground truth's z extent
    none, box = res["rows"]["none"], res["rows"]["box"]
    assert none["per_class"][1]["dice"] == pytest.approx(1.0)
    assert none["per_class"][1]["nsd"] == pytest.approx(1.0)
    assert none["per_class"][2]["dice"] == pytest.approx(0.0)  # A missed; B undefined (excluded)
    assert none["per_class"][2]["cases"] == 1
    assert none["mean"]["dice"] == pytest.approx(0.5)
    # box: rectum A shifted by half its width: Dice 0.5, IoU 1/3; B exact -> class means 0.75, 2/3
    assert box["per_class"][1]["dice"] == pytest.approx(0.75)
    assert box["per_class"][1]["iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert 0.0 < box["per_class"][1]["nsd"] < 1.0
    # tumour: A exact (1), B one spurious pixel where none exists (0)
    assert box["per_class"][2]["dice"] == pytest.approx(0.5)
    assert box["mean"]["dice"] == pytest.approx(0.625)
    assert res["per_case"]["box"][0]["per_class"][1]["dice"] == pytest.approx(0.5)


def test_reference_protocol_numbers_known_in_advance():
    order = iter(["A", "B"])

    def predict224(images, prompts):
        cid = next(order)
        assert images.shape == (2, 3, 224, 224)  # foreground slices only
        return {m: _prediction(cid, m)[1:3] for m in prompts}

    res = E.evaluate_reference(CASES, predict224, ["none", "box"], window=(-160, 240))
    none, box = res["rows"]["none"], res["rows"]["box"]
    assert none["per_class"][1]["dice"] == pytest.approx(1.0)
    assert none["per_class"][2]["dice"] == pytest.approx(0.0)
    assert none["mean"]["dice"] == pytest.approx(0.5)
    # global sums: rectum intersections 400 + 800 over 800 + 800 (A) + 800 + 800 (B) pixels
    assert box["per_class"][1]["dice"] == pytest.approx(2 * 1200 / 3200)
    assert box["per_class"][1]["iou"] == pytest.approx(1200 / 2000)
    # tumour: 200 exact pixels in A plus one spurious pixel in B
    assert box["per_class"][2]["dice"] == pytest.approx(400 / 401)
    assert box["mean"]["dice"] == pytest.approx((0.75 + 400 / 401) / 2)
    assert math.isnan(box["per_class"][1]["nsd"])


def test_case3d_uses_annotated_range_from_manifest():
    case = _case("C", tumor=True)
    case.info = {"rectum_start": 0, "rectum_end": 3}
    calls: list = []
    E.evaluate_case3d([case], lambda c, zs, p: calls.append(list(zs)) or {m: c.labels[zs] for m in p}, ["none"])
    assert calls == [[0, 1, 2, 3]]


def test_npz_cases_refuse_case3d():
    case = _case("D", tumor=False)
    case.prewindowed = True
    with pytest.raises(UsamError, match="reference"):
        E.evaluate_case3d([case], lambda c, zs, p: {}, ["none"])


def test_parse_prompt_modes():
    assert E.parse_prompt_modes("all") == list(E.EVAL_PROMPTS)
    assert E.parse_prompt_modes("none,points3") == ["none", "points3"]
    with pytest.raises(UsamError):
        E.parse_prompt_modes("points7")


def test_reports_markdown_csv_json(tmp_path):
    res = E.evaluate_case3d(CASES, _fake_case_predictor([]), ["none", "box"])
    result = {"checkpoint": "ck", "weights_kind": "demo-phantom", "data": "d", "split": "test", "cases": 2,
              "window": [-160.0, 240.0], "nsd_tolerance_mm": 2.0, "protocols": {"case3d": res}}
    paths = E.write_reports(result, tmp_path, "demo_eval")
    md = paths[0].read_text()
    assert "NSD@2mm" in md and "| case3d | none | 100.00 | 100.00 | 100.00 | 0.00 |" in md
    rows = list(csv.DictReader(open(paths[1])))
    assert len(rows) == 6 and rows[2]["class"] == "mean" and float(rows[2]["dice"]) == pytest.approx(0.5)
    case_rows = list(csv.DictReader(open(paths[2])))
    assert len(case_rows) == 8
    js = json.loads(paths[3].read_text())
    assert js["protocols"]["case3d"]["rows"]["box"]["mean"]["dice"] == pytest.approx(0.625)
    # undefined values become null, not NaN (valid JSON)
    assert js["protocols"]["case3d"]["per_case"]["none"][1]["per_class"]["2"]["dice"] is None


def test_crop_to_union_keeps_metrics():
    from usam.metrics import case_metrics

    rng = np.random.default_rng(0)
    gt = np.zeros((12, 40, 40), np.uint8)
    gt[3:8, 10:20, 12:22] = 1
    gt[4:6, 14:18, 15:19] = 2
    pred = np.roll(gt, 2, axis=2)
    noise = rng.random((6, 20, 20)) < 0.01
    pred[2:8, 8:28, 8:28][noise] = 2  # scattered false positives near the target
    a = case_metrics(pred, gt, (2.0, 0.8, 0.8), nsd_tolerance_mm=1.0)
    p, g = E.crop_to_union(pred, gt)
    assert p.size < pred.size
    b = case_metrics(p, g, (2.0, 0.8, 0.8), nsd_tolerance_mm=1.0)
    for c in (1, 2):
        for k in ("dice", "iou", "nsd", "hd95", "vol_pred_ml", "vol_gt_ml"):
            assert b["per_class"][c][k] == pytest.approx(a["per_class"][c][k])


def test_cli_takes_usam_checkpoint_from_the_environment_at_its_edge(tmp_path, monkeypatch, capsys):
    """`python -m usam evaluate` reads $USAM_CHECKPOINT in its parser and names it when the file is missing;
    --checkpoint wins over it."""
    from usam.__main__ import main

    monkeypatch.setenv("USAM_CHECKPOINT", str(tmp_path / "env-missing.safetensors"))
    argv = ["evaluate", "--data", str(tmp_path), "--format", "npz", "--protocol", "reference"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: $USAM_CHECKPOINT points to") and "env-missing.safetensors" in err
    assert main(argv + ["--checkpoint", str(tmp_path / "flag-missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint points to") and "flag-missing.safetensors" in err
