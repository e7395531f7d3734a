"""Inference speed-ups applied to a built U-SAM: same weights, same logits up to fp32 rounding.

`optimize_for_inference(model, device)` rebinds the `forward` of submodules in place. No module
is replaced and no parameter or buffer is added, so the state dict (keys and values) is
unchanged and `restore_reference(model)` undoes everything. Each speed-up is a FastOptions switch
with an equivalence test in tests/usam/test_fast.py; `python -m usam bench --ablate` times each
one switched off (docs/BENCHMARKS.md):

- ViT blocks: segment-anything's explicit attention -> F.scaled_dot_product_attention with the
  decomposed relative-position bias passed as attn_mask; the rel-pos tables are gathered once
  and cached; a window partition that is the identity (window 14 on a 14x14 grid) is skipped.
- Two-way transformer attention -> F.scaled_dot_product_attention.
- ConvBN (conv -> BatchNorm -> ReLU): BatchNorm folded into the conv weights (eval statistics).
- Up blocks: conv(cat[up(x), skip]) is split into conv_up(up(x)) + conv_skip(skip); the skip
  part does not depend on the prompts, so encode() computes it once and the cached features
  hold it instead of the raw skip (also a smaller cache).
- Up blocks, sub-pixel: the transposed conv (k2, s2) followed by the 3x3 conv of its output is
  one 2x2 conv with 4x the output channels on the low-resolution grid (each output phase reads
  only 2x2 input pixels): 16/36 of the multiplies and no transposed conv.
- Up blocks: the biases of the transposed conv and of the first conv (a border-aware map) are
  part of the prompt-free part; interleaving the phases, adding that part and the ReLU are one
  pass over the 2x map (aten::_add_relu on CPU).
- One image: the mask-token product (masks = H x, H from the hypernetworks) folded into up1's
  sub-pixel weights (conv(H x, K) = conv(x, K H)): no 32-channel 112^2 mask maps.
- The prompt encoder's dense positional encoding cached (it depends on no input).
- The final 1x1 conv (32 -> 3 channels) as a GEMM over pixels; the 32 hypernetwork MLPs as
  three batched matmuls; the 112^2 mask maps kept NHWC.
- channels_last (NHWC) for the CNN parts: oneDNN's convolutions run without layout reorders.
- LoRA (if any) merged into the qkv weight: one matmul instead of five.
- bf16 autocast on GPU only; optional torch.compile of the ViT on GPU.
- encode/decode/forward run under torch.inference_mode.

Features returned by an optimised model's encode() are valid only for that model's decode()
with the same options (a raw-skip / split-skip mix-up is refused). Derived weights are
recomputed by themselves when a source tensor changes (load_state_dict, .to(device)), so the
model may be optimised first and loaded later.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import asdict, dataclass, fields, replace
from types import MethodType
from typing import Any, Callable

import torch
from segment_anything.modeling.image_encoder import Attention as VitAttention
from segment_anything.modeling.image_encoder import Block as VitBlock
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.modeling.transformer import Attention as TwoWayAttention
from torch import nn
from torch.nn import functional as F

from usam.errors import UsamError
from usam.model.conv_bn import ConvBN
from usam.model.features import ImageFeatures
from usam.model.lora import LoraQkv
from usam.model.up_block import UpBlock
from usam.model.usam import Usam

# which up block consumes which skip (f0..f3), as wired in UsamMaskDecoder.forward
SKIP_CONSUMERS = ("up1", "up2", "up3", "up4")
_STATE = "_usam_fast"  # instance attribute holding the applied options
_PATCHED = ("forward", "encode", "decode", "get_dense_pe")  # instance attributes we may set on modules
_LOCK = threading.RLock()  # app sessions share one model: (re)binding happens once at a time


@dataclass(frozen=True)
class FastOptions:
    """Which speed-ups to apply; `for_device` gives the measured defaults."""

    sdpa_vit: bool = True
    sdpa_decoder: bool = True
    fold_bn: bool = True
    split_skips: bool = True
    channels_last: bool = True
    merge_lora: bool = True
    subpixel_up: bool = True  # up block: convT + first 3x3 conv (up part) as one 2x2 conv on the low-res grid
    gemm_head: bool = True  # the final 1x1 conv (32 -> 3 channels) as a GEMM over pixels
    batched_hyper: bool = True  # the hypernetwork MLPs (one per mask token) as batched matmuls
    fold_hyper: bool = True  # one image: the mask-token product folded into up1's sub-pixel weights
    cache_dense_pe: bool = True  # the prompt encoder's dense positional encoding computed once
    inference_mode: bool = True
    autocast_dtype: str | None = None  # 'bfloat16' / 'float16'; only honoured on CUDA
    compile_vit: bool = False  # torch.compile the ViT trunk; only honoured on CUDA

    @staticmethod
    def for_device(device: torch.device | str) -> "FastOptions":
        """Defaults per device type: fp32 on CPU; bf16 autocast on CUDA."""
        if torch.device(device).type == "cuda":
            return FastOptions(autocast_dtype="bfloat16")
        return FastOptions()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for benchmark reports)."""
        return asdict(self)


