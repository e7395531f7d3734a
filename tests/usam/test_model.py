"""U-SAM model: key layout, shapes, prompts, class embeddings, skips, LoRA."""
import json
from pathlib import Path

import pytest
import torch

from usam.model import UsamConfig, build_usam, extension_keys, get_config, used_skips
from usam.model.lora import LoraQkv
from usam.prompts import Prompts

CLICK_KEYS = [f"sam.mask_decoder.click_encoder.{k}.{w}" for k in ("at112.0", "at112.2", "at112.4", "at224")
              for w in ("weight", "bias")]

REF_JSON = Path("/work/shared/reference/usam_b_reference_state_dict_shapes.json")
if not REF_JSON.is_file():  # a copy may live beside the tests in CI
    REF_JSON = Path(__file__).parent / "data" / "usam_b_reference_state_dict_shapes.json"


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return build_usam(get_config("demo")).eval()


def _x(b=2, seed=1):
    return torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.skipif(not REF_JSON.is_file(), reason="reference key list not available")
def test_vit_b_state_dict_equals_reference_layout():
    ref = json.loads(REF_JSON.read_text())
    with torch.device("meta"):
        model = build_usam(get_config("vit_b"))
    sd = model.state_dict()
    extras = extension_keys(model)
    branch = [f"sam.prompt_encoder.mask_class_downscaling.{i}.{w}" for i in (0, 1, 3, 4, 6) for w in ("weight", "bias")]
    assert extras == ["sam.prompt_encoder.class_embeddings.weight"] + branch + CLICK_KEYS
    assert set(sd) - set(extras) == set(ref)
    assert {k: list(v.shape) for k, v in sd.items() if k in ref} == ref
    # the exact reference U-SAM-B holds 104,155,791 parameters (buffers excluded)
    n = sum(p.numel() for name, p in model.named_parameters() if name not in extras)
    assert n == 104_155_791


@pytest.mark.parametrize("name,lora", [("vit_b", 0), ("vit_l", 0), ("vit_h", 4)])
def test_shapes_large_configs_on_meta(name, lora):
    # meta tensors: the full forward runs shape-only, no memory, no arithmetic
    with torch.device("meta"):
        model = build_usam(get_config(name, lora_rank=lora)).eval()
        x = torch.zeros(2, 3, 224, 224)
    feats = model.encode(x)
    cfg = model.config
    assert feats.embedding.shape == (2, 256, 14, 14)
    assert [tuple(s.shape) for s in feats.skips] == [(2, 32, 224, 224), (2, 64, 112, 112), (2, 128, 56, 56),
                                                   (2, 256, 28, 28)]
    assert model.backbone.down4.nConvs[1].conv.out_channels == cfg.vit_embed_dim
    p = Prompts(boxes=[[10, 20, 90, 100]], box_classes=[2])  # SAM's point embedding needs real tensors
    assert model.decode(feats, [p, None]).shape == (2, 3, 224, 224)


def test_demo_shapes_and_size(demo):
    x = _x(2)
    with torch.no_grad():
        feats = demo.encode(x)
        out = demo.decode(feats)
    assert out.shape == (2, 3, 224, 224) and torch.isfinite(out).all()
    assert feats.embedding.shape == (2, 128, 14, 14)
    assert feats.nbytes() == 4 * 2 * (8 * 224**2 + 16 * 112**2 + 32 * 56**2 + 64 * 28**2 + 128 * 14**2)
    one = feats.index(1)
    assert len(one) == 1 and torch.equal(one.embedding, feats.embedding[1:])
    both = type(feats).cat([feats.index(0), one])
    assert torch.equal(both.skips[0], feats.skips[0])
    fp32_bytes = sum(v.numel() * v.element_size() for v in demo.state_dict().values())
    assert fp32_bytes <= 20 * 2**20


def test_prompt_changes_output(demo):
    x = _x(1)
    with torch.no_grad():
        feats = demo.encode(x)
        none = demo.decode(feats)
        pts = demo.decode(feats, [Prompts(points=[[100, 120]], point_labels=[1], point_classes=[1])])
        pts2 = demo.decode(feats, [Prompts(points=[[30, 40]], point_labels=[1], point_classes=[1])])
        box = demo.decode(feats, [Prompts(boxes=[[90, 100, 140, 150]], box_classes=[0])])
        whole = demo(x)  # (in the same grad mode: SDPA's CPU kernel differs with autograd on, at fp32 rounding)
    # a random-init decoder moves logits only a little; float noise here is ~1e-8
    assert (none - pts).abs().max() > 1e-5
    assert (pts - pts2).abs().max() > 1e-5
    assert (none - box).abs().max() > 1e-5
    assert torch.equal(none, whole)  # forward = decode(encode)


def test_zero_init_class_embeddings_change_nothing(demo):
    with torch.no_grad():
        feats = demo.encode(_x(1))
        xy = [[100, 120], [60, 70]]
        base = demo.decode(feats, [Prompts(points=xy, point_labels=[1, 0], point_classes=[0, 0],
                                           boxes=[[50, 50, 150, 160]], box_classes=[0])])
        cls = demo.decode(feats, [Prompts(points=xy, point_labels=[1, 0], point_classes=[1, 2],
                                          boxes=[[50, 50, 150, 160]], box_classes=[2])])
        assert torch.equal(base, cls)
        emb = demo.sam.prompt_encoder.class_embeddings.weight
        saved = emb.clone()
        emb[1:].normal_()
        try:
            changed = demo.decode(feats, [Prompts(points=xy, point_labels=[1, 0], point_classes=[1, 2],
                                                  boxes=[[50, 50, 150, 160]], box_classes=[2])])
        finally:
            emb.copy_(saved)
    assert (changed - base).abs().max() > 1e-5


