"""Training by simulated users (usam/training/interaction.py): rounds, clicks, one encoder pass,
the mask prompt fed back, the loss, and a run of `usam train --interactive-rounds`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from usam import train as T
from usam.losses import DiceCELoss
from usam.prompts import Prompts
from usam.training import train
from usam.training.interaction import SimulatedUser, add_clicks, draw_rounds, interactive_loss
from usam.training.validation import CLICK_ROW, val_modes

TINY = ["--config", "demo", "--override", "vit_depth=1", "--override", "vit_global_attn_indexes=[0]",
        "--override", "vit_embed_dim=64", "--override", "vit_heads=2", "--override", "prompt_dim=32",
        "--override", "decoder_heads=2", "--override", "decoder_mlp_dim=64", "--override", "num_mask_tokens=8",
        "--override", "adapter_channels=[8,8,16,16]", "--override", "up_channels=[16,8,8,8]"]


def _tiny_model():
    from usam.model import build_usam, get_config

    torch.manual_seed(0)
    overrides = T.parse_overrides([TINY[i + 1] for i in range(2, len(TINY), 2)])
    return build_usam(get_config("demo", **overrides)).train()


def _labels(b: int = 2) -> torch.Tensor:
    lab = torch.zeros(b, 224, 224, dtype=torch.uint8)
    lab[:, 80:120, 90:140] = 1
    lab[:, 95:105, 100:115] = 2
    return lab


def test_rounds_are_drawn_in_range_the_same_for_a_seed_and_step():
    draws = [draw_rounds(3, 7, s) for s in range(200)]
    assert set(draws) == {0, 1, 2, 3}
    assert draws == [draw_rounds(3, 7, s) for s in range(200)]
    assert all(draw_rounds(0, 7, s) == 0 for s in range(20))


def test_add_clicks_puts_a_positive_click_of_the_missed_class_inside_its_region():
    lab = _labels(2).numpy()
    logits = torch.zeros(2, 3, 224, 224)
    logits[:, 0] = 5.0  # everything background: the largest error is the normal wall
    logits[1, 1, 80:120, 90:140] = 10.0  # slice 1 drew the whole region as normal: the tumour is missed
    out, n = add_clicks([Prompts.empty(), Prompts.empty()], logits, lab)
    assert n == 2
    p0, p1 = out
    x, y = p0.points[0]
    assert p0.point_labels[0] == 1 and p0.point_classes[0] == 1 and lab[0, int(y), int(x)] == 1
    x, y = p1.points[0]
    assert p1.point_labels[0] == 1 and p1.point_classes[0] == 2 and lab[1, int(y), int(x)] == 2
    # a perfect prediction gets no click and keeps its prompts
    perfect = torch.nn.functional.one_hot(torch.from_numpy(lab).long(), 3).permute(0, 3, 1, 2).float() * 9
    same, n = add_clicks(out, perfect, lab)
    assert n == 0 and same[0] is out[0] and same[1] is out[1]


def test_a_negative_click_goes_where_foreground_was_drawn_on_background():
    lab = np.zeros((1, 224, 224), np.uint8)
    logits = torch.zeros(1, 3, 224, 224)
    logits[0, 0] = 5.0
    logits[0, 2, 10:40, 10:40] = 10.0
    (p,), n = add_clicks([Prompts.empty()], logits, lab)
    assert n == 1 and p.point_labels[0] == 0 and p.point_classes[0] == 2
    x, y = p.points[0]
    assert 10 <= x < 40 and 10 <= y < 40


def test_simulated_user_encodes_once_and_feeds_the_previous_logits_back():
    model = _tiny_model()
    calls = {"encode": 0, "masks": []}
    encode, decode = model.encode, model.decode

    def counting_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    def spying_decode(feats, prompts=None, mask_logits=None):
        calls["masks"].append(None if mask_logits is None else mask_logits.clone())
        return decode(feats, prompts, mask_logits=mask_logits)

    model.encode, model.decode = counting_encode, spying_decode
    images = torch.randn(2, 3, 224, 224)
    labels = _labels(2)
    user = SimulatedUser(model)
    assert len(user(images, labels.long(), None, 0)) == 1
    calls.update(encode=0, masks=[])
    outs = user(images, labels.long(), None, 3)
    assert len(outs) == 2 and calls["encode"] == 1
    assert calls["masks"][0] is None and all(m is not None for m in calls["masks"][1:]) and len(calls["masks"]) == 4
    # each round's mask prompt is the previous round's output
    torch.testing.assert_close(calls["masks"][1], outs[0].detach().float())
    # the start and the last round carry gradient; the loss is their mean
    loss = interactive_loss(user, images, labels.long(), None, DiceCELoss(), False, 0, 2)
    loss.backward()
    assert torch.isfinite(loss) and model.sam.mask_decoder.final_output[-1].weight.grad is not None
    assert model.sam.prompt_encoder.mask_class_downscaling[-1].weight.grad is not None


def test_train_with_simulated_users_runs_logs_rounds_and_validates_with_clicks(tmp_path):
    from usam.phantom import generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, cases=4, seed=11, size="small")
    out = tmp_path / "run"
    cfg = T.parse_config(["--data", str(cohort), "--out", str(out), "--batch-size", "2", "--steps", "3",
                          "--prompt", "mixed", "--no-progress", "--val-every", "0", "--val-stride", "8",
                          "--log-every", "1", "--threads", "1", "--interactive-rounds", "2", *TINY])
    assert cfg.interactive_rounds == 2
    assert train(cfg) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if e["event"] == "step"]
    assert [e["rounds"] for e in steps] == [draw_rounds(2, cfg.seed, s) for s in range(3)]
    val = [e for e in log if e["event"] == "val"][-1]
    assert set(val["rows"]) == {"none", "points3", "box", CLICK_ROW}
    assert 0.0 <= val["rows"][CLICK_ROW]["dice_mean"] <= 1.0 or np.isnan(val["rows"][CLICK_ROW]["dice_mean"])
    assert val_modes("box", 3) == ["box"] and val_modes("box", 3, True) == ["box", CLICK_ROW]


def test_negative_rounds_are_refused():
    with pytest.raises(Exception, match="interactive_rounds"):
        T.parse_config(["--data", "x", "--out", "y", "--interactive-rounds", "-1"])
