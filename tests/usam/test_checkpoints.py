"""Checkpoints: our safetensors format, the public code's layout, official SAM weights, resolution."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from usam.checkpoints import (demo_checkpoint_path, infer_config, load_checkpoint, load_sam_weights,
                              read_metadata, resolve_weights, save_checkpoint)
from usam.errors import CheckpointError
from usam.model import build_usam, extension_keys, get_config
from usam.prompts import Prompts

CLICK_KEYS = [f"sam.mask_decoder.click_encoder.{k}.{w}" for k in ("at112.0", "at112.2", "at112.4", "at224")
              for w in ("weight", "bias")]

REF_JSON = Path("/work/shared/reference/usam_b_reference_state_dict_shapes.json")


def _randomize_buffers(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _x(seed=1):
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_usam(get_config("demo", skips=3)).eval()
    _randomize_buffers(model)
    with torch.no_grad():
        model.sam.prompt_encoder.class_embeddings.weight[1:].normal_()
    meta = {"preprocessing": {"window": [-100, 200], "size": 224, "mean": 0.1, "std": 0.2},
            "provenance": {"data": "phantom", "commit": "abc"}, "weights_kind": "demo-phantom"}
    path = save_checkpoint(model, tmp_path / "m.safetensors", meta)
    assert path.read_bytes()[:20].find(b"{") == 8  # safetensors header, no pickle
    back, got = load_checkpoint(path)
    assert got["config"]["skips"] == 3 and got["config"]["name"] == "demo"
    assert got["preprocessing"]["window"] == [-100, 200] and got["weights_kind"] == "demo-phantom"
    assert read_metadata(path)["provenance"]["commit"] == "abc"
    p = [Prompts(points=[[100, 120]], point_labels=[1], point_classes=[2])]
    with torch.no_grad():
        assert torch.equal(model(_x(), p), back(_x(), p))
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


@pytest.mark.skipif(not REF_JSON.is_file(), reason="reference key list not available")
def test_reference_layout_round_trip(tmp_path):
    ref = json.loads(REF_JSON.read_text())
    torch.manual_seed(0)
    model = build_usam(get_config("vit_b")).eval()
    _randomize_buffers(model)
    sd = model.state_dict()
    ref_sd = {k: sd[k].clone() for k in ref}  # exactly the JSON's names, nothing else
    assert {k: list(v.shape) for k, v in ref_sd.items()} == ref
    assert infer_config(ref_sd) == get_config("vit_b")
    path = tmp_path / "usam_ref.pth"
    torch.save({"model": ref_sd, "optimizer": {}, "epoch": 7, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(path)
    back, meta = load_checkpoint(path, trust_pickle=True)
    report = meta["load_report"]
    assert sorted(report["loaded"]) == sorted(ref) and report["skipped"] == {}
    branch = [f"sam.prompt_encoder.mask_class_downscaling.{i}.{w}" for i in (0, 1, 3, 4, 6) for w in ("weight", "bias")]
    assert report["left_at_init"] == ["sam.prompt_encoder.class_embeddings.weight"] + branch + CLICK_KEYS == extension_keys(back)
    assert meta["weights_kind"] == "reference" and meta["provenance"]["epoch"] == 7
    with torch.no_grad():
        x = _x()
        assert torch.equal(model(x), back(x))


def _bilinear_rows(a: np.ndarray, n: int) -> np.ndarray:
    """Independent bilinear resize of axis 0 (half-pixel centres = align_corners False)."""
    m = a.shape[0]
    src = np.maximum((np.arange(n) + 0.5) * m / n - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    w = (src - i0).reshape((-1,) + (1,) * (a.ndim - 1))
    return a[i0] * (1 - w) + a[i1] * w


def test_official_sam_vit_b_loads_with_resizing(tmp_path):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()  # random init, no download
    with torch.no_grad():  # SAM zero-initialises these; make the resize test meaningful
        sam.image_encoder.pos_embed.normal_()
        for blk in sam.image_encoder.blocks:
            blk.attn.rel_pos_h.normal_()
            blk.attn.rel_pos_w.normal_()
    sam_sd = {k: v.clone() for k, v in sam.state_dict().items()}
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    del sam
    model = build_usam(get_config("vit_b"))
    report = load_sam_weights(model, path)
    sd = model.state_dict()
    glob = [2, 5, 8, 11]
    expected_resized = {"sam.image_encoder.pos_embed"} | {
        f"sam.image_encoder.blocks.{i}.attn.rel_pos_{a}" for i in glob for a in "hw"}
    assert set(report.resized) == expected_resized
    pe = sam_sd["image_encoder.pos_embed"][0].numpy()  # (64, 64, 768)
    want = _bilinear_rows(_bilinear_rows(pe, 14).transpose(1, 0, 2), 14).transpose(1, 0, 2)
    np.testing.assert_allclose(sd["sam.image_encoder.pos_embed"][0].numpy(), want, atol=1e-4)  # torch computes the scale in float32
    for i in glob:
        rp = sam_sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].numpy()
        assert rp.shape == (127, 64)
        np.testing.assert_allclose(sd[f"sam.image_encoder.blocks.{i}.attn.rel_pos_h"].numpy(),
                                   _bilinear_rows(rp, 27), atol=1e-4)
    # windowed blocks, the prompt encoder, the two-way transformer and iou_token load unchanged
    for k in ("image_encoder.blocks.0.attn.rel_pos_w", "image_encoder.blocks.3.attn.qkv.weight",
              "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
              "mask_decoder.transformer.layers.1.mlp.lin1.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(sd["sam." + k], sam_sd[k]), k
    assert all(k.startswith(("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps",
                             "mask_decoder.iou_prediction_head", "mask_decoder.output_upscaling"))
               for k in report.skipped)
    assert "mask_decoder.mask_tokens.weight" in report.skipped
    left = set(report.left_at_init)
    assert "sam.mask_decoder.mask_tokens.weight" in left and "backbone.inc.conv.weight" in left
    assert "sam.mask_decoder.up1.up.weight" in left and "sam.image_encoder.pos_embed" not in left
    assert not any(k.startswith("sam.image_encoder.") for k in left)
    assert len(report.loaded) + len(report.resized) + len(left) == len(sd)
    del model
    via_load, meta = load_checkpoint(path)  # a plain SAM state dict needs no trust flag
    assert meta["weights_kind"] == "sam-init" and via_load.config.name == "vit_b"
    assert torch.equal(via_load.state_dict()["sam.image_encoder.pos_embed"], sd["sam.image_encoder.pos_embed"])


def _evaluate_args(argv):
    """The evaluate CLI's parsed flags: the public path by which $USAM_CHECKPOINT reaches resolve_weights."""
    from usam.evaluate import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--data", "x", *argv])


