"""VolumePredictor and the one inference path: one encoder run per slice, cache bounds, slice-pixel prompts."""
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from usam.errors import PromptError, UsamError
from usam.model import build_usam, get_config
from usam.model.fast import FastUsam
from usam.predictor import FeatureCache, VolumePredictor, encode_images, predict_logits
from usam.preprocess import logits_to_labels, preprocess_slices
from usam.prompts import Prompts, SlicePrompts, points_from_mask


@dataclass
class FakeVolume:  # the predictor needs only .array (z, y, x) float32 HU
    array: np.ndarray
    spacing: tuple = (2.5, 0.8, 0.8)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source: dict = field(default_factory=dict)


def _demo():
    torch.manual_seed(0)
    return build_usam(get_config("demo")).eval()


@pytest.fixture(scope="module")
def reference():  # the model as loaded
    return _demo()


@pytest.fixture(scope="module")
def model(reference):  # its inference model, built once (as the app and the CLIs do)
    return FastUsam(reference)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return FakeVolume(rng.normal(0, 100, size=(5, 96, 80)).astype(np.float32))


META = {"preprocessing": {"window": [-150, 250]}}


def test_encoder_runs_once_per_slice_however_many_prompts(model, volume):
    pred = VolumePredictor(model, volume, META, device="cpu")
    first = pred.predict(2, None)
    assert pred.encoder_calls == 1 and not first.cached and first.encoder_ms > 0
    assert first.labels.shape == (96, 80) and first.labels.dtype == np.uint8
    assert first.probs.shape == (3, 96, 80)
    outs = []
    for x in (10, 50, 100, 150, 200):
        r = pred.predict(2, Prompts(points=[[x, 100]], point_labels=[1], point_classes=[1]))
        assert r.cached and r.encoder_ms == 0.0
        outs.append(r.probs)
    r = pred.predict(2, Prompts(boxes=[[20, 20, 120, 150]], box_classes=[0]))
    assert pred.encoder_calls == 1
    assert np.abs(outs[0] - outs[-1]).max() > 0  # prompts reach the decoder
    pred.predict(3, None)
    assert pred.encoder_calls == 2


@pytest.mark.parametrize("fast", [True, False])
def test_predict_equals_direct_reference_model_call(model, reference, volume, fast):
    pred = VolumePredictor(model if fast else reference, volume, META, device="cpu", prompt_rules="none")
    p = Prompts(points=[[60, 70]], point_labels=[1], point_classes=[2])
    r = pred.predict(1, p)
    with torch.inference_mode():
        logits = reference(preprocess_slices(volume.array[1], (-150, 250)), [p])
    labels, probs = logits_to_labels(logits, (96, 80))
    np.testing.assert_allclose(r.probs, probs[0], atol=1e-5)


def test_slice_pixel_prompts_are_converted_by_the_predictor(model, volume):
    """A click at slice pixel (x, y) equals the model-frame prompt of its pixel centre; box corners too."""
    pred = VolumePredictor(model, volume, META, device="cpu", prompt_rules="none")
    h, w = 96, 80
    click = pred.predict(2, SlicePrompts(points=[[20, 30]], point_labels=[1], point_classes=[2]))
    frame = Prompts(points=[[(20 + 0.5) * 224 / w - 0.5, (30 + 0.5) * 224 / h - 0.5]], point_labels=[1],
                    point_classes=[2])
    np.testing.assert_array_equal(click.probs, pred.predict(2, frame).probs)
    # a box from the first to the last pixel of the slice: on the frame's edge, no error
    whole = pred.predict(2, SlicePrompts(boxes=[[0, 0, w - 1, h - 1]], box_classes=[0]))
    assert whole.labels.shape == (h, w)
    with pytest.raises(PromptError, match="outside the 80 x 96 slice"):
        pred.predict(2, SlicePrompts(points=[[80, 10]], point_labels=[1]))


def test_a_mask_box_in_slice_pixels_predicts_as_the_model_frame_box(model, volume):
    """The app's propagation box (slice_box_from_mask, slice pixels) gives box_from_mask's result, all rules on."""
    from usam.prompts import box_from_mask, slice_box_from_mask

    pred = VolumePredictor(model, volume, META, device="cpu")
    mask = np.zeros((96, 80), np.uint8)
    mask[30:60, 20:45] = 1
    mask[40:50, 25:35] = 2
    for per_class in (False, True):
        new = pred.predict(3, slice_box_from_mask(mask, margin=2, per_class=per_class))
        old = pred.predict(3, box_from_mask(mask, margin=2, per_class=per_class))
        np.testing.assert_allclose(new.probs, old.probs, atol=1e-5)
        np.testing.assert_array_equal(new.labels, old.labels)


def test_the_predictor_leaves_the_model_alone(reference, volume):
    """Constructing and running predictors changes neither the model's mode, device, forwards nor weights."""
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    pred = VolumePredictor(reference, volume, META)
    pred.predict(0, None)
    assert pred.model is reference and pred.device == torch.device("cpu") and not reference.training
    assert all("forward" not in m.__dict__ for m in reference.modules())
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    training = _demo().train()
    with pytest.raises(UsamError, match="training mode"):
        VolumePredictor(training, volume, META)
    assert training.training
    with pytest.raises(UsamError, match="is on cpu"):
        VolumePredictor(reference, volume, META, device="meta")
    with pytest.raises(UsamError, match="Usam or FastUsam"):
        VolumePredictor(object(), volume, META)