# the speed-ups that keep the numbers, each on by default (what `usam bench --ablate` switches off
# one at a time); not inference_mode, nor the GPU-only autocast and compile settings
SPEEDUP_SWITCHES = tuple(f.name for f in fields(FastOptions)
                         if f.name not in ("inference_mode", "autocast_dtype", "compile_vit"))


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> CUDA when present, else CPU; an explicit unavailable CUDA is a user error."""
    if requested is None or str(requested) == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsamError(f"device {str(requested)!r} requested but CUDA is not available here")
        if device.index is None:  # 'cuda' -> 'cuda:<current>', as a parameter's .device reads
            device = torch.device("cuda", torch.cuda.current_device())
    return device


# ---------------------------------------------------------------------------------------------
# cached derived tensors: recomputed when a source tensor is replaced or modified in place


def _stamp(tensors: tuple[torch.Tensor | None, ...], extra: tuple = ()) -> tuple:
    """Identity of the source tensors: storage, in-place version, device, dtype."""
    # inference tensors (a model built under inference_mode) keep no version counter
    return extra + tuple(None if t is None else (t.data_ptr(), None if t.is_inference() else t._version,
                                                 t.device, t.dtype) for t in tensors)


def _cached(module: nn.Module, key: str, sources: tuple[torch.Tensor | None, ...], make: Callable[[], Any],
            extra: tuple = ()) -> Any:
    """module-local memo of make(), valid while the sources are unchanged."""
    cache = module.__dict__.setdefault("_usam_fast_cache", {})
    stamp = _stamp(sources, extra)
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        with torch.no_grad():
            hit = (stamp, make())
        cache[key] = hit
    return hit[1]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by BatchNorm in eval mode, as one conv."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * scale + bn.bias


def _folded(module: nn.Module, conv: nn.Conv2d, bn: nn.BatchNorm2d,
            channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached fold_conv_bn of a module's conv and BatchNorm."""
    def make():
        w, b = fold_conv_bn(conv, bn)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return w.contiguous(memory_format=fmt), b
    sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return _cached(module, "fold", sources, make, (channels_last,))


# ---------------------------------------------------------------------------------------------
# forwards bound onto module instances


def _convbn_forward(self: ConvBN, x: torch.Tensor) -> torch.Tensor:
    """ConvBN with BatchNorm folded into the conv (training mode keeps the original path)."""
    if self.training:
        return ConvBN.forward(self, x)
    w, b = _folded(self, self.conv, self.norm, self._usam_cl)
    return F.relu_(F.conv2d(x, w, b, self.conv.stride, self.conv.padding))


