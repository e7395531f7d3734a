"""The interactive protocol (usam/evaluation/): AUC and NoC, where clicks land, the mask prompt, the CLI's files."""
from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from usam import data as D
from usam.evaluation.interactive import (evaluate_interactive, number_of_clicks, parse_starts, start_prompts,
                                         trapezoid_auc)
from usam.errors import UsamError
from tests.usam.eval_fixtures import StandIn, tiny_checkpoint as make_tiny_checkpoint

ROW_KEYS = ("dice_mean_by_click", "nsd_mean_by_click", "dice_by_click_per_class", "dsc_auc", "nsd_auc", "final_dice",
            "final_nsd", "noc85", "noc90", "seconds_per_click")


def test_auc_is_the_trapezoid_and_at_most_four_over_five_steps():
    assert trapezoid_auc([1.0] * 5) == pytest.approx(4.0)
    assert trapezoid_auc([0.5, 0.6, 0.7, 0.8, 0.9]) == pytest.approx(0.55 + 0.65 + 0.75 + 0.85)
    assert trapezoid_auc([0.2, 0.8]) == pytest.approx(0.5)
    assert math.isnan(trapezoid_auc([0.5, float("nan"), 0.7]))


def test_noc_on_a_constructed_sequence():
    seq = [0.40, 0.70, 0.86, 0.89, 0.91, 0.95]
    assert number_of_clicks(seq, 0.85) == 2
    assert number_of_clicks(seq, 0.90) == 4
    assert number_of_clicks([0.5] * 21, 0.90) == 20            # never reached: the limit, as RITM
    assert number_of_clicks([0.5] * 21 + [0.99], 0.90) == 20   # reached only after the limit: not counted
    assert number_of_clicks([0.93, 0.5], 0.90) == 0            # the start already reaches it
    assert number_of_clicks([float("nan"), 0.9], 0.90) == 1


def test_starts_and_their_prompts():
    assert parse_starts("all") == ["box", "none"] and parse_starts("none") == ["none"]
    with pytest.raises(UsamError):
        parse_starts("boxes")
    lab = np.zeros((96, 96), np.uint8)
    lab[20:40, 30:50] = 1
    box = start_prompts(lab, "box")
    assert len(box.boxes) == 1 and box.box_classes.tolist() == [0]
    assert box.to_model(lab.shape).boxes[0] == pytest.approx(D.eval_prompts(lab, "box").boxes[0], abs=1e-3)
    assert start_prompts(lab, "none").is_empty and start_prompts(np.zeros_like(lab), "box").is_empty


class PaintModel(StandIn):
    """A stand-in for U-SAM: a box paints normal wall inside it; each point paints a disk (radius 16 at 224) of its
    class (positive) or of background (negative) on top of the previous logits when they come back."""

    def decode(self, features, prompts, mask_logits=None) -> torch.Tensor:
        out = self.previous(mask_logits)
        if out is None:
            out = torch.zeros(len(features), 3, 224, 224)
            out[:, 0] = 1.0
        xx, yy = self.grid
        for i, p in enumerate(self.items(prompts)):
            for x0, y0, x1, y1 in p.boxes:
                inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
                out[i, 1][inside] = 2.0
            for (x, y), label, cls in zip(p.points, p.point_labels, p.point_classes):
                self.paint_point(out[i], x, y, label, cls)
        return out


