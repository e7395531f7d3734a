"""The click-response protocol (usam/evaluation/click_response.py): trials, success counting, locality with the
pixel spacing, the rows, the CLI's files and JSON keys."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from usam import data as D
from usam.evaluation.click_response import (evaluate_click_response, far_mask, find_trials, locality_share,
                                            min_region_px, region_centres)
from tests.usam.eval_fixtures import StandIn, tiny_checkpoint as make_tiny_checkpoint

ROW_KEYS = ("positive_success", "negative_success", "locality_pass", "trials", "per_class", "locality_mean",
            "removal", "filled", "positive_trials", "negative_trials")
YY, XX = np.mgrid[:224, :224]


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    return (XX - cx) ** 2 + (YY - cy) ** 2 <= r * r


def _truth() -> np.ndarray:
    gt = np.zeros((224, 224), np.uint8)
    gt[_disk(60, 60, 20)] = 1
    gt[_disk(150, 150, 12)] = 2
    return gt


def _base() -> np.ndarray:
    """The stand-in's unprompted output: normal wall with its left part drawn as tumour (a positive normal
    trial), the tumour missed (a positive tumour trial), a normal blob on background (a negative normal trial)
    and a 3-pixel tumour speck on background (under 4 px: no trial)."""
    base = np.zeros((224, 224), np.uint8)
    base[_disk(60, 60, 20)] = 1
    base[_disk(60, 60, 20) & (XX < 50)] = 2
    base[_disk(180, 40, 8)] = 1
    base[120, 200:203] = 2
    return base


def _onehot_logits(labels: np.ndarray) -> torch.Tensor:
    out = torch.full((3, 224, 224), -5.0)
    lab = torch.from_numpy(labels.astype(np.int64))
    out.scatter_(0, lab[None], 5.0)
    return out


class PaintModel(StandIn):
    """A stand-in for U-SAM: unprompted it draws _base(); the previous logits replace that when they come back;
    each point paints a disk (radius 16 at 224) of its class (positive) or of background (negative).
    obey: which point kinds it paints ('both', 'positive', 'none'); sprawl: every point also paints a 40 x 40
    normal square in the bottom-left corner, far from every click."""

    def __init__(self, obey: str = "both", sprawl: bool = False) -> None:
        super().__init__()
        self.obey, self.sprawl = obey, sprawl
        self.base = _onehot_logits(_base())

    def decode(self, features, prompts, mask_logits=None) -> torch.Tensor:
        out = self.previous(mask_logits)
        if out is None:
            out = self.base.expand(len(features), -1, -1, -1).clone()
        for i, p in enumerate(self.items(prompts)):
            for (x, y), label, cls in zip(p.points, p.point_labels, p.point_classes):
                if self.obey == "none" or (self.obey == "positive" and label == 0):
                    continue
                self.paint_point(out[i], x, y, label, cls)
            if self.sprawl and len(p.points):
                out[i][:, 184:, :40] = -5.0
                out[i, 1, 184:, :40] = 5.0
        return out


def _case() -> D.CaseData:
    """224 x 224 slices of 1 mm pixels, 3 annotated slices (0..2), each with _truth()."""
    labels = np.stack([_truth()] * 3)
    image = np.zeros(labels.shape, np.float32)
    return D.CaseData("P", "test", image, labels, (2.0, 1.0, 1.0), {"rectum_start": 0, "rectum_end": 2})


def test_minimum_region_is_four_model_pixels_in_slice_pixels():
    assert min_region_px((224, 224)) == 4
    assert min_region_px((512, 512)) == 21  # 4 * (512 / 224)^2 = 20.9
    assert min_region_px((128, 128)) == 2
    assert min_region_px((10, 10)) == 1


def test_region_centre_is_the_largest_regions_distance_maximum():
    m = np.zeros((1, 40, 60), bool)
    m[0, 5:8, 5:8] = True        # 9 px
    m[0, 20:31, 30:41] = True    # 11 x 11: centre (x 35, y 25)
    m[0, 20:31, 50:55] = True    # 11 x 5, not touching
    (click, region), = region_centres(m)
    assert (click.x, click.y) == (35, 25) and int(region.sum()) == 11 * 11 and not region[6, 6]
    assert region_centres(np.zeros((1, 5, 5), bool)) == [(None, None)]


def test_trials_of_the_constructed_slice():
    trials = find_trials(_base()[None], _truth()[None], min_region_px((224, 224)))
    pos1, pos2, neg1, neg2 = (t[0] for t in trials)
    assert pos1["click"].positive and pos1["click"].cls == 1 and _base()[pos1["click"].y, pos1["click"].x] == 2
    assert (pos2["click"].x, pos2["click"].y) == (150, 150) and pos2["region_px"] == int(_disk(150, 150, 12).sum())
    assert not neg1["click"].positive and neg1["click"].cls == 1 and (neg1["click"].x, neg1["click"].y) == (180, 40)
    assert neg2 is None  # the 3-pixel speck is under the minimum


def test_locality_uses_the_pixel_spacing():
    before = np.zeros((100, 100), np.uint8)
    after = before.copy()
    after[0, 20] = 1  # 20 pixels right of the click at (0, 0)
    assert locality_share(before, after, 0, 0, (1.0, 1.0)) == (0.0, int(far_mask((100, 100), 0, 0, (1.0, 1.0)).sum()))
    share, n_far = locality_share(before, after, 0, 0, (2.0, 2.0))  # 40 mm away: far
    assert n_far == int(far_mask((100, 100), 0, 0, (2.0, 2.0)).sum()) and share == pytest.approx(1.0 / n_far)
    assert locality_share(before, after, 0, 0, (1.0, 2.0))[0] > 0     # (sy, sx): the column step is 2 mm
    assert locality_share(before, after, 0, 0, (2.0, 1.0))[0] == 0.0
    assert locality_share(before[:5, :5], after[:5, :5], 0, 0, (1.0, 1.0)) == (0.0, 0)  # nothing that far


def test_success_is_counted_per_kind_and_class():
    res = evaluate_click_response([_case()], PaintModel(), D.DEFAULT_WINDOW, starts=["none"], batch_size=2)
    assert list(res["rows"]) == ["none", "none, no mask prompt"]
    row = res["rows"]["none"]
    assert (row["trials"], row["positive_trials"], row["negative_trials"]) == (9, 6, 3)
    assert row["per_class"][1]["trials"] == 6 and row["per_class"][2]["trials"] == 3
    assert row["per_class"][2]["negative_trials"] == 0
    assert row["positive_success"] == row["negative_success"] == row["locality_pass"] == 1.0
    assert row["removal"] == 1.0 and row["per_class"][2]["filled"] == 1.0 and row["locality_mean"] == 0.0
    assert all(row["targets_met"].values())
    zs = sorted({t["z"] for t in res["trials"]["none"]})
    assert zs == [0, 1, 2]

    deaf = evaluate_click_response([_case()], PaintModel("none"), D.DEFAULT_WINDOW, starts=["none"])["rows"]["none"]
    assert deaf["trials"] == 9 and deaf["positive_success"] == deaf["negative_success"] == 0.0
    assert deaf["removal"] == 0.0 and deaf["locality_pass"] == 1.0 and not deaf["targets_met"]["positive_success"]
    half = evaluate_click_response([_case()], PaintModel("positive"), D.DEFAULT_WINDOW, starts=["none"])
    half = half["rows"]["none"]
    assert half["positive_success"] == 1.0 and half["negative_success"] == 0.0
    assert half["per_class"][1]["positive_success"] == 1.0 and half["per_class"][1]["negative_success"] == 0.0


def test_a_click_that_changes_pixels_far_away_fails_locality():
    res = evaluate_click_response([_case()], PaintModel(sprawl=True), D.DEFAULT_WINDOW, starts=["none"])
    row = res["rows"]["none"]
    assert row["positive_success"] == 1.0 and row["locality_pass"] == 0.0 and not row["targets_met"]["locality_pass"]
    for t in res["trials"]["none"]:
        n_far = int(far_mask((224, 224), t["x"], t["y"], (1.0, 1.0)).sum())
        assert t["far_px"] == n_far and t["locality"] == pytest.approx(40 * 40 / n_far)  # the square, all far
    assert row["locality_mean"] > 0.01


def test_the_session_path_gives_the_recorded_trials():
    """Recorded from the batched decode path before the protocol drove an InteractiveSession (bde07c1)."""
    res = evaluate_click_response([_case()], PaintModel(sprawl=True), D.DEFAULT_WINDOW, batch_size=2)
    first = [(0, "positive", 1, 45, 56, 230, 0.917391), (1, "positive", 1, 45, 56, 230, 0.917391),
             (2, "positive", 1, 45, 56, 230, 0.917391), (0, "positive", 2, 150, 150, 441, 1.0)]
    for name, trials in res["trials"].items():
        assert len(trials) == 9, name
        got = [(t["z"], t["kind"], t["cls"], t["x"], t["y"], t["region_px"], round(t["region_share"], 6))
               for t in trials[:4]]
        assert got == first and all(t["success"] for t in trials[:4])
        assert trials[0]["locality"] == pytest.approx(0.033787, abs=1e-6)


def test_each_trial_starts_from_the_slices_start():
    """undo after a trial gives the start back: a later trial on the slice sees the start, not the earlier click."""
    model = PaintModel()
    res = evaluate_click_response([_case()], model, D.DEFAULT_WINDOW, starts=["none"], feeds=(True,))
    by_slice = [t for t in res["trials"]["none"] if t["z"] == 0]
    assert len(by_slice) == 3 and all(t["locality"] == 0.0 and t["success"] for t in by_slice)


def test_mask_prompt_feeds_and_the_box_start():
    model = PaintModel()
    res = evaluate_click_response([_case()], model, D.DEFAULT_WINDOW, starts=["box"], feeds=(False,))
    assert list(res["rows"]) == ["box, no mask prompt"] and not any(model.masks_seen)
    model = PaintModel()
    res = evaluate_click_response([_case()], model, D.DEFAULT_WINDOW, starts=["box"], feeds=(True,))
    assert model.masks_seen[0] is False and model.masks_seen[-1] is True  # the start has no previous mask
    assert res["rows"]["box"]["trials"] == 9  # the stand-in ignores boxes: the start is _base()


def test_prompt_rules_add_labelled_rows_beside_the_network_alone():
    model = PaintModel()
    res = evaluate_click_response([_case()], model, D.DEFAULT_WINDOW, starts=["none"], feeds=(True,),
                                  prompt_rules="select")
    assert list(res["rows"]) == ["none", "none + rules"] and model.encoded == 3  # each slice encoded once
    plain = evaluate_click_response([_case()], PaintModel(), D.DEFAULT_WINDOW, starts=["none"], feeds=(True,))
    assert res["rows"]["none"]["positive_success"] == plain["rows"]["none"]["positive_success"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("clicks"))


def test_cli_writes_markdown_csv_trials_and_json(tiny_checkpoint, tmp_path, capsys):
    from usam.__main__ import main

    cohort, ckpt = tiny_checkpoint
    argv = ["evaluate", "--data", str(cohort), "--split", "all", "--max-cases", "1", "--checkpoint", str(ckpt),
            "--protocol", "clicks", "--batch-size", "32", "--no-progress", "--out", str(tmp_path), "--name", "cr",
            "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    res = result["protocols"]["clicks"]
    assert result["cases"] == 1 and "trials" not in res
    assert set(res["rows"]) == {"box", "box, no mask prompt", "none", "none, no mask prompt"}
    for row in res["rows"].values():
        assert all(k in row for k in ROW_KEYS) and set(row["per_class"]) == {"1", "2"}
        assert row["trials"] == row["per_class"]["1"]["trials"] + row["per_class"]["2"]["trials"] > 0
        assert row["locality_pass"] is None or 0.0 <= row["locality_pass"] <= 1.0
    md = (tmp_path / "cr.md").read_text()
    assert "farther than 30 mm" in md and "locality pass %" in md and "| none | tumor |" in md
    with open(tmp_path / "cr.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4 * 3
    with open(tmp_path / "cr_trials.csv") as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == sum(r["trials"] for r in res["rows"].values())
    assert {t["kind"] for t in trials} <= {"positive", "negative"}
    saved = json.loads((tmp_path / "cr.json").read_text())["protocols"]["clicks"]
    assert saved["rows"]["none"]["trials"] == res["rows"]["none"]["trials"]


def test_cli_refuses_a_bad_start_before_loading(tmp_path, capsys):
    from usam.__main__ import main

    argv = ["evaluate", "--data", str(tmp_path), "--protocol", "clicks", "--start", "boxes",
            "--checkpoint", str(tmp_path / "missing.safetensors")]
    assert main(argv) == 2
    assert "unknown start" in capsys.readouterr().err
