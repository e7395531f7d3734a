"""optimize_for_inference: every speed-up gives the reference logits (fp32) on the same weights."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from usam.errors import UsamError
from usam.model import build_usam, get_config
from usam.model.fast import (FastOptions, conv1x1_gemm, fold_conv_bn, hypernetworks, is_optimized,
                             optimize_for_inference, pick_device, restore_reference, subpixel_up)
from usam.model.up_block import UpBlock
from usam.prompts import Prompts

# fp32 bound on max |logit difference|, relative to the logit scale: every speed-up only
# reorders sums (folded BN, split convs, fused attention); measured differences are ~1e-7.
REL_BOUND = 1e-5
SWITCHES = ("sdpa_vit", "sdpa_decoder", "fold_bn", "split_skips", "channels_last", "merge_lora", "subpixel_up",
            "gemm_head", "batched_hyper", "fold_hyper", "cache_dense_pe")


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
            if "rel_pos" in name or "lora_b" in name or "class_embeddings" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.sam.mask_decoder.final_output[3].weight.mul_(30.0)  # logits of order 1-10
    return model


def _inputs(b: int = 2):
    x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    prompts = [Prompts(points=[[60, 70], [120, 100], [90, 150]], point_labels=[1, 1, 0], point_classes=[1, 2, 0]),
               Prompts(boxes=[[40, 50, 170, 180]], box_classes=[0]), None][:b]
    return x, prompts


def _check(model, x, prompts, **options):
    """Reference logits, then optimised logits (with these options) on the same weights."""
    restore_reference(model)
    with torch.no_grad():
        ref = model(x, prompts)
    optimize_for_inference(model, "cpu", **options)
    out = model(x, prompts)
    restore_reference(model)
    diff = (out - ref).abs().max().item()
    assert diff <= REL_BOUND * max(1.0, ref.abs().max().item()), diff
    assert ref.abs().max().item() > 1.0  # the bound is tested at a meaningful logit scale
    return diff


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return _randomise(build_usam(get_config("demo", lora_rank=4)).eval())


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_speedup_alone_keeps_the_logits(demo, switch):
    x, prompts = _inputs(3)
    options = {s: s == switch for s in SWITCHES}
    _check(demo, x, prompts, **options)


def test_all_speedups_together_keep_the_logits(demo):
    x, prompts = _inputs(3)
    assert _check(demo, x, prompts) < 1e-5


def test_real_windows_and_three_skips_keep_the_logits():
    """A windowed block whose window (7) is smaller than the grid keeps SAM's partition path."""
    torch.manual_seed(1)
    model = _randomise(build_usam(get_config("demo", vit_window_size=7, vit_global_attn_indexes=(1, 3),
                                             skips=3)).eval())
    x, prompts = _inputs(2)
    _check(model, x, prompts)


def test_vit_b_keeps_the_logits():
    torch.manual_seed(0)
    model = _randomise(build_usam(get_config("vit_b")).eval())
    x, prompts = _inputs(1)
    _check(model, x, prompts)


def test_cached_features_decode_like_a_full_forward(demo):
    x, prompts = _inputs(2)
    optimize_for_inference(demo, "cpu")
    try:
        feats = demo.encode(x)
        both = demo.decode(feats, prompts)
        one = demo.decode(feats.index(1), [prompts[1]])
        assert torch.allclose(both[1:], one, atol=1e-5)
        assert torch.allclose(both, demo(x, prompts), atol=1e-6)
        # skips hold the up blocks' skip parts: fewer channels for f1..f3, so a smaller cache
        assert [s.shape[1] for s in feats.skips] == [8, 8, 16, 32]
    finally:
        restore_reference(demo)
    raw = demo.encode(x)
    assert [s.shape[1] for s in raw.skips] == [8, 16, 32, 64]
    assert feats.nbytes() < raw.nbytes()