def _case() -> D.CaseData:
    """96 x 96 slices, 5 annotated (the manifest's range 0..4): a normal wall disk and a tumour beside it on
    slices 1-3, slice 0 and 4 without foreground."""
    labels = np.zeros((5, 96, 96), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for z in (1, 2, 3):
        labels[z][(yy - 40) ** 2 + (xx - 40 - z) ** 2 <= 15 ** 2] = 1
        labels[z][(yy - 62) ** 2 + (xx - 62) ** 2 <= 7 ** 2] = 2
    image = np.zeros(labels.shape, np.float32)
    return D.CaseData("P", "test", image, labels, (2.0, 1.0, 1.0), {"rectum_start": 0, "rectum_end": 4})


def test_clicks_land_on_errors_and_the_scores_follow():
    model, steps = PaintModel(), []
    res = evaluate_interactive([_case()], model, D.DEFAULT_WINDOW, noc_clicks=8, batch_size=2, trace=steps.append)
    assert model.masks_seen[:5] == [False] * 5  # the start of each of the five slices: no previous mask
    assert set(res["rows"]) == {"box", "none"}
    for step in steps:
        before, gt = step["before"], step["gt"]
        for z, click in enumerate(step["clicks"]):
            errors = (before[z] != gt[z]) & ((gt[z] > 0) | (before[z] > 0))
            if click is None:
                assert not errors.any()
                continue
            here_gt, here_pred = gt[z][click.y, click.x], before[z][click.y, click.x]
            if click.positive:
                assert here_gt == click.cls and here_pred != click.cls
            else:
                assert here_gt == 0 and here_pred == click.cls
    # the click's pixel takes its class at the next step (the point reaches the model in the right place)
    for prev, nxt in zip(steps, steps[1:]):
        if (prev["case_id"], prev["start"]) == (nxt["case_id"], nxt["start"]):
            for z, click in enumerate(prev["clicks"]):
                if click is not None:
                    assert nxt["before"][z][click.y, click.x] == (click.cls if click.positive else 0)
    for name, row in res["rows"].items():
        assert all(k in row for k in ROW_KEYS)
        assert len(row["dice_mean_by_click"]) == 6 and len(row["dice_by_click_per_class"][2]) == 6
        assert row["dsc_auc"] == pytest.approx(np.trapezoid(row["dice_mean_by_click"][1:]))
        assert row["nsd_auc"] == pytest.approx(np.trapezoid(row["nsd_mean_by_click"][1:]))
        assert row["final_dice"] == row["dice_mean_by_click"][-1]
        assert row["dice_mean_by_click"][5] > row["dice_mean_by_click"][0] + 0.05, (name, row["dice_mean_by_click"])
        pc = res["per_case"][name][0]
        # Dice from the NoC loop's counts equals case_metrics' on every scored step
        assert pc["dice_mean_noc"][:6] == pytest.approx(pc["dice_mean_by_click"])
        assert pc["noc90"] == number_of_clicks(pc["dice_mean_noc"], 0.90, 8)
        assert pc["noc85"] == number_of_clicks(pc["dice_mean_noc"], 0.85, 8)
        assert row["noc90"] == pc["noc90"]  # one case
    assert res["rows"]["box"]["dice_mean_by_click"][0] > res["rows"]["none"]["dice_mean_by_click"][0]
    # the mask prompt comes back from step 1 on
    assert model.masks_seen[0] is False and any(model.masks_seen)


# recorded from the batched decode path these protocols had before they drove an InteractiveSession (bde07c1)
RECORDED = {"box": ([0, 3, 3, 3, 3, 3, 3, 3, 3],
                    [0.262398, 0.27793, 0.295417, 0.315205, 0.337415, 0.34007, 0.753783, 0.747508, 0.860426],
                    [0.289729, 0.284689, 0.302913, 0.308868, 0.31387, 0.319421], 8),
            "none": ([0, 3, 3, 3, 3, 3, 3], [0.0, 0.175581, 0.261307, 0.324412, 0.375164, 0.414848, 0.901603],
                     [0.0, 0.220919, 0.349522, 0.382792, 0.46085, 0.474448], 6)}


@pytest.mark.parametrize("feed", [True, False])
def test_the_session_path_gives_the_recorded_figures(feed):
    res = evaluate_interactive([_case()], PaintModel(), D.DEFAULT_WINDOW, noc_clicks=8, batch_size=2, feed_mask=feed)
    for start, (clicks, dice_noc, nsd, noc) in RECORDED.items():
        pc = res["per_case"][start][0]
        assert pc["clicks_by_step"] == clicks and pc["noc85"] == pc["noc90"] == noc
        assert pc["dice_mean_noc"] == pytest.approx(dice_noc, abs=1e-6)
        assert pc["nsd_mean_by_click"] == pytest.approx(nsd, abs=1e-6)


def test_without_the_mask_prompt_no_logits_come_back():
    model = PaintModel()
    evaluate_interactive([_case()], model, D.DEFAULT_WINDOW, starts=["box"], noc_clicks=5, feed_mask=False)
    assert len(model.masks_seen) > 1 and not any(model.masks_seen)


def test_prompt_rules_add_labelled_rows_beside_the_network_alone():
    model = PaintModel()
    res = evaluate_interactive([_case()], model, D.DEFAULT_WINDOW, noc_clicks=5, prompt_rules="box")
    assert list(res["rows"]) == ["box", "none", "box + rules", "none + rules"] and res["prompt_rules"] == "box"
    assert model.encoded == 5  # each slice encoded once for every start and row
    plain = evaluate_interactive([_case()], PaintModel(), D.DEFAULT_WINDOW, starts=["box"], noc_clicks=5)
    assert plain["rows"]["box"]["dice_mean_by_click"] == res["rows"]["box"]["dice_mean_by_click"]


def test_noc_is_the_limit_when_never_reached():
    class Stubborn(PaintModel):
        def decode(self, features, prompts, mask_logits=None):  # ignores every prompt: draws nothing
            self.previous(mask_logits)
            out = torch.zeros(len(features), 3, 224, 224)
            out[:, 0] = 1.0
            return out

    res = evaluate_interactive([_case()], Stubborn(), D.DEFAULT_WINDOW, starts=["none"], noc_clicks=20)
    row, pc = res["rows"]["none"], res["per_case"]["none"][0]
    assert row["noc85"] == row["noc90"] == 20
    assert len(pc["dice_mean_noc"]) == 21 and pc["clicks"] == 20 * 3  # 20 steps, 3 slices with an error
    assert row["dice_mean_by_click"] == [0.0] * 6 and row["dsc_auc"] == 0.0


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("interactive"))


