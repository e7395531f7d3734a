"""`python -m usam info`: total / tunable parameters and GFLOPs, counted as the paper did (thop)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
from thop.vision.basic_hooks import count_convNd, count_linear, count_normalization
from torch import nn

from usam.model import Usam, build_usam, get_config

# Paper Table 5: params (M), tunable (M), GFLOPs (thop MACs), 1x3x224x224, no prompt
PAPER_TABLE5 = {
    "SAM-B": (90.21, 90.21, 17.08),
    "SAM-B+LoRA": (90.36, 3.93, 17.11),
    "U-SAM-B": (103.36, 103.36, 25.07),
    "U-SAM-B+LoRA": (103.51, 17.68, 25.10),
    "U-SAM-L": (325.40, 325.40, 68.60),
    "U-SAM-L+LoRA": (325.79, 22.64, 68.65),
    "U-SAM-H+LoRA": (659.69, 28.81, 134.02),
}
# thop (pre-2.x, as the paper used) counted these module types only, by forward hooks on modules
# that ran; functional products (attention matmuls, einsum) and parameters of other modules
# (pos_embed, rel_pos, LayerNorm2d, embeddings) were not counted.
COUNTED_TYPES = {
    nn.Conv1d: count_convNd, nn.Conv2d: count_convNd, nn.Conv3d: count_convNd,
    nn.ConvTranspose1d: count_convNd, nn.ConvTranspose2d: count_convNd, nn.ConvTranspose3d: count_convNd,
    nn.modules.batchnorm._BatchNorm: count_normalization, nn.LayerNorm: count_normalization,
    nn.Linear: count_linear,
}


@dataclass
class Counts:
    """Parameter and cost counts of one model."""

    params_m: float        # thop-style: parameters of executed Conv/BN/LN/Linear modules
    tunable_m: float       # parameters with requires_grad (exact, what a trainer updates)
    gflops: float          # thop-style MACs, 1x3x224x224, no prompt
    state_dict_params: int  # every parameter of the module tree (exact)


def paper_style_counts(model: nn.Module, run) -> tuple[float, float]:
    """(GMACs, M params) of `run()` as thop 0.1.x counted: hooks on the COUNTED_TYPES that ran.

    Uses thop's counting rules. Old thop counted ConvTranspose with the Conv rule (output size x
    in-channels x kernel), which the paper's numbers reproduce; thop 2.x's own profile() also
    counts attention matmuls and all parameters, so its totals differ from Table 5.
    """
    ran: dict[nn.Module, float] = {}

    def hook(m, inputs, output):
        for t, fn in COUNTED_TYPES.items():
            if isinstance(m, t):
                m.__dict__["total_ops"] = 0
                fn(m, inputs, output)
                ran[m] = ran.get(m, 0) + float(m.__dict__.pop("total_ops"))
                return

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for m in ran for p in m.parameters(recurse=False))
    return sum(ran.values()) / 1e9, params / 1e6


def count_usam(config_name: str, lora_rank: int = 0, device: str = "meta") -> Counts:
    """Counts for a U-SAM configuration, built on the meta device (no memory, no arithmetic)."""
    with torch.device(device):
        model: Usam = build_usam(get_config(config_name, lora_rank=lora_rank))
        x = torch.zeros(1, 3, model.config.image_size, model.config.image_size)
    model.eval()
    model.sam.mask_decoder.run_dead_heads = True  # the reference computes its dead heads too
    gflops, params = paper_style_counts(model, lambda: model(x))
    return Counts(params, model.tunable_parameters() / 1e6, gflops, sum(p.numel() for p in model.parameters()))


def count_sam(vit: str = "vit_b", lora_rank: int = 0, device: str = "meta") -> Counts:
    """Counts for plain SAM at 224 (patch embedding, SAM's mask decoder), the paper's SAM-B rows."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    from usam.model.lora import LORA_KEY_MARK, apply_lora

    cfg = get_config(vit)
    with torch.device(device):
        enc = ImageEncoderViT(img_size=224, patch_size=16, embed_dim=cfg.vit_embed_dim, depth=cfg.vit_depth,
                              num_heads=cfg.vit_heads, mlp_ratio=4, out_chans=256, qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              window_size=14, global_attn_indexes=cfg.vit_global_attn_indexes)
        pe = PromptEncoder(embed_dim=256, image_embedding_size=(14, 14), input_image_size=(224, 224),
                           mask_in_chans=16)
        dec = MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
                          iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))
        x = torch.zeros(1, 3, 224, 224)
    model = nn.ModuleDict({"image_encoder": enc, "prompt_encoder": pe, "mask_decoder": dec}).eval()
    if lora_rank:
        apply_lora(enc, lora_rank)
        for n, p in enc.named_parameters():
            p.requires_grad_(LORA_KEY_MARK in "." + n)

    def run():
        emb = enc(x)
        sparse, dense = pe(None, None, None)
        dec(emb, pe.get_dense_pe(), sparse.to(emb.device), dense, multimask_output=True)

    gflops, params = paper_style_counts(model, run)
    tunable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    return Counts(params, tunable, gflops, sum(p.numel() for p in model.parameters()))