def test_raw_features_are_refused_by_the_optimised_decoder(demo):
    x, _ = _inputs(1)
    with torch.no_grad():
        raw = demo.encode(x)
    optimize_for_inference(demo, "cpu")
    try:
        with pytest.raises(UsamError, match="same optimised model"):
            demo.decode(raw, None)
    finally:
        restore_reference(demo)


def test_state_dict_unchanged_and_restore_is_exact(demo):
    x, prompts = _inputs(2)
    before = {k: v.clone() for k, v in demo.state_dict().items()}
    with torch.no_grad():
        ref = demo(x, prompts)
    optimize_for_inference(demo, "cpu")
    assert is_optimized(demo)
    after = demo.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    restore_reference(demo)
    assert not is_optimized(demo)
    assert all(m.__dict__.get("forward") is None for m in demo.modules())
    with torch.no_grad():
        assert torch.equal(demo(x, prompts), ref)


def test_idempotent_and_options_can_change(demo):
    optimize_for_inference(demo, "cpu")
    encode = demo.encode
    optimize_for_inference(demo, "cpu")
    assert demo.encode is encode  # nothing wrapped twice
    optimize_for_inference(demo, "cpu", split_skips=False)
    assert demo._usam_fast.split_skips is False and demo.encode is not encode
    x, _ = _inputs(1)
    assert [s.shape[1] for s in demo.encode(x).skips] == [8, 16, 32, 64]
    restore_reference(demo)


def test_folded_weights_follow_new_weights():
    """Optimise first, load weights later: folds and merged LoRA are recomputed."""
    torch.manual_seed(2)
    model = build_usam(get_config("demo", lora_rank=2)).eval()
    source = _randomise(build_usam(get_config("demo", lora_rank=2)).eval(), seed=5)
    x, prompts = _inputs(2)
    optimize_for_inference(model, "cpu")
    model(x, prompts)  # builds the caches from the old weights
    model.load_state_dict(source.state_dict())
    with torch.no_grad():
        ref = source(x, prompts)
    assert (model(x, prompts) - ref).abs().max().item() <= REL_BOUND * ref.abs().max().item()


def test_outputs_are_inference_tensors_and_eval_mode(demo):
    demo.train()
    optimize_for_inference(demo, "cpu")
    try:
        assert not demo.training
        out = demo(_inputs(1)[0])
        assert out.is_inference() and out.dtype == torch.float32 and out.shape == (1, 3, 224, 224)
    finally:
        restore_reference(demo)


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


def test_switches_are_the_options():
    names = {f.name for f in dataclasses.fields(FastOptions)} - {"inference_mode", "autocast_dtype", "compile_vit"}
    assert set(SWITCHES) == names
    from usam import bench
    assert set(bench.SWITCHES) == names


@pytest.mark.parametrize("channels_last,bias,skip", [(True, True, 4), (False, True, 0), (True, False, 3)])
def test_subpixel_up_block_equals_conv_transpose_then_conv(channels_last, bias, skip):
    """Whole up block (odd sizes, borders included): reference forward vs the sub-pixel 2x2 conv path."""
    torch.manual_seed(6)
    block = _randomise_bn(UpBlock(6, skip, 5)).eval()
    if not bias:
        block.up.bias = None
    x = torch.randn(2, 6, 7, 9)
    s = torch.randn(2, skip, 14, 18) if skip else None
    with torch.no_grad():
        ref = block(x, s)
    from usam.model import fast
    block.__dict__["_usam_cl"] = channels_last
    block.__dict__["_usam_opts"] = FastOptions(split_skips=False, channels_last=channels_last)
    with torch.no_grad():
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = fast._upblock_forward(block, x, s)
        direct = subpixel_up(block, x)
    assert direct.shape == (2, 5, 14, 18)
    assert (out - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())