def _head_forward(self: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The final head (conv3x3, BN, ReLU, conv1x1): BatchNorm folded, the 1x1 conv as a GEMM (as options say)."""
    if self.training:
        return nn.Sequential.forward(self, x)
    opts: FastOptions = self._usam_opts
    conv, bn, _, last = self
    if opts.fold_bn:
        w, b = _folded(self, conv, bn, self._usam_cl)
        x = F.relu_(F.conv2d(x, w, b, conv.stride, conv.padding))
    else:
        x = F.relu(bn(conv(x)))
    return conv1x1_gemm(last, x) if opts.gemm_head else last(x)


def _split_weights(block: UpBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_up, w_skip, bias) of an up block's first ConvBN, BatchNorm folded, split by input channel."""
    first = block.nConvs[0]
    cl = block._usam_cl

    def make():
        w, b = fold_conv_bn(first.conv, first.norm)
        fmt = torch.channels_last if cl else torch.contiguous_format
        n_up = block.up.out_channels
        return (w[:, :n_up].contiguous(memory_format=fmt), w[:, n_up:].contiguous(memory_format=fmt), b)
    sources = (first.conv.weight, first.conv.bias, first.norm.weight, first.norm.bias,
               first.norm.running_mean, first.norm.running_var)
    return _cached(block, "split", sources, make, (cl,))


def up_bias_map(block: UpBlock, h2: int, w2: int) -> torch.Tensor:
    """The up block's first conv on a constant input: folded bias + conv3x3_up(convT bias); (1, Cout, h2, w2).

    Prompt-independent; it differs from a constant only at the borders (zero padding).
    """
    up, first = block.up, block.nConvs[0]
    fmt = torch.channels_last if block._usam_cl else torch.contiguous_format

    def make():
        w_up, _, b = _split_weights(block)
        out = b.reshape(1, -1, 1, 1).expand(1, -1, h2, w2)
        if up.bias is not None:
            ones = up.bias.reshape(1, -1, 1, 1).expand(1, -1, h2, w2).to(w_up.dtype)
            out = out + F.conv2d(ones.contiguous(memory_format=fmt), w_up, None, padding=1)
        return out.contiguous(memory_format=fmt)
    sources = (up.bias, first.conv.weight, first.conv.bias, first.norm.weight, first.norm.bias,
               first.norm.running_mean, first.norm.running_var)
    return _cached(block, f"bmap{h2}x{w2}", sources, make, (block._usam_cl,))


def skip_part(block: UpBlock, skip: torch.Tensor) -> torch.Tensor:
    """The prompt-independent part of an up block's first conv: conv_skip(skip) + up_bias_map."""
    _, w_skip, _ = _split_weights(block)
    conv = block.nConvs[0].conv
    out = F.conv2d(skip, w_skip, None, conv.stride, conv.padding)
    return out.add_(up_bias_map(block, out.shape[-2], out.shape[-1]))


def _subpixel_weights(block: UpBlock) -> torch.Tensor:
    """The up block's transposed conv (k2, s2) composed with the up-channel part of its first 3x3 conv.

    On the 2x-upsampled grid, output pixel (2i+a, 2j+c) of conv3x3(convT(x)) reads convT pixels
    2i+a-1..2i+a+1, i.e. input rows i-1+a..i+a only (two, not three) and likewise columns: every
    output phase (a, c) is a 2x2 convolution of x. All four phases together are one 2x2 convolution
    with 4*Cout output channels on x padded by one pixel, at 16/36 of the 3x3 conv's multiplies and
    without the transposed conv. Weights composed in float64. Layout: [(a, c, out), in, t, s].
    """
    first, up = block.nConvs[0], block.up
    cl = block._usam_cl

    def make():
        w_up = _split_weights(block)[0].double()  # (Cout, M, 3, 3), BatchNorm folded
        wt = up.weight.double()  # (Cin, M, 2, 2)
        cout, cin = w_up.shape[0], wt.shape[0]
        k = torch.zeros(2, 2, cout, cin, 2, 2, dtype=torch.float64, device=wt.device)
        for a in (0, 1):
            for ky in range(3):
                dy, ap = divmod(a + ky - 1, 2)  # input row offset and the convT kernel row
                for c in (0, 1):
                    for kx in range(3):
                        dx, cp = divmod(c + kx - 1, 2)
                        k[a, c, :, :, dy + 1 - a, dx + 1 - c] += w_up[:, :, ky, kx] @ wt[:, :, ap, cp].t()
        fmt = torch.channels_last if cl else torch.contiguous_format
        return k.reshape(4 * cout, cin, 2, 2).to(up.weight.dtype).contiguous(memory_format=fmt)
    sources = (up.weight, first.conv.weight, first.conv.bias, first.norm.weight, first.norm.bias,
               first.norm.running_mean, first.norm.running_var)
    return _cached(block, "subpixel", sources, make, (cl,))


def _subpixel_phases(block: UpBlock, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The 2x2 conv's output as (B, h+1, w+1, 2, 2, Cout): phase (a, c) of pixel (2i+a, 2j+c) is at [i+a, j+c, a, c].

    `weights` replaces the block's composed weights (the decoder folds the hypernetworks into them).
    """
    b, _, h, w = x.shape
    k = _subpixel_weights(block) if weights is None else weights
    cout = k.shape[0] // 4
    out = F.conv2d(x, k, None, padding=1).permute(0, 2, 3, 1)  # (B, h+1, w+1, 4*Cout)
    return out.reshape(b, h + 1, w + 1, 2, 2, cout)


# above this many low-resolution pixels, four per-phase ops run faster than one 6-d strided op
_PHASE_SPLIT_PIXELS = 64 * 64


def _interleave_add_relu(o: torch.Tensor, part: torch.Tensor | None, fused: bool | None = None) -> torch.Tensor:
    """relu(phases interleaved + part): (B, h+1, w+1, 2, 2, C), (1 or B, C, 2h, 2w) -> NHWC-contiguous (B, C, 2h, 2w).

    One pass over the 2x map: the interleave, the prompt-free part and the ReLU together.
    Without `part`, the plain interleave (no ReLU). `fused` (default: on CPU) adds and clamps in
    one kernel, aten::_add_relu, which only CPU builds have; elsewhere add, then ReLU in place.
    """
    b, h1, w1, _, _, c = o.shape
    h, w = h1 - 1, w1 - 1
    y = o.new_empty(b, h, 2, w, 2, c)
    p = None if part is None else part.permute(0, 2, 3, 1).reshape(part.shape[0], h, 2, w, 2, c)
    fused = p is not None and (o.device.type == "cpu" if fused is None else fused)

    def put(src: torch.Tensor, dst: torch.Tensor, other: torch.Tensor | None) -> None:
        if other is None:
            dst.copy_(src)
        elif fused:
            torch.ops.aten._add_relu(src, other, out=dst)
        else:
            torch.add(src, other, out=dst)
    if h * w >= _PHASE_SPLIT_PIXELS:
        for a in (0, 1):
            for cc in (0, 1):
                put(o[:, a:a + h, cc:cc + w, a, cc, :], y[:, :, a, :, cc, :], None if p is None else p[:, :, a, :, cc, :])
    else:  # phase (a, c) of output row i reads o[i + a, j + c, a, c]: one strided view of o
        s = o.stride()
        src = o.as_strided((b, h, 2, w, 2, c), (s[0], s[1], s[1] + s[3], s[2], s[2] + s[4], s[5]), o.storage_offset())
        put(src, y, p)
    if p is not None and not fused:
        F.relu_(y)
    return y.view(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def subpixel_up(block: UpBlock, x: torch.Tensor) -> torch.Tensor:
    """conv3x3_up(convT(x)) without biases, via the 2x2 conv on the low-res grid (channels_last out)."""
    return _interleave_add_relu(_subpixel_phases(block, x), None)


def _prompt_free_part(block: UpBlock, skip: torch.Tensor | None, h2: int, w2: int) -> torch.Tensor:
    """What the first conv adds to conv_up(convT(x)) without biases: the cached skip part, or computed here."""
    opts: FastOptions = block._usam_opts
    if not block.skip_channels:
        return up_bias_map(block, h2, w2)
    if not opts.split_skips:
        return skip_part(block, skip)
    out_channels = block.nConvs[0].conv.out_channels
    if skip.shape[1] != out_channels:
        raise UsamError(f"features with a {skip.shape[1]}-channel skip for an up block expecting "
                        f"{out_channels}: decode features encoded by this same optimised model")
    return skip


def upblock_from_phases(block: UpBlock, o: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """The rest of an up block after its sub-pixel conv: relu(interleave(o) + prompt-free part), second ConvBN."""
    part = _prompt_free_part(block, skip, 2 * (o.shape[1] - 1), 2 * (o.shape[2] - 1))
    return block.nConvs[1](_interleave_add_relu(o, part))


def _upblock_forward(self: UpBlock, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """relu(conv_up(up(x)) + prompt-free part) then the second ConvBN.

    With split_skips, `skip` is already the prompt-free part (skip_part, computed by encode); else
    it is computed here. The biases of convT and of the first conv are in that part. With
    subpixel_up, conv_up(up(x)) is one 2x2 conv on the low-res grid.
    """
    opts: FastOptions = self._usam_opts
    if self.training:
        return UpBlock.forward(self, x, skip)
    if opts.subpixel_up:
        return upblock_from_phases(self, _subpixel_phases(self, x), skip)
    first = self.nConvs[0]
    w_up = _split_weights(self)[0]
    y = F.conv2d(F.conv_transpose2d(x, self.up.weight, None, stride=2), w_up, None, first.conv.stride,
                 first.conv.padding)
    part = _prompt_free_part(self, skip, y.shape[-2], y.shape[-1])
    return self.nConvs[1](F.relu_(y.add_(part)))


def conv1x1_gemm(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a matrix product over pixels (channels_last output)."""
    w = conv.weight.reshape(conv.out_channels, conv.in_channels)
    y = F.linear(x.permute(0, 2, 3, 1), w, conv.bias)
    return y.permute(0, 3, 1, 2)


def _hyper_weights(mlps: nn.ModuleList) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: weights (T, in, out) and biases (T, 1, out) of T identical-shape MLPs, stacked."""
    layers = list(zip(*[m.layers for m in mlps]))
    sources = tuple(t for layer in layers for lin in layer for t in (lin.weight, lin.bias))

    def make():
        return [(torch.stack([lin.weight.t() for lin in layer]).contiguous(),
                 torch.stack([lin.bias for lin in layer]).unsqueeze(1)) for layer in layers]
    return _cached(mlps, "stack", sources, make)


def hypernetworks(mlps: nn.ModuleList, tokens: torch.Tensor) -> torch.Tensor:
    """stack([mlp_i(tokens[:, i]) for i], dim=1) with one batched matmul per layer: (B, T, C) -> (B, T, out)."""
    x = tokens.transpose(0, 1)  # (T, B, C)
    stacked = _hyper_weights(mlps)
    for i, (w, b) in enumerate(stacked):
        x = torch.baddbmm(b, x, w)
        if i < len(stacked) - 1:
            x = F.relu(x)
    return x.transpose(0, 1)


def _mask_decoder_forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                          dense: torch.Tensor, skips: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """UsamMaskDecoder.forward with batched hypernetworks (as options say) and NHWC mask maps."""
    opts: FastOptions = self._usam_opts
    if self.training or self.run_dead_heads:
        return type(self).forward(self, image_embeddings, image_pe, sparse, dense, skips)
    b = image_embeddings.shape[0]
    hs, x = self.tokens_and_upscaled(image_embeddings, image_pe, sparse, dense, skips)
    mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens, :]
    f0 = skips[0]
    mlps = self.output_hypernetworks_mlps
    if opts.batched_hyper:
        hyper_in = hypernetworks(mlps, mask_tokens_out)
    else:
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(mlps)], dim=1)
    up1 = self.up1
    if opts.fold_hyper and opts.subpixel_up and b == 1:  # (subpixel_up: up1 runs _upblock_forward)
        # masks = H x (H: tokens x channels) feeds only up1's sub-pixel conv K: conv(H x, K) = conv(x, K H)
        k = _subpixel_weights(up1)
        kh = torch.einsum("omts,mc->octs", k, hyper_in[0])
        if up1._usam_cl:
            kh = kh.contiguous(memory_format=torch.channels_last)
        return self.final_output(upblock_from_phases(up1, _subpixel_phases(up1, x, kh), f0))
    _, ce, he, we = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):  # NHWC in, NHWC out: no copies of 112^2 maps
        masks = x.permute(0, 2, 3, 1).reshape(b, he * we, ce) @ hyper_in.transpose(1, 2)
        masks = masks.view(b, he, we, self.num_mask_tokens).permute(0, 3, 1, 2)
    else:
        masks = (hyper_in @ x.reshape(b, ce, he * we)).reshape(b, self.num_mask_tokens, he, we)
    return self.final_output(up1(masks, f0))


def _dense_pe(self: nn.Module) -> torch.Tensor:
    """PromptEncoder.get_dense_pe, cached: it depends only on the random Fourier matrix."""
    if self.training:
        return type(self).get_dense_pe(self)
    gauss = self.pe_layer.positional_encoding_gaussian_matrix
    return _cached(self, "dense_pe", (gauss,), lambda: type(self).get_dense_pe(self))


def _lora_qkv_forward(self: LoraQkv, x: torch.Tensor) -> torch.Tensor:
    """LoraQkv with the rank-r updates merged into the fused weight (cached)."""
    if self.training:
        return LoraQkv.forward(self, x)

    def make():
        w = self.weight.clone()
        w[:self.dim] += self.lora_b_q.weight @ self.lora_a_q.weight
        w[2 * self.dim:] += self.lora_b_v.weight @ self.lora_a_v.weight
        return w
    sources = (self.weight, self.lora_a_q.weight, self.lora_b_q.weight, self.lora_a_v.weight, self.lora_b_v.weight)
    return F.linear(x, _cached(self, "lora", sources, make), self.bias)


def _vit_block_forward(self: VitBlock, x: torch.Tensor) -> torch.Tensor:
    """SAM's block without the window partition when it is the identity (one unpadded window)."""
    if self.window_size > 0 and (x.shape[1] != self.window_size or x.shape[2] != self.window_size):
        return VitBlock.forward(self, x)
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


def _rel_tables(self: VitAttention, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """get_rel_pos for the height and width axes, cached per grid size and weights."""
    return _cached(self, f"rel{h}x{w}", (self.rel_pos_h, self.rel_pos_w),
                   lambda: (get_rel_pos(h, h, self.rel_pos_h), get_rel_pos(w, w, self.rel_pos_w)))


def _vit_attention_forward(self: VitAttention, x: torch.Tensor) -> torch.Tensor:
    """SAM's ViT attention through scaled_dot_product_attention; rel-pos bias as attn_mask."""
    b, h, w, _ = x.shape
    n = h * w
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
    mask = None
    if self.use_rel_pos:
        rh, rw = _rel_tables(self, h, w)
        r_q = q.reshape(b * self.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
        mask = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, self.num_heads, n, n).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def _twoway_attention_forward(self: TwoWayAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's two-way transformer attention through scaled_dot_product_attention."""
    q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
    b, nq, c = q.shape
    heads = self.num_heads
    q = q.reshape(b, nq, heads, c // heads).transpose(1, 2)
    k = k.reshape(b, k.shape[1], heads, c // heads).transpose(1, 2)
    v = v.reshape(b, v.shape[1], heads, c // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.out_proj(out.transpose(1, 2).reshape(b, nq, c))


# ---------------------------------------------------------------------------------------------
# model-level wrappers


def _fast_encode(model: Usam, images: torch.Tensor) -> ImageFeatures:
    """Usam.encode with the skips replaced by their up blocks' prompt-independent conv parts."""
    opts: FastOptions = getattr(model, _STATE)
    if opts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    feats = Usam.encode(model, images)
    if not opts.split_skips or model.training:  # in training the up blocks run their own forward on raw skips
        return feats
    dec = model.sam.mask_decoder
    skips = tuple(None if s is None or not getattr(dec, name).skip_channels else skip_part(getattr(dec, name), s)
                  for s, name in zip(feats.skips, SKIP_CONSUMERS))
    return ImageFeatures(skips, feats.embedding)


def _wrap_context(fn: Callable, opts: FastOptions, device: torch.device) -> Callable:
    """fn under inference_mode and, on CUDA, autocast; floating outputs of decode back to fp32."""
    dtype = getattr(torch, opts.autocast_dtype) if opts.autocast_dtype and device.type == "cuda" else None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.inference_mode(opts.inference_mode):
            if dtype is None:
                return fn(*args, **kwargs)
            with torch.autocast("cuda", dtype=dtype):
                out = fn(*args, **kwargs)
            return out.float() if isinstance(out, torch.Tensor) else out
    return run


def _bind(module: nn.Module, name: str, fn: Callable) -> None:
    """Set module.<name> to fn bound to the module (an instance attribute, undone by restore)."""
    setattr(module, name, MethodType(fn, module))


def _set_conv_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """Lay out the weights of every (transposed) 2-d convolution in `fmt`; values are unchanged."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def restore_reference(model: Usam) -> Usam:
    """Undo optimize_for_inference: every module runs its class's own forward again."""
    with _LOCK:
        return _restore(model)


def _restore(model: Usam) -> Usam:
    opts = model.__dict__.get(_STATE)
    if opts is not None and opts.channels_last:
        _set_conv_format(model, torch.contiguous_format)
    for m in model.modules():
        for name in _PATCHED:
            m.__dict__.pop(name, None)
        m.__dict__.pop("_usam_fast_cache", None)
        m.__dict__.pop("_usam_cl", None)
        m.__dict__.pop("_usam_opts", None)
    model.__dict__.pop(_STATE, None)
    return model


def is_optimized(model: nn.Module) -> bool:
    """Whether optimize_for_inference has been applied (and not restored)."""
    return _STATE in model.__dict__


def optimize_for_inference(model: Usam, device: str | torch.device | None = None,
                           options: FastOptions | None = None, **overrides: Any) -> Usam:
    """Put the model in eval mode on `device` and apply the speed-ups in place; returns the model.

    Idempotent: a second call with other options first restores the reference forwards.
    `overrides` change single fields of the device defaults, e.g. split_skips=False.
    """
    device = pick_device(device) if device is not None else next(model.parameters()).device
    opts = replace(options or FastOptions.for_device(device), **overrides)
    with _LOCK:
        if getattr(model, _STATE, None) == opts and next(model.parameters()).device == device:
            return model
        return _optimize(model, device, opts)


def _optimize(model: Usam, device: torch.device, opts: FastOptions) -> Usam:
    _restore(model)
    model.eval().to(device)
    cl = opts.channels_last
    if cl:  # conv weights only: 4-d non-conv tensors such as pos_embed keep their layout
        _set_conv_format(model, torch.channels_last)
    dec = model.sam.mask_decoder
    for m in model.modules():
        m.__dict__["_usam_cl"] = cl
        if isinstance(m, ConvBN) and opts.fold_bn:
            _bind(m, "forward", _convbn_forward)
        elif isinstance(m, LoraQkv) and opts.merge_lora:
            _bind(m, "forward", _lora_qkv_forward)
        elif isinstance(m, UpBlock) and (opts.split_skips or opts.subpixel_up):
            m.__dict__["_usam_opts"] = opts
            _bind(m, "forward", _upblock_forward)
        elif isinstance(m, VitBlock) and opts.sdpa_vit:
            _bind(m, "forward", _vit_block_forward)
        elif isinstance(m, VitAttention) and opts.sdpa_vit:
            _bind(m, "forward", _vit_attention_forward)
        elif isinstance(m, TwoWayAttention) and opts.sdpa_decoder:
            _bind(m, "forward", _twoway_attention_forward)
    head = dec.final_output
    if (opts.fold_bn or opts.gemm_head) and isinstance(head[1], nn.BatchNorm2d):
        head.__dict__["_usam_opts"] = opts
        _bind(head, "forward", _head_forward)
    dec.__dict__["_usam_opts"] = opts
    _bind(dec, "forward", _mask_decoder_forward)
    if opts.cache_dense_pe:
        _bind(model.sam.prompt_encoder, "get_dense_pe", _dense_pe)
    model.__dict__[_STATE] = opts
    if opts.compile_vit and device.type == "cuda":
        enc = model.sam.image_encoder
        enc.forward = torch.compile(MethodType(type(enc).forward, enc), dynamic=False)
    _bind(model, "encode", _wrap_context(_fast_encode, opts, device))
    _bind(model, "decode", _wrap_context(Usam.decode, opts, device))
    _bind(model, "forward", _wrap_context(Usam.forward, opts, device))
    return model
