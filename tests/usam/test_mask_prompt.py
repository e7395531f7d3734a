"""The previous mask as SAM's dense prompt, class-aware: reaches the decoder, changes nothing when absent or at init."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from usam.checkpoints import METADATA_KEY, load_checkpoint, load_reference_state_dict, read_metadata, save_checkpoint
from usam.errors import PromptError
from usam.model import build_usam, extension_keys, get_config
from usam.model.fast import FastUsam
from usam.model.prompt_encoder import MASK_LOGIT_CLAMP, mask_prompt_inputs
from usam.predictor import encode_images, predict_logits
from usam.prompts import Prompts

BRANCH = "sam.prompt_encoder.mask_class_downscaling."


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and a logit scale of order 1-10 (as tests/usam/test_fast.py)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        model.sam.mask_decoder.final_output[3].weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return _randomise(build_usam(get_config("demo")).eval())


def _x(b=2, seed=1):
    return torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _mask(b=1, seed=5, scale=6.0):
    """Previous logits with a blob of class 1 and one of class 2."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(b, 3, 224, 224, generator=g)
    m[:, 0] += scale
    m[:, 1, 60:120, 50:130] += 2 * scale
    m[:, 2, 130:180, 90:160] += 2 * scale
    return m


P1 = Prompts(points=[[100, 120]], point_labels=[1], point_classes=[2])


def _perturbed_branch(model, seed=3):
    """A copy of the branch's last conv, randomised (the trained state); returns a restore function."""
    last = model.sam.prompt_encoder.mask_class_downscaling[-1]
    saved = last.weight.clone(), last.bias.clone()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g))
        last.bias.copy_(0.1 * torch.randn(last.bias.shape, generator=g))

    def restore():
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])
    return restore


def test_branch_keys_are_extensions_and_start_at_zero(demo):
    keys = extension_keys(demo)
    assert "sam.prompt_encoder.class_embeddings.weight" in keys
    branch = [k for k in keys if k.startswith(BRANCH)]
    assert len(branch) == 10  # conv, LN, conv, LN, conv: weight + bias each
    last = demo.sam.prompt_encoder.mask_class_downscaling[-1]
    assert last.in_channels == 16 and last.out_channels == 128
    assert demo.sam.prompt_encoder.mask_class_downscaling[0].in_channels == 2  # num_classes - 1
    assert not last.weight.any() and not last.bias.any()


def test_without_a_mask_the_output_is_the_old_no_mask_path(demo):
    x = _x(2)
    prompts = [P1, None]
    with torch.no_grad():
        feats = demo.encode(x)
        new = demo.decode(feats, prompts)
        assert torch.equal(new, demo.decode(feats, prompts, mask_logits=None))
        assert torch.equal(new, demo.decode(feats, prompts, mask_logits=[None, None]))
        pe = demo.sam.prompt_encoder  # the old code path, written out: no_mask_embed as the dense embedding
        old = []
        for i, p in enumerate(prompts):
            t = demo._prompt_tensors([p or Prompts.empty()], x.device)
            sparse, _ = pe.encode(1, **t)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 14, 14)
            old.append(demo.sam.mask_decoder(feats.embedding[i:i + 1], pe.get_dense_pe(), sparse, dense,
                                             tuple(s[i:i + 1] for s in feats.skips)))
    assert torch.equal(new, torch.cat(old))


def test_with_a_mask_at_init_the_dense_prompt_is_sams_own(demo):
    pe = demo.sam.prompt_encoder
    m = _mask(2)
    with torch.no_grad():
        _, dense = pe.encode(2, mask_logits=m)
        fg, per_class = mask_prompt_inputs(m, pe.mask_input_size)
        assert fg.shape == (2, 1, 56, 56) and per_class.shape == (2, 2, 56, 56)
        assert torch.equal(dense, pe.mask_downscaling(fg))  # the zero branch adds exactly nothing
        # the foreground logit is SAM's binary logit: log p(fg) - log p(bg), a 4x4 mean at 56
        want = (torch.logsumexp(m[:, 1:], 1, keepdim=True) - m[:, :1]).clamp(-20, 20)
        torch.testing.assert_close(fg, nn.functional.avg_pool2d(want, 4), atol=1e-5, rtol=1e-5)