def _randomise_bn(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return module


def test_conv1x1_gemm_and_batched_hypernetworks():
    from segment_anything.modeling.mask_decoder import MLP

    torch.manual_seed(5)
    conv = nn.Conv2d(8, 3, kernel_size=1, bias=False)
    x = torch.randn(2, 8, 10, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (conv1x1_gemm(conv, x) - conv(x)).abs().max().item() < 1e-6
        mlps = nn.ModuleList([MLP(16, 16, 4, 3) for _ in range(5)])
        tokens = torch.randn(3, 5, 16)
        ref = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(mlps)], dim=1)
        assert (hypernetworks(mlps, tokens) - ref).abs().max().item() < 1e-6


def test_device_selection_and_gpu_defaults():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("auto") == pick_device(None)
    assert pick_device("cpu") == torch.device("cpu")
    cpu, gpu = FastOptions.for_device("cpu"), FastOptions.for_device("cuda")
    assert cpu.autocast_dtype is None and not cpu.compile_vit  # fp32 on CPU: same numbers
    assert gpu.autocast_dtype == "bfloat16" and gpu.channels_last
    assert dataclasses.replace(gpu, autocast_dtype=None) != gpu
    if not torch.cuda.is_available():
        with pytest.raises(UsamError, match="CUDA is not available"):
            pick_device("cuda")
        with pytest.raises(UsamError):
            optimize_for_inference(build_usam(get_config("demo")), "cuda:0")


def test_autocast_is_ignored_on_cpu(demo):
    """A bf16 request on CPU keeps fp32 (autocast is GPU only): identical to plain fp32."""
    x, prompts = _inputs(1)
    optimize_for_inference(demo, "cpu")
    a = demo(x, prompts)
    optimize_for_inference(demo, "cpu", autocast_dtype="bfloat16", compile_vit=True)
    b = demo(x, prompts)
    restore_reference(demo)
    assert b.dtype == torch.float32 and torch.equal(a, b)
    assert np.isfinite(a.numpy()).all()


def test_one_image_folds_the_mask_product_into_up1(demo, monkeypatch):
    """B=1 decodes take the folded path (conv(x, K H)); its logits are the reference's."""
    from usam.model import fast

    seen = []
    real = fast._subpixel_phases
    monkeypatch.setattr(fast, "_subpixel_phases", lambda block, x, weights=None: seen.append(weights is not None)
                        or real(block, x, weights))
    x, prompts = _inputs(2)
    for i in range(2):
        seen.clear()
        _check(demo, x[i:i + 1], prompts[i:i + 1])
        assert seen.count(True) == 1  # up1 only; up4..up2 use their own weights
    seen.clear()
    _check(demo, x[:1], prompts[:1], fold_hyper=False)
    assert True not in seen


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
    assert torch.equal(fast._interleave_add_relu(o, None), ref)
    out = fast._interleave_add_relu(o, part, fused=fused)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, torch.relu(ref + part), atol=1e-6)


def test_dense_pe_is_cached_and_follows_its_buffer():
    torch.manual_seed(0)
    model = build_usam(get_config("demo")).eval()
    pe = model.sam.prompt_encoder
    ref = pe.get_dense_pe()
    optimize_for_inference(model, "cpu")
    assert torch.equal(pe.get_dense_pe(), ref) and pe.get_dense_pe() is pe.get_dense_pe()
    with torch.no_grad():
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    assert not torch.equal(pe.get_dense_pe(), ref)  # recomputed after an in-place change
    restore_reference(model)
    assert "get_dense_pe" not in pe.__dict__


def test_training_mode_after_optimising_runs_the_reference_path():
    """model.train() on an optimised model: raw skips, reference up blocks, the reference's train-mode logits."""
    torch.manual_seed(0)
    model = _randomise(build_usam(get_config("demo")))
    x, prompts = _inputs(2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        ref = model(x, prompts)
    model.load_state_dict(state)  # the reference pass moved the BatchNorm running statistics
    optimize_for_inference(model, "cpu")
    model.train()
    out = model(x, prompts)
    restore_reference(model)
    assert (out - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())