def test_resolve_weights_order(tmp_path, monkeypatch):
    monkeypatch.delenv("USAM_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointError, match="demo checkpoint"):
        resolve_weights(search_dir=tmp_path)
    demo = tmp_path / "usam_demo.safetensors"
    demo.write_bytes(b"x")
    assert resolve_weights(search_dir=tmp_path) == demo
    other = tmp_path / "trained.safetensors"
    other.write_bytes(b"x")
    assert resolve_weights(search_dir=tmp_path) == other
    env = tmp_path / "env.safetensors"
    env.write_bytes(b"x")
    monkeypatch.setenv("USAM_CHECKPOINT", str(env))
    a = _evaluate_args([])   # the CLI reads the environment at its edge and passes it in
    assert (a.checkpoint, a.checkpoint_env) == (None, str(env))
    assert resolve_weights(a.checkpoint, a.checkpoint_env, search_dir=tmp_path) == env
    a = _evaluate_args(["--checkpoint", str(demo)])   # the flag beats the environment
    assert resolve_weights(a.checkpoint, a.checkpoint_env, search_dir=tmp_path) == demo
    with pytest.raises(CheckpointError, match=r"^--checkpoint points to .*nope.safetensors, which does not exist"):
        resolve_weights(tmp_path / "nope.safetensors", str(env))
    with pytest.raises(CheckpointError, match=r"^\$USAM_CHECKPOINT points to .*gone.safetensors, which does not exist"):
        resolve_weights(None, tmp_path / "gone.safetensors", search_dir=tmp_path)
    assert demo_checkpoint_path().name == "usam_demo.safetensors"
    assert demo_checkpoint_path().parent.name == "checkpoints"


def test_resolve_weights_reads_no_environment(tmp_path, monkeypatch):
    """The library takes explicit arguments only: a $USAM_CHECKPOINT naming a missing file is not its business."""
    monkeypatch.setenv("USAM_CHECKPOINT", str(tmp_path / "missing.safetensors"))
    demo = tmp_path / "usam_demo.safetensors"
    demo.write_bytes(b"x")
    assert resolve_weights(search_dir=tmp_path) == demo
    try:   # the shipped folder (demo weights present or not): never an error about the variable
        resolve_weights()
    except CheckpointError as exc:
        assert "USAM_CHECKPOINT points" not in str(exc)
    assert _evaluate_args([]).checkpoint_env == str(tmp_path / "missing.safetensors")


def test_bad_files_give_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="not a readable"):
            load_checkpoint(junk, trust_pickle=trust)
    from safetensors.torch import save_file
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="without U-SAM metadata"):
        load_checkpoint(plain)