def test_the_mask_reaches_the_decoder_through_sams_path_and_the_class_branch(demo):
    feats = demo.encode(_x(1))
    a = _mask(1, seed=5)
    b = _mask(1, seed=6)
    b[:, 0, :112] += 30.0  # the top half is background in b
    swapped = a[:, [0, 2, 1]]  # same foreground, classes exchanged
    with torch.no_grad():
        none = demo.decode(feats, [P1])
        out_a = demo.decode(feats, [P1], mask_logits=a)
        out_b = demo.decode(feats, [P1], mask_logits=b)
        out_s = demo.decode(feats, [P1], mask_logits=swapped)
        assert (out_a - none).abs().max() > 1e-3   # SAM's mask_downscaling path, zero branch
        assert (out_a - out_b).abs().max() > 1e-3  # a different mask, a different output
        assert torch.equal(out_a, out_s)            # SAM's binary path cannot tell the classes apart ...
        restore = _perturbed_branch(demo)
        try:
            cls_a = demo.decode(feats, [P1], mask_logits=a)
            cls_s = demo.decode(feats, [P1], mask_logits=swapped)
            cls_none = demo.decode(feats, [P1])
        finally:
            restore()
    assert (cls_a - cls_s).abs().max() > 1e-3   # ... the class branch can
    assert (cls_a - out_a).abs().max() > 1e-3
    assert torch.equal(cls_none, none)          # without a mask the branch is not used


def test_decoding_masks_and_no_masks_together_equals_one_by_one(demo):
    x = _x(4, seed=3)
    prompts = [None, P1, Prompts(boxes=[[50, 50, 150, 160]], box_classes=[0]), P1]
    masks = [_mask(1, seed=7)[0], None, _mask(1, seed=8)[0], _mask(1, seed=9)[0]]
    with torch.no_grad():
        feats = demo.encode(x)
        batched = demo.decode(feats, prompts, mask_logits=masks)
        single = torch.cat([demo.decode(feats.index(i), [p], mask_logits=None if m is None else m[None])
                            for i, (p, m) in enumerate(zip(prompts, masks))])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
        stacked = torch.stack([masks[0], masks[2], masks[3]])  # a (B, K, H, W) tensor: every item has a mask
        sub = feats.select([0, 2, 3])
        torch.testing.assert_close(demo.decode(sub, [prompts[0], prompts[2], prompts[3]], mask_logits=stacked),
                                   batched[[0, 2, 3]], atol=1e-5, rtol=1e-5)


