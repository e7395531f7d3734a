"""FastUsam: the inference model gives the reference logits (fp32) on the same weights, and leaves the model alone."""
import numpy as np
import pytest
import torch
from torch import nn

from usam.errors import UsamError
from usam.model import build_usam, get_config
from usam.model.fast import (BatchedHypernetworks, FastUpBlock, FastUsam, fold_conv_bn, interleave_add_relu,
                             optimize_for_inference, pick_device)
from usam.model.up_block import UpBlock
from usam.prompts import Prompts

# fp32 bound on max |logit difference|, relative to the logit scale: every speed-up only
# reorders sums (folded BN, split convs, sub-pixel weights); measured differences are ~1e-7.
REL_BOUND = 1e-5


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, rel-pos tables, LoRA factors and a larger logit scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.4 * torch.rand(m.num_features, generator=g) - 0.2)
        for name, p in model.named_parameters():
            if "rel_pos" in name or "lora_b" in name or "class_embeddings" in name or "click_encoder" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.sam.mask_decoder.final_output[3].weight.mul_(30.0)  # logits of order 1-10
    return model


def _inputs(b: int = 2):
    x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    prompts = [Prompts(points=[[60, 70], [120, 100], [90, 150]], point_labels=[1, 1, 0], point_classes=[1, 2, 0]),
               Prompts(boxes=[[40, 50, 170, 180]], box_classes=[0]), None][:b]
    return x, prompts


def _check(model, x, prompts):
    """Reference logits, then FastUsam's logits on the same weights."""
    with torch.no_grad():
        ref = model(x, prompts)
    out = FastUsam(model)(x, prompts)
    diff = (out - ref).abs().max().item()
    assert diff <= REL_BOUND * max(1.0, ref.abs().max().item()), diff
    assert ref.abs().max().item() > 1.0  # the bound is tested at a meaningful logit scale
    return diff


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return _randomise(build_usam(get_config("demo", lora_rank=4)).eval())


def test_fast_model_keeps_the_logits(demo):
    x, prompts = _inputs(3)
    assert _check(demo, x, prompts) < 1e-5


def test_one_image_keeps_the_logits(demo):
    x, prompts = _inputs(2)
    for i in range(2):
        _check(demo, x[i:i + 1], prompts[i:i + 1])


def test_real_windows_and_three_skips_keep_the_logits():
    """A windowed block whose window (7) is smaller than the grid; skips=3 leaves up1 without a skip."""
    torch.manual_seed(1)
    model = _randomise(build_usam(get_config("demo", vit_window_size=7, vit_global_attn_indexes=(1, 3),
                                             skips=3)).eval())
    x, prompts = _inputs(2)
    _check(model, x, prompts)
    assert FastUsam(model).encode(x).skips[0] is None


def test_vit_b_keeps_the_logits():
    torch.manual_seed(0)
    model = _randomise(build_usam(get_config("vit_b")).eval())
    x, prompts = _inputs(1)
    _check(model, x, prompts)


def test_cached_features_decode_like_a_full_forward(demo):
    x, prompts = _inputs(2)
    fast = FastUsam(demo)
    feats = fast.encode(x)
    both = fast.decode(feats, prompts)
    one = fast.decode(feats.index(1), [prompts[1]])
    assert torch.allclose(both[1:], one, atol=1e-5)
    assert torch.allclose(both, fast(x, prompts), atol=1e-6)
    # skips hold the up blocks' skip parts: fewer channels for f1..f3, so a smaller cache
    assert feats.skip_parts and [s.shape[1] for s in feats.skips] == [8, 8, 16, 32]
    with torch.no_grad():
        raw = demo.encode(x)
    assert not raw.skip_parts and [s.shape[1] for s in raw.skips] == [8, 16, 32, 64]
    assert feats.nbytes() < raw.nbytes()


def test_features_of_the_other_model_are_refused(demo):
    x, _ = _inputs(1)
    fast = FastUsam(demo)
    with torch.no_grad():
        raw = demo.encode(x)
    with pytest.raises(UsamError, match="raw skips"):
        fast.decode(raw, None)
    with pytest.raises(UsamError, match="skip parts"):
        demo.decode(fast.encode(x), None)