ROWS = {  # Table-5 row -> how to build it
    "SAM-B": lambda: count_sam("vit_b"),
    "SAM-B+LoRA": lambda: count_sam("vit_b", 4),
    "U-SAM-B": lambda: count_usam("vit_b"),
    "U-SAM-B+LoRA": lambda: count_usam("vit_b", 4),
    "U-SAM-L": lambda: count_usam("vit_l"),
    "U-SAM-L+LoRA": lambda: count_usam("vit_l", 4),
    "U-SAM-H+LoRA": lambda: count_usam("vit_h", 4),
}


def _dev(ours: float, paper: float) -> float:
    return 100.0 * (ours - paper) / paper


def table5() -> list[dict]:
    """Every Table-5 row: ours beside the paper's, with deviations in %."""
    rows = []
    for name, fn in ROWS.items():
        c = fn()
        p = PAPER_TABLE5[name]
        rows.append({"model": name, "params_m": round(c.params_m, 3), "paper_params_m": p[0],
                     "params_dev_pct": round(_dev(c.params_m, p[0]), 3),
                     "tunable_m": round(c.tunable_m, 3), "paper_tunable_m": p[1],
                     "tunable_dev_pct": round(_dev(c.tunable_m, p[1]), 3),
                     "gflops": round(c.gflops, 3), "paper_gflops": p[2],
                     "gflops_dev_pct": round(_dev(c.gflops, p[2]), 3),
                     "state_dict_params": c.state_dict_params})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m usam info`."""
    parser.add_argument("--config", default="vit_b", help="vit_b | vit_l | vit_h | demo (default vit_b)")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on q and v (0 = no LoRA)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--no-table", action="store_true", help="skip the paper's Table-5 comparison")


def run(args: argparse.Namespace) -> int:
    """Print the counts of one configuration and the Table-5 comparison."""
    c = count_usam(args.config, args.lora_rank)
    ours = {"config": args.config, "lora_rank": args.lora_rank, "params_m": round(c.params_m, 3),
            "tunable_m": round(c.tunable_m, 3), "gflops": round(c.gflops, 3),
            "state_dict_params": c.state_dict_params,
            "fp32_mb": round(c.state_dict_params * 4 / 2**20, 2),
            "counting": "thop rules on executed Conv/ConvTranspose/BatchNorm/LayerNorm/Linear modules, "
                        "1x3x224x224, no prompt (as the paper); tunable = exact requires_grad count"}
    rows = [] if args.no_table else table5()
    if args.json:
        print(json.dumps({"model": ours, "table5": rows}, indent=2))
        return 0
    print(f"U-SAM {args.config}" + (f" + LoRA r={args.lora_rank}" if args.lora_rank else ""))
    print(f"  params (thop-style) {c.params_m:9.2f} M")
    print(f"  tunable             {c.tunable_m:9.2f} M")
    print(f"  GFLOPs (MACs)       {c.gflops:9.2f} G")
    print(f"  state_dict params   {c.state_dict_params:,} ({ours['fp32_mb']} MB fp32)")
    if rows:
        print("\nPaper Table 5 vs ours (deviation %):")
        print(f"  {'model':<14}{'params M':>22}{'tunable M':>24}{'GFLOPs':>22}")
        for r in rows:
            print(f"  {r['model']:<14}"
                  f"{r['params_m']:>8.2f} /{r['paper_params_m']:>7.2f} ({r['params_dev_pct']:+5.2f})"
                  f"{r['tunable_m']:>9.2f} /{r['paper_tunable_m']:>7.2f} ({r['tunable_dev_pct']:+5.2f})"
                  f"{r['gflops']:>8.2f} /{r['paper_gflops']:>7.2f} ({r['gflops_dev_pct']:+5.2f})")
        print("  tunable: exact count; the paper's tunable column for full fine-tuning repeats its thop "
              "params (which omit pos_embed, rel_pos, LayerNorm2d, embeddings, patch_embed).")
    return 0