def test_one_inference_path_for_every_caller(model, reference):
    """encode_images + predict_logits: float32 logits, the reference's on both models, rules only when asked."""
    x = preprocess_slices(np.random.default_rng(1).normal(0, 100, (2, 40, 40)).astype(np.float32), (-150, 250))
    box = Prompts(boxes=[[60, 60, 150, 150]], box_classes=[0])
    ref = predict_logits(reference, encode_images(reference, x), [box, None])
    fast = predict_logits(model, encode_images(model, x), [box, None])
    assert ref.dtype == torch.float32 and ref.shape == (2, 3, 224, 224)
    assert (fast - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())
    ruled = predict_logits(model, encode_images(model, x), [box, None], rules="box")
    assert torch.equal(ruled[1], fast[1]) and not torch.equal(ruled[0], fast[0])


def test_prompt_rules_confine_the_output_to_the_box_and_the_clicked_class(model, volume):
    box = Prompts(boxes=[[60, 60, 150, 150]], box_classes=[0])
    raw = VolumePredictor(model, volume, META, device="cpu").predict(2, box)  # default: the network alone
    np.testing.assert_array_equal(raw.labels, VolumePredictor(model, volume, META, device="cpu",
                                                              prompt_rules="none").predict(2, box).labels)
    ruled = VolumePredictor(model, volume, META, device="cpu", prompt_rules="all").predict(2, box)
    # the box at 224 covers slice rows ~24.6..64.6 (of 96) and cols ~20.5..54 (of 80), plus the margin
    outside = np.ones((96, 80), bool)
    outside[20:70, 16:59] = False
    assert (raw.labels[outside] > 0).any(), "the random model paints foreground outside the box"
    assert (ruled.labels[outside] == 0).all()
    tumor_only = Prompts(points=[[100, 100]], point_labels=[1], point_classes=[2])
    gated = VolumePredictor(model, volume, META, device="cpu", prompt_rules="gate").predict(2, tumor_only)
    assert (gated.labels != 1).all() and gated.probs[1].max() < 1e-6
    with pytest.raises(PromptError, match="unknown prompt rules"):
        VolumePredictor(model, volume, META, device="cpu", prompt_rules="boxes")


def test_predictors_share_one_inference_model(model, volume):
    a = VolumePredictor(model, volume, META, device="cpu")
    b = VolumePredictor(model, volume, META, device="cpu")
    assert a.model is b.model is model
    np.testing.assert_array_equal(a.predict(0, None).labels, b.predict(0, None).labels)


def test_fast_and_reference_volumes_agree(model, reference, volume):
    fast = VolumePredictor(model, volume, META, device="cpu").predict_volume(batch_size=3)
    ref = VolumePredictor(reference, volume, META, device="cpu").predict_volume(batch_size=3)
    assert (fast != ref).mean() < 1e-3  # argmax ties aside, the same labels


def test_predict_volume_batches_progress_and_reuses_cache(model, volume):
    pred = VolumePredictor(model, volume, META, device="cpu")
    pred.predict(1, None)
    seen = []
    lab = np.zeros((96, 80), np.uint8)
    lab[40:60, 30:50] = 1
    out = pred.predict_volume(z_range=(1, 4), prompt_fn=lambda z: points_from_mask(lab, 1) if z == 2 else None,
                              batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (5, 96, 80) and out.dtype == np.uint8
    assert seen == [(2, 3), (3, 3)]
    assert pred.encoder_calls == 3  # slices 1 (cached before), 2, 3
    assert (out[0] == 0).all() and (out[4] == 0).all()
    np.testing.assert_array_equal(out[3], pred.predict(3, None).labels)
    np.testing.assert_array_equal(out[2], pred.predict(2, points_from_mask(lab, 1)).labels)
    assert pred.encoder_calls == 3
    with pytest.raises(PromptError):
        pred.predict(5, None)
    with pytest.raises(PromptError):
        pred.predict_volume(z_range=(0, 9))


@pytest.mark.parametrize("fast", [True, False])
def test_cache_is_bounded_in_bytes(model, reference, volume, fast):
    if fast:  # cached skips are the up blocks' skip parts: up1..up4 widths 8, 8, 16, 32 (demo)
        per_slice = 4 * (8 * 224**2 + 8 * 112**2 + 16 * 56**2 + 32 * 28**2 + 128 * 14**2)
    else:  # raw skips f0..f3
        per_slice = 4 * (8 * 224**2 + 16 * 112**2 + 32 * 56**2 + 64 * 28**2 + 128 * 14**2)
    model = model if fast else reference
    pred = VolumePredictor(model, volume, META, device="cpu", cache_bytes=2 * per_slice + 10)
    for z in (0, 1, 2):
        pred.predict(z, None)
    assert len(pred.cache) == 2 and pred.cache.nbytes == 2 * per_slice
    assert 0 not in pred.cache and 2 in pred.cache
    pred.predict(1, None)  # still cached (LRU keeps 1 and 2)
    assert pred.encoder_calls == 3
    pred.predict(0, None)  # evicts 2, the least recently used
    assert pred.encoder_calls == 4 and 2 not in pred.cache and 1 in pred.cache
    tiny = VolumePredictor(model, volume, META, device="cpu", cache_bytes=10)
    assert tiny.predict(0, None).labels.shape == (96, 80) and len(tiny.cache) == 0


def test_feature_cache_keeps_own_storage():
    from usam.model import ImageFeatures
    big = ImageFeatures((None, None, None, None), torch.zeros(4, 2, 3, 3))
    c = FeatureCache(10_000)
    c.put(0, big.index(0).clone())
    assert c.get(0).embedding.untyped_storage().nbytes() == 2 * 3 * 3 * 4