def test_building_leaves_the_model_and_its_state_dict_alone(demo):
    x, prompts = _inputs(2)
    before = {k: v.clone() for k, v in demo.state_dict().items()}
    forwards = {id(m): type(m).forward for m in demo.modules()}
    with torch.no_grad():
        ref = demo(x, prompts)
    fast = FastUsam(demo)
    fast(x, prompts)
    after = demo.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all("forward" not in m.__dict__ and type(m).forward is forwards[id(m)] for m in demo.modules())
    with torch.no_grad():
        assert torch.equal(demo(x, prompts), ref)
    # the derived weights are the inference model's own, never saved with the model
    assert all(k.startswith("model.") for k in fast.state_dict())
    # its adapter is a folded copy: no BatchNorm, no parameters of its own
    assert not list(fast.backbone.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.backbone.modules())


def test_training_mode_is_refused():
    torch.manual_seed(0)
    model = build_usam(get_config("demo"))
    with pytest.raises(UsamError, match="eval"):
        FastUsam(model)
    fast = FastUsam(model.eval())
    with pytest.raises(UsamError, match="inference only"):
        fast.train()
    model.train()
    with pytest.raises(UsamError, match="training mode"):
        fast.encode(_inputs(1)[0])
    model.eval()


def test_outputs_are_inference_tensors(demo):
    out = FastUsam(demo)(_inputs(1)[0])
    assert out.is_inference() and out.dtype == torch.float32 and out.shape == (1, 3, 224, 224)


def test_optimize_for_inference_is_the_load_site_step():
    torch.manual_seed(0)
    model = build_usam(get_config("demo")).train()
    fast = optimize_for_inference(model, "cpu")
    assert isinstance(fast, FastUsam) and fast.model is model and not model.training
    assert optimize_for_inference(fast) is fast


def test_fold_conv_bn_equals_conv_then_bn():
    torch.manual_seed(3)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
    bn.eval()
    x = torch.randn(2, 4, 9, 9)
    w, b = fold_conv_bn(conv, bn)
    with torch.no_grad():
        assert torch.allclose(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5)


def _randomise_bn(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return module


@pytest.mark.parametrize("bias,skip", [(True, 4), (True, 0), (False, 3)])
def test_fast_up_block_equals_conv_transpose_then_conv(bias, skip):
    """Whole up block (odd sizes, borders included): reference forward vs sub-pixel conv + skip part."""
    torch.manual_seed(6)
    block = _randomise_bn(UpBlock(6, skip, 5)).eval()
    if not bias:
        block.up.bias = None
    x = torch.randn(2, 6, 7, 9)
    s = torch.randn(2, skip, 14, 18) if skip else None
    with torch.no_grad():
        ref = block(x, s)
    fast = FastUpBlock(block, (14, 18))
    with torch.no_grad():
        out = fast(x, fast.skip_part(s))
    assert out.shape == (2, 5, 14, 18) and out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())
    with pytest.raises(UsamError, match="built for"):
        fast(torch.randn(1, 6, 5, 5), None)


def test_batched_hypernetworks():
    from segment_anything.modeling.mask_decoder import MLP

    torch.manual_seed(5)
    with torch.no_grad():
        mlps = nn.ModuleList([MLP(16, 16, 4, 3) for _ in range(5)])
        tokens = torch.randn(3, 5, 16)
        ref = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(mlps)], dim=1)
        assert (BatchedHypernetworks(mlps)(tokens) - ref).abs().max().item() < 1e-6


def test_device_selection():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("auto") == pick_device(None)
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsamError, match="CUDA is not available"):
            pick_device("cuda")
        with pytest.raises(UsamError):
            optimize_for_inference(build_usam(get_config("demo")), "cuda:0")


@pytest.mark.parametrize("split_pixels", [0, 10 ** 9])
@pytest.mark.parametrize("batch_part", [1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_interleave_add_relu_both_loops(monkeypatch, split_pixels, batch_part, fused):
    """Phase (a, c) of pixel (2i+a, 2j+c) comes from o[i+a, j+c, a, c]; + part, ReLU; both loop shapes.

    fused=False is the path GPUs take (no aten::_add_relu there), tested here on CPU.
    """
    from usam.model import fast

    monkeypatch.setattr(fast, "_PHASE_SPLIT_PIXELS", split_pixels)
    g = torch.Generator().manual_seed(3)
    o = torch.randn(2, 6, 8, 2, 2, 3, generator=g)
    part = torch.randn(batch_part, 3, 10, 14, generator=g)
    ref = torch.empty(2, 3, 10, 14)
    for a in (0, 1):
        for c in (0, 1):
            ref[:, :, a::2, c::2] = o[:, a:a + 5, c:c + 7, a, c, :].permute(0, 3, 1, 2)
    assert torch.equal(interleave_add_relu(o, None), ref)
    out = interleave_add_relu(o, part, fused=fused)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, torch.relu(ref + part), atol=1e-6)
    assert np.isfinite(out.numpy()).all()
