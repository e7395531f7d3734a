"""VolumePredictor: one encoder run per slice, cache bounds, results at slice resolution."""
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from usam.errors import PromptError
from usam.model import build_usam, get_config
from usam.model.fast import is_optimized, optimize_for_inference, restore_reference
from usam.predictor import FeatureCache, VolumePredictor
from usam.preprocess import logits_to_labels, preprocess_slices
from usam.prompts import Prompts, points_from_mask


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
def model():  # the predictors optimise it in place (fast path, the default)
    return _demo()


@pytest.fixture(scope="module")
def reference():  # same weights, never optimised
    return _demo()


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
    pred = VolumePredictor(model if fast else reference, volume, META, device="cpu", fast=fast, prompt_rules="none")
    assert is_optimized(pred.model) == fast
    p = Prompts(points=[[60, 70]], point_labels=[1], point_classes=[2])
    r = pred.predict(1, p)
    with torch.inference_mode():
        logits = reference(preprocess_slices(volume.array[1], (-150, 250)), [p])
    labels, probs = logits_to_labels(logits, (96, 80))
    np.testing.assert_allclose(r.probs, probs[0], atol=1e-5)


def test_prompt_rules_confine_the_output_to_the_box_and_the_clicked_class(model, volume):
    box = Prompts(boxes=[[60, 60, 150, 150]], box_classes=[0])
    raw = VolumePredictor(model, volume, META, device="cpu", prompt_rules="none").predict(2, box)
    ruled = VolumePredictor(model, volume, META, device="cpu").predict(2, box)  # default: all rules
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


def test_fast_path_is_the_default_and_shared_models_are_optimised_once(volume):
    shared = _demo()
    a = VolumePredictor(shared, volume, META, device="cpu")
    assert is_optimized(shared) and a.model is shared
    encode = shared.encode
    b = VolumePredictor(shared, volume, META, device="cpu")
    assert shared.encode is encode  # not re-bound: features cached by `a` stay valid
    np.testing.assert_array_equal(a.predict(0, None).labels, b.predict(0, None).labels)
    # options chosen by the caller are kept
    optimize_for_inference(shared, "cpu", channels_last=False)
    VolumePredictor(shared, volume, META, device="cpu")
    assert shared._usam_fast.channels_last is False
    # fast=False leaves an already optimised model alone (its features would not fit the reference)
    VolumePredictor(shared, volume, META, device="cpu", fast=False)
    assert is_optimized(shared)
    restore_reference(shared)


def test_fast_and_reference_volumes_agree(model, reference, volume):
    fast = VolumePredictor(model, volume, META, device="cpu").predict_volume(batch_size=3)
    ref = VolumePredictor(reference, volume, META, device="cpu", fast=False).predict_volume(batch_size=3)
    assert not is_optimized(reference)
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
    pred = VolumePredictor(model, volume, META, device="cpu", cache_bytes=2 * per_slice + 10, fast=fast)
    for z in (0, 1, 2):
        pred.predict(z, None)
    assert len(pred.cache) == 2 and pred.cache.nbytes == 2 * per_slice
    assert 0 not in pred.cache and 2 in pred.cache
    pred.predict(1, None)  # still cached (LRU keeps 1 and 2)
    assert pred.encoder_calls == 3
    pred.predict(0, None)  # evicts 2, the least recently used
    assert pred.encoder_calls == 4 and 2 not in pred.cache and 1 in pred.cache
    tiny = VolumePredictor(model, volume, META, device="cpu", cache_bytes=10, fast=fast)
    assert tiny.predict(0, None).labels.shape == (96, 80) and len(tiny.cache) == 0


def test_feature_cache_keeps_own_storage():
    from usam.model import ImageFeatures
    big = ImageFeatures((None, None, None, None), torch.zeros(4, 2, 3, 3))
    c = FeatureCache(10_000)
    c.put(0, big.index(0).clone())
    assert c.get(0).embedding.untyped_storage().nbytes() == 2 * 3 * 3 * 4