def test_the_start_is_the_case3d_prediction(tiny_checkpoint):
    """Step 0 of each start gives what `usam evaluate`'s case3d rows none and box give (batches of 3 slices)."""
    from usam.checkpoints import load_checkpoint
    from usam.evaluate import evaluate_case3d, model_predictors

    cohort, ckpt = tiny_checkpoint
    model, _ = load_checkpoint(ckpt)
    cases = list(D.iter_cases(cohort, "all", "manifest"))[:1]
    predict_case, _ = model_predictors(model, D.DEFAULT_WINDOW, batch_size=3)
    ref = evaluate_case3d(cases, predict_case, ["none", "box"])["per_case"]
    res = evaluate_interactive(cases, model, D.DEFAULT_WINDOW, clicks=1, noc_clicks=1, batch_size=3)
    for start in ("none", "box"):
        step0 = res["per_case"][start][0]["per_step"][0]
        for c in (1, 2):
            for k in ("dice", "nsd"):
                np.testing.assert_equal(step0["per_class"][c][k], ref[start][0]["per_class"][c][k], (start, c, k))


def test_cli_writes_markdown_csv_json_and_the_plot(tiny_checkpoint, tmp_path, capsys):
    from usam.__main__ import main

    cohort, ckpt = tiny_checkpoint
    argv = ["evaluate", "--data", str(cohort), "--split", "all", "--limit", "1", "--checkpoint", str(ckpt),
            "--protocol", "interactive", "--noc-clicks", "5", "--batch-size", "32", "--no-progress",
            "--out", str(tmp_path), "--name", "ia", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    res = result["protocols"]["interactive"]
    assert set(res["rows"]) == {"box", "none"} and res["mask_prompt"] is True and res["clicks"] == 5
    for row in res["rows"].values():
        assert all(k in row for k in ROW_KEYS) and len(row["dice_mean_by_click"]) == 6
        assert row["dsc_auc"] == pytest.approx(np.trapezoid(row["dice_mean_by_click"][1:]))
        assert 0 <= row["noc90"] <= 5 and row["seconds_per_click"] > 0
    md = (tmp_path / "ia.md").read_text()
    assert "DSC AUC" in md and "NoC@90" in md and "ia_dice_by_click.svg" in md
    with open(tmp_path / "ia.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["start"] for r in rows] == ["box", "none"] and "dice_5" in rows[0]
    with open(tmp_path / "ia_curve.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 6 * 3
    svg = ET.parse(tmp_path / "ia_dice_by_click.svg").getroot()
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert json.loads((tmp_path / "ia.json").read_text())["protocols"]["interactive"]["rows"]["box"]["noc90"] == \
        res["rows"]["box"]["noc90"]


def test_cli_refuses_a_bad_start_before_loading(tmp_path, capsys):
    from usam.__main__ import main

    argv = ["evaluate", "--data", str(tmp_path), "--protocol", "interactive", "--start", "boxes",
            "--checkpoint", str(tmp_path / "missing.safetensors")]
    assert main(argv) == 2
    assert "unknown start" in capsys.readouterr().err
