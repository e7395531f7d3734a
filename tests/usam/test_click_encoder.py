"""Click maps and the click encoder: where the maps put clicks, that the path starts silent, and that it is local."""
import numpy as np
import pytest
import torch

from usam.model import build_usam, get_config
from usam.model.click_encoder import CLICK_SIGMA, ClickEncoder, click_maps
from usam.model.fast import optimize_for_inference
from usam.prompts import Prompts


def _maps(points, labels, classes, size=(64, 64)):
    return click_maps(torch.tensor([points], dtype=torch.float32), torch.tensor([labels]),
                      torch.tensor([classes]), 3, size)[0]


def test_positive_click_peaks_at_its_pixel_in_its_class_channel():
    m = _maps([[10, 20]], [1], [2])
    assert m[2, 20, 10] == 1.0 and m[2].max() == 1.0
    assert not m[0].any() and not m[1].any()
    # a Gaussian of CLICK_SIGMA px, cut at 3 sigma
    assert m[2, 20, 10 + 4].item() == pytest.approx(np.exp(-16 / (2 * CLICK_SIGMA ** 2)), rel=1e-6)
    assert m[2, 20, 10 + 13] == 0 and m[2, 20 + 13, 10] == 0


def test_negative_click_goes_to_channel_zero_whatever_its_class():
    m = _maps([[30, 5]], [0], [1])
    assert m[0, 5, 30] == 1.0 and not m[1].any() and not m[2].any()


def test_unknown_class_positive_counts_half_in_each_foreground_channel():
    m = _maps([[30, 30]], [1], [0])
    assert m[1, 30, 30] == 0.5 and m[2, 30, 30] == 0.5 and not m[0].any()


def test_overlapping_clicks_take_the_maximum_and_off_frame_clicks_add_nothing():
    m = _maps([[20, 20], [21, 20], [500, 500], [-100, 3]], [1, 1, 1, 0], [1, 1, 1, 1])
    assert m.max() == 1.0 and m.min() == 0.0
    assert m[1, 20, 20] == 1.0 and m[1, 20, 21] == 1.0
    assert not m[0].any()


def test_batch_items_keep_their_own_clicks():
    pts = torch.tensor([[[5.0, 5.0]], [[50.0, 40.0]]])
    m = click_maps(pts, torch.tensor([[1], [1]]), torch.tensor([[1], [2]]), 3, (64, 64))
    assert m[0, 1, 5, 5] == 1 and m[0, 2].max() == 0 and m[1, 2, 40, 50] == 1 and m[1, 1].max() == 0


def test_encoder_starts_at_zero():
    enc = ClickEncoder(3, c112=8, c224=4)
    a, b = enc(torch.rand(2, 3, 224, 224))
    assert a.shape == (2, 8, 112, 112) and b.shape == (2, 4, 224, 224)
    assert not a.any() and not b.any()


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return build_usam(get_config("demo")).eval()


def _x():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))


CLICK = Prompts(points=[[150, 60]], point_labels=[1], point_classes=[2])


def test_untrained_click_path_leaves_the_output_exactly_as_before(demo, monkeypatch):
    """Zero-initialised: a click gives exactly the logits of the decoder without the click maps."""
    x = _x()
    with torch.no_grad():
        feats = demo.encode(x)
        with_path = demo.decode(feats, [CLICK])
        dec = demo.sam.mask_decoder
        real_forward = dec.forward
        monkeypatch.setattr(dec, "forward", lambda *a, clicks=None: real_forward(*a))
        without_path = demo.decode(feats, [CLICK])
    assert torch.equal(with_path, without_path)


def test_trained_click_path_changes_logits_only_near_the_click(demo):
    """With only the 224 branch trained, the change the path makes is confined to the bump plus the head's 3x3."""
    x = _x()
    with torch.no_grad():
        feats = demo.encode(x)
        before = demo.decode(feats, [CLICK])
        at224 = demo.sam.mask_decoder.click_encoder.at224
        at224.weight.normal_(0, 1.0)
        try:
            after = demo.decode(feats, [CLICK])
            fast = optimize_for_inference(demo)(x, [CLICK])
        finally:
            at224.weight.zero_()
    diff = (after - before).abs().amax(0 if after.ndim == 3 else 1)[0]
    rows, cols = torch.nonzero(diff > 0, as_tuple=True)
    assert len(rows) > 0
    reach = int(np.ceil(3 * CLICK_SIGMA)) + 2
    assert (rows - 60).abs().max() <= reach and (cols - 150).abs().max() <= reach
    assert (fast - after).abs().max() < 1e-4 * after.abs().max()


def test_decode_feeds_clicks_to_the_encoder(demo, monkeypatch):
    seen = []
    enc = demo.sam.mask_decoder.click_encoder
    real = enc.forward

    def spy(maps, dtype=None):
        seen.append(maps.clone())
        return real(maps, dtype)

    monkeypatch.setattr(enc, "forward", spy)
    with torch.no_grad():
        feats = demo.encode(_x())
        demo.decode(feats, [None])
        assert seen == []
        demo.decode(feats, [CLICK])
    assert len(seen) == 1 and seen[0][0, 2, 60, 150] == 1.0