def test_batched_decode_of_mixed_prompts_equals_one_by_one(demo):
    x = _x(4, seed=3)
    prompts = [None,
               Prompts(points=[[100, 120], [90, 100]], point_labels=[1, 1], point_classes=[1, 2]),
               Prompts(boxes=[[50, 50, 150, 160]], box_classes=[0]),
               Prompts(points=[[10, 20], [30, 40]], point_labels=[1, 0], point_classes=[2, 0])]
    with torch.no_grad():
        feats = demo.encode(x)
        batched = demo.decode(feats, prompts)
        single = torch.cat([demo.decode(feats.index(i), [p]) for i, p in enumerate(prompts)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skips", [0, 1, 2, 3, 4])
def test_skip_count(skips):
    cfg = get_config("demo", skips=skips)
    model = build_usam(cfg).eval()
    use = used_skips(skips)
    assert sum(use) == skips and (skips == 0 or use[3])  # deepest skip (f3) first
    dec = model.sam.mask_decoder
    in_ch = [dec.up4.nConvs[0].conv.in_channels, dec.up3.nConvs[0].conv.in_channels,
             dec.up2.nConvs[0].conv.in_channels, dec.up1.nConvs[0].conv.in_channels]
    base = [128, 32, 16, 8]  # upsampled widths entering up4, up3, up2, up1
    skip_w = [64, 32, 16, 8]  # f3, f2, f1, f0
    assert in_ch == [b + (s if use[3 - i] else 0) for i, (b, s) in enumerate(zip(base, skip_w))]
    with torch.no_grad():
        feats = model.encode(_x(1))
        assert [s is not None for s in feats.skips] == list(use)
        assert model.decode(feats).shape == (1, 3, 224, 224)


def test_config_round_trip():
    cfg = get_config("vit_b", lora_rank=4, skips=3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UsamConfig.from_dict(d) == cfg
    with pytest.raises(Exception):
        get_config("vit_x")


def test_lora_tunable_count_vit_b():
    with torch.device("meta"):
        model = build_usam(get_config("vit_b", lora_rank=4))
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert lora == 12 * 4 * 4 * 768  # q and v, A and B, rank 4, 12 blocks
    # everything but the ViT (patch_embed, pos_embed, blocks, neck) plus LoRA: paper 17.68 M
    # + the class-aware mask branch (4,700) and the click encoder (3,440), both zero-init and trainable
    assert model.tunable_parameters() == 17_679_503 + 4_700 + 3_440
    assert abs(model.tunable_parameters() / 1e6 - 17.68) / 17.68 < 0.005
    assert all(isinstance(b.attn.qkv, LoraQkv) for b in model.sam.image_encoder.blocks)


def test_lora_starts_as_identity_and_only_lora_adapter_decoder_train():
    torch.manual_seed(0)
    plain = build_usam(get_config("demo")).eval()
    lora = build_usam(get_config("demo", lora_rank=2)).eval()
    missing, unexpected = lora.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(".lora_" in k for k in missing) and len(missing) == 4 * 4
    x = _x(2)
    p = [Prompts(points=[[100, 120]], point_labels=[1], point_classes=[1]), None]
    with torch.no_grad():
        torch.testing.assert_close(lora(x, p), plain(x, p), atol=1e-5, rtol=1e-5)
    lora.train()
    lora(x, p).logsumexp(1).mean().backward()
    got = {n for n, q in lora.named_parameters() if q.grad is not None}
    allowed = ("backbone.", "sam.mask_decoder.", "sam.prompt_encoder.")
    assert all(".lora_" in n or n.startswith(allowed) for n in got)
    assert not any(n.startswith("sam.image_encoder.") and ".lora_" not in n for n in got)
    assert any(".lora_b_q" in n for n in got) and any(n.startswith("backbone.") for n in got)
    assert lora.sam.image_encoder.blocks[0].attn.qkv.lora_b_v.weight.grad.abs().sum() > 0
    # explicit freezing options
    lora.set_trainable(freeze_image_encoder=False, freeze_prompt_encoder=True)
    assert lora.sam.image_encoder.pos_embed.requires_grad
    assert not any(q.requires_grad for q in lora.sam.prompt_encoder.parameters())


def test_prompt_count_mismatch_is_an_error(demo):
    from usam.errors import PromptError
    with torch.no_grad():
        feats = demo.encode(_x(2))
        with pytest.raises(PromptError):
            demo.decode(feats, [None])


@pytest.mark.parametrize("window", [0, 7, 14])
def test_sdpa_attention_equals_segment_anythings(window):
    """The ViT's SdpaAttention gives segment-anything's attention (fp32 rounding) on the same weights."""
    from segment_anything.modeling.image_encoder import Attention

    from usam.model.image_encoder import SdpaAttention

    torch.manual_seed(4)
    size = window or 14
    sam = Attention(64, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=(size, size))
    with torch.no_grad():
        sam.rel_pos_h.normal_(0, 0.3)
        sam.rel_pos_w.normal_(0, 0.3)
        x = torch.randn(3, size, size, 64)
        ref = sam(x)
        out = SdpaAttention(sam)(x)
    assert (out - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())
    assert list(SdpaAttention(sam).state_dict()) == list(sam.state_dict())