def test_fast_model_equals_the_model_with_masks(demo):
    x = _x(3, seed=4)
    prompts = [P1, None, Prompts(boxes=[[40, 50, 170, 180]], box_classes=[0])]
    masks = [_mask(1, seed=10)[0], _mask(1, seed=11)[0], None]
    fast = FastUsam(demo)
    restore = _perturbed_branch(demo)
    try:
        for m in (masks, torch.stack([masks[0], masks[1], masks[0]])):
            with torch.no_grad():
                ref = demo(x, prompts, m)
            out = fast(x, prompts, mask_logits=m)
            assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
            feats = encode_images(fast, x)  # the one inference path forwards mask_logits too
            via = predict_logits(fast, feats, prompts, mask_logits=m)
            assert (via - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    finally:
        restore()


def test_a_saturated_or_broken_mask_is_bounded(demo):
    feats = demo.encode(_x(1))
    m = _mask(1)
    huge = m * 1e6
    huge[0, 1, 0, 0] = float("inf")
    huge[0, 2, 0, 1] = float("nan")
    fg, per_class = mask_prompt_inputs(huge, (56, 56))
    assert torch.isfinite(fg).all() and fg.abs().max() <= MASK_LOGIT_CLAMP
    assert torch.isfinite(per_class).all() and per_class.abs().max() <= MASK_LOGIT_CLAMP
    with torch.no_grad():
        out = demo.decode(feats, [P1], mask_logits=huge)
    assert torch.isfinite(out).all()


def test_bad_masks_are_prompt_errors(demo):
    feats = demo.encode(_x(2))
    with pytest.raises(PromptError, match="previous masks for 2"):
        demo.decode(feats, None, mask_logits=[None])
    with pytest.raises(PromptError, match="classes"):
        demo.decode(feats, None, mask_logits=torch.zeros(2, 2, 224, 224))
    with pytest.raises(PromptError, match="one shape"):
        demo.decode(feats, None, mask_logits=[torch.zeros(3, 224, 224), torch.zeros(3, 56, 56)])
    with pytest.raises(PromptError):
        demo.decode(feats, None, mask_logits=torch.zeros(3, 224, 224))


def test_a_smaller_mask_is_resized_and_the_branch_trains(demo):
    pe = demo.sam.prompt_encoder
    small = nn.functional.avg_pool2d(_mask(1), 4)  # already 56^2: used as is
    with torch.no_grad():
        _, d56 = pe.encode(1, mask_logits=small)
        _, d28 = pe.encode(1, mask_logits=nn.functional.avg_pool2d(small, 2))  # upsampled (bilinear)
    assert d56.shape == d28.shape == (1, 128, 14, 14)
    model = build_usam(get_config("demo")).train()
    out = model.decode(model.encode(_x(1)), [P1], mask_logits=_mask(1))
    out.square().mean().backward()
    assert model.sam.prompt_encoder.mask_class_downscaling[-1].weight.grad.abs().sum() > 0


def test_checkpoints_without_the_new_keys_load(demo, tmp_path):
    x, m = _x(1), _mask(1)
    with torch.no_grad():
        want_none, want_mask = demo(x, [P1]), demo(x, [P1], m)
    # the reference (public code) layout: every extension key absent, left at init
    ref_sd = {k: v.clone() for k, v in demo.state_dict().items() if k not in extension_keys(demo)}
    back, report = load_reference_state_dict(ref_sd, demo.config)
    assert {k for k in report.left_at_init if k.startswith(BRANCH)} == {k for k in extension_keys(demo)
                                                                         if k.startswith(BRANCH)}
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(x, [P1]), want_none) and torch.equal(back(x, [P1], m), want_mask)
    # one of our own safetensors checkpoints written before the branch existed
    path = save_checkpoint(demo, tmp_path / "old.safetensors", {"weights_kind": "demo-phantom"})
    meta = read_metadata(path)
    old = {k: v for k, v in load_file(str(path)).items() if not k.startswith(BRANCH)}
    save_file(old, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(x, [P1]), want_none) and torch.equal(loaded(x, [P1], m), want_mask)


def test_the_predictor_returns_logits_and_feeds_them_back(demo):
    import numpy as np

    from usam.predictor import VolumePredictor
    from usam.prompts import SlicePrompts

    class Vol:
        array = np.random.default_rng(0).normal(0, 100, size=(3, 90, 70)).astype(np.float32)

    fast = FastUsam(demo)
    pred = VolumePredictor(fast, Vol(), {}, prompt_rules="none")
    click = SlicePrompts(points=[[30, 40]], point_labels=[1], point_classes=[1])
    first = pred.predict(1, click)
    assert first.logits.shape == (3, 224, 224) and first.logits.dtype == torch.float32
    again = pred.predict(1, click, mask_logits=None)
    assert np.array_equal(first.probs, again.probs)
    fed = pred.predict(1, click, mask_logits=first.logits)
    assert np.abs(fed.probs - first.probs).max() > 1e-4 and pred.encoder_calls == 1
    batch = pred.predict_batch([0, 1, 2], [None, click, click], [None, first.logits, None])
    assert [r.cached for r in batch] == [False, True, False] and pred.encoder_calls == 3
    np.testing.assert_allclose(batch[1].probs, fed.probs, atol=1e-5)
    np.testing.assert_allclose(batch[2].probs, pred.predict(2, click).probs, atol=1e-5)
    assert batch[0].logits.untyped_storage().data_ptr() != batch[1].logits.untyped_storage().data_ptr()
    with pytest.raises(PromptError):
        pred.predict_batch([0, 1], [None])


def test_the_branch_leaves_the_random_init_of_every_other_module_as_it_was():
    from segment_anything.modeling import PromptEncoder

    from usam.model.prompt_encoder import UsamPromptEncoder

    args = dict(embed_dim=64, image_embedding_size=(14, 14), input_image_size=(224, 224), mask_in_chans=16)
    torch.manual_seed(0)
    PromptEncoder(**args), nn.Embedding(3, 64, padding_idx=0)  # what the encoder built before the branch
    before = torch.get_rng_state()
    torch.manual_seed(0)
    UsamPromptEncoder(**args, num_classes=3)
    assert torch.equal(torch.get_rng_state(), before)  # modules built next draw the same weights as before
