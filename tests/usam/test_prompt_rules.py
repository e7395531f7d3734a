"""Prompt rules: boxes confine foreground, class-labelled points gate the classes of a slice."""
import numpy as np
import pytest
import torch

from usam.errors import PromptError
from usam.prompt_rules import SUPPRESSED, allowed_mask, apply_prompt_rules, parse_rules, selected_regions
from usam.prompts import Prompts


def _logits(b=1, size=224, fg=2):
    """Logits where class fg wins everywhere."""
    x = torch.zeros(b, 3, size, size)
    x[:, fg] = 5.0
    return x


def test_parse_rules():
    assert parse_rules("none") == (False, False, False)
    assert parse_rules(None) == (False, False, False)
    assert parse_rules("box") == (True, False, False)
    assert parse_rules("gate") == (False, True, False)
    assert parse_rules("box, select") == (True, False, True)
    assert parse_rules("all") == (True, True, True)
    for bad in ("boxes", "none,box"):
        with pytest.raises(PromptError, match="unknown prompt rules"):
            parse_rules(bad)


def test_union_box_confines_every_foreground_class():
    p = Prompts(boxes=[[50, 60, 100, 120]])
    m = allowed_mask(p, box_margin=4)
    assert m[0].all()  # background everywhere
    for c in (1, 2):
        assert m[c, 60, 50] and m[c, 56, 46] and m[c, 124, 104]  # inside, and the 4 px margin
        assert not m[c, 55, 50] and not m[c, 60, 45] and not m[c, 125, 100] and not m[c, 60, 105]
    labels = apply_prompt_rules(_logits(), [p]).argmax(1)[0]
    assert (labels[60:121, 50:101] == 2).all()
    assert labels[:55].eq(0).all() and labels[:, 105:].eq(0).all()
    assert int((labels == 2).sum()) == (120 + 4 - 56 + 1) * (100 + 4 - 46 + 1)


def test_class_box_confines_only_its_class():
    p = Prompts(boxes=[[10, 10, 20, 20]], box_classes=[2])
    m = allowed_mask(p, box_margin=0)
    assert m[1].all() and m[2].sum() == 11 * 11


def test_gate_drops_classes_without_a_positive_point():
    only_rectum = Prompts(points=[[30, 30], [40, 40]], point_labels=[1, 1], point_classes=[1, 1])
    m = allowed_mask(only_rectum)
    assert m[0].all() and m[1].all() and not m[2].any()
    out = apply_prompt_rules(_logits(fg=2), [only_rectum])
    assert (out[0, 2] == SUPPRESSED).all() and out[0, 1].eq(0).all()
    assert out.argmax(1).eq(0).all()  # the tumor-everywhere map becomes background


def test_gate_needs_classes_on_every_positive_point():
    unknown = Prompts(points=[[30, 30], [40, 40]], point_labels=[1, 1], point_classes=[1, 0])
    assert allowed_mask(unknown, box=False) is None
    negative_only = Prompts(points=[[30, 30]], point_labels=[0], point_classes=[2])
    assert allowed_mask(negative_only, box=False) is None
    both = Prompts(points=[[30, 30], [40, 40]], point_labels=[1, 1], point_classes=[1, 2])
    assert allowed_mask(both) is None  # both classes clicked: nothing ruled out


def test_nothing_to_rule_leaves_logits_untouched():
    x = _logits(b=2)
    out = apply_prompt_rules(x, [None, Prompts.empty()])
    assert out is x
    assert apply_prompt_rules(x, [Prompts(boxes=[[0, 0, 5, 5]]), None], box=False, gate=False) is x


def test_only_the_prompted_map_of_a_batch_changes():
    x = _logits(b=2)
    out = apply_prompt_rules(x, [None, Prompts(boxes=[[0, 0, 5, 5]])])
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])
    assert x[1, 2].eq(5).all()  # the input is not modified


def test_other_model_sizes_rescale_the_mask():
    out = apply_prompt_rules(_logits(size=112), [Prompts(boxes=[[0, 0, 111, 111]])], box_margin=0)
    labels = out.argmax(1)[0]
    assert labels[:56, :56].eq(2).all() and labels[57:].eq(0).all() and labels[:, 57:].eq(0).all()


def test_batch_and_prompt_counts_must_match():
    with pytest.raises(PromptError, match="2 logit maps but 1 prompts"):
        apply_prompt_rules(_logits(b=2), [None])


def _two_tumor_blobs():
    """Logits: tumor in two separate squares, background elsewhere."""
    x = torch.zeros(1, 3, 224, 224)
    x[0, 0] = 1.0
    x[0, 2, 20:40, 20:40] = 5.0
    x[0, 2, 150:170, 150:170] = 5.0
    x[0, 1, 150:170, 150:170] = 4.0  # the second blob's runner-up class is the rectum
    return x


def test_select_keeps_only_the_clicked_region():
    click = Prompts(points=[[30, 30]], point_labels=[1], point_classes=[2])
    out = apply_prompt_rules(_two_tumor_blobs(), [click], box=False, gate=False, select=True)
    labels = out.argmax(1)[0]
    assert labels[20:40, 20:40].eq(2).all()
    assert labels[150:170, 150:170].eq(1).all()  # the unclicked blob goes to the next most likely class
    # a click within the radius of a region's edge selects it; farther away it does not
    lab = _two_tumor_blobs().argmax(1)[0].numpy().astype(np.uint8)
    near = Prompts(points=[[42, 30]], point_labels=[1], point_classes=[2])
    assert selected_regions(lab, near, radius=3)[2, 30, 30]
    far = Prompts(points=[[45, 30]], point_labels=[1], point_classes=[2])
    keep = selected_regions(lab, far, radius=3)
    assert not keep[2, 30, 30] and not keep[2, 160, 160] and keep[1].all() and keep[0].all()


def test_select_ignores_negative_points_and_clicks_on_every_region():
    lab = _two_tumor_blobs().argmax(1)[0].numpy().astype(np.uint8)
    both = Prompts(points=[[30, 30], [160, 160]], point_labels=[1, 1], point_classes=[2, 2])
    assert selected_regions(lab, both) is None  # every region clicked: nothing to drop
    negative = Prompts(points=[[30, 30]], point_labels=[0], point_classes=[2])
    assert selected_regions(lab, negative) is None
    assert selected_regions(lab, None) is None
