"""The inference model: a trained U-SAM with the speed-ups that pay, built once.

`FastUsam(model)` (or `optimize_for_inference(model, device)` where a model is loaded) wraps a
trained Usam in eval mode. It shares the model's modules (nothing of the model is replaced or
rebound; its state dict is untouched) and holds, as non-persistent buffers, weights derived from
the model once at construction. Same logits up to fp32 rounding (tests/usam/test_fast.py).
Rebuild it after changing the model's weights: the derived buffers are a snapshot.

What it changes, each measured to pay on the 2-core CPU (docs/BENCHMARKS.md):

- split skips: an up block's first conv over cat[up(x), skip] is conv_up(up(x)) + conv_skip(skip);
  the skip part (with both biases, a border-aware map) does not depend on the prompts, so
  `encode` computes it once per slice and the features carry it (`ImageFeatures.skip_parts`).
- sub-pixel up blocks: the transposed conv (k2, s2) followed by the 3x3 conv of its output is
  one 2x2 conv with 4x the output channels on the low-resolution grid (16/36 of the multiplies,
  no transposed conv); interleaving its four phases, adding the prompt-free part and the ReLU
  are one pass over the 2x map.
- batched hypernetworks: the mask tokens' MLPs as one batched matrix product per layer.
- the adapter as a copy with BatchNorm folded into its convs, run NHWC (without it the demo's
  whole volume measured 16 % slower than before).

BatchNorm is folded into the derived convolutions and their weights are channels_last (NHWC),
as oneDNN runs them without reorders; that is how the derived weights are written, not a switch.
The ViT (whose attention is SDPA in the model itself, usam.model.image_encoder), the prompt
encoder and the two-way transformer are the model's own modules; the encoder's wiring is
Usam.encode and the decoder's data flow UsamMaskDecoder.run, for both models: a change of the
decoder's inputs is made there once. Switches measured and dropped (SDPA in the two-way
transformer, LoRA merge, a GEMM head, the mask product folded into up1, a cached dense PE, bf16
autocast inside the model): see docs/BENCHMARKS.md; CUDA autocast is the caller's (usam.predictor).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from usam.errors import UsamError
from usam.model.adapter import DownsamplingAdapter
from usam.model.conv_bn import ConvBN
from usam.model.features import ImageFeatures
from usam.model.up_block import UpBlock
from usam.model.usam import Usam
from usam.prompts import Prompts

_NHWC = torch.channels_last
# above this many low-resolution pixels, four per-phase ops run faster than one 6-d strided op
_PHASE_SPLIT_PIXELS = 64 * 64


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
# derived weights: pure functions of a module's tensors


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by BatchNorm in eval mode, as one conv."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * scale + bn.bias


def subpixel_weights(up: nn.ConvTranspose2d, w_up: torch.Tensor) -> torch.Tensor:
    """The transposed conv (k2, s2) composed with a 3x3 conv `w_up` (Cout, M, 3, 3) of its output.

    On the 2x-upsampled grid, output pixel (2i+a, 2j+c) of conv3x3(convT(x)) reads convT pixels
    2i+a-1..2i+a+1, i.e. input rows i-1+a..i+a only (two, not three) and likewise columns: every
    output phase (a, c) is a 2x2 convolution of x. All four phases together are one 2x2 convolution
    with 4*Cout output channels on x padded by one pixel. Composed in float64; biases excluded.
    Layout: [(a, c, out), in, t, s].
    """
    w = w_up.double()
    wt = up.weight.double()  # (Cin, M, 2, 2)
    cout, cin = w.shape[0], wt.shape[0]
    k = torch.zeros(2, 2, cout, cin, 2, 2, dtype=torch.float64, device=wt.device)
    for a in (0, 1):
        for ky in range(3):
            dy, ap = divmod(a + ky - 1, 2)  # input row offset and the convT kernel row
            for c in (0, 1):
                for kx in range(3):
                    dx, cp = divmod(c + kx - 1, 2)
                    k[a, c, :, :, dy + 1 - a, dx + 1 - c] += w[:, :, ky, kx] @ wt[:, :, ap, cp].t()
    return k.reshape(4 * cout, cin, 2, 2).to(up.weight.dtype)


def interleave_add_relu(o: torch.Tensor, part: torch.Tensor | None, fused: bool | None = None) -> torch.Tensor:
    """relu(phases interleaved + part): (B, h+1, w+1, 2, 2, C), (1 or B, C, 2h, 2w) -> NHWC-contiguous (B, C, 2h, 2w).

    Phase (a, c) of output pixel (2i+a, 2j+c) is o[:, i+a, j+c, a, c]. One pass over the 2x map:
    the interleave, the prompt-free part and the ReLU together. Without `part`, the plain
    interleave (no ReLU). `fused` (default: on CPU) adds and clamps in one kernel,
    aten::_add_relu, which only CPU builds have; elsewhere add, then ReLU in place.
    """
    b, h1, w1, _, _, c = o.shape
    h, w = h1 - 1, w1 - 1
    y = o.new_empty(b, h, 2, w, 2, c)
    p = None if part is None else part.to(o.dtype).permute(0, 2, 3, 1).reshape(part.shape[0], h, 2, w, 2, c)
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


# ---------------------------------------------------------------------------------------------
# the derived decoder parts


class FoldedConvBN(nn.Module):
    """A ConvBN (conv 3x3 -> BatchNorm -> ReLU) as one conv with the BatchNorm folded in, weights NHWC."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.padding = conv.padding
        with torch.no_grad():
            w, b = fold_conv_bn(conv, bn)
            self.register_buffer("weight", w.contiguous(memory_format=_NHWC), persistent=False)
            self.register_buffer("bias", b, persistent=False)

    @classmethod
    def of(cls, module: ConvBN) -> "FoldedConvBN":
        """The folded form of a ConvBN."""
        return cls(module.conv, module.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(F.conv2d(x, self.weight, self.bias, padding=self.padding))


def folded_adapter(adapter: DownsamplingAdapter) -> DownsamplingAdapter:
    """The adapter with every ConvBN replaced by its FoldedConvBN: same wiring (the adapter's own forward).

    A structural copy: the model's adapter is not changed; its folded weights are new buffers.
    """
    out = copy.deepcopy(adapter)
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, ConvBN):
                setattr(module, child_name, FoldedConvBN.of(child))
    return out.requires_grad_(False)


class FastUpBlock(nn.Module):
    """An UpBlock from its derived weights: relu(subpixel(x) + prompt-free part), then the second ConvBN (folded).

    Built for one output size (the bias map's); `skip_part(skip)` is the prompt-free part of the
    first conv, computed once per slice; forward(x, part) takes it (None: a block without skip).
    """

    def __init__(self, block: UpBlock, out_hw: tuple[int, int]) -> None:
        super().__init__()
        first, second = block.nConvs
        with torch.no_grad():
            w1, b1 = fold_conv_bn(first.conv, first.norm)
            n_up = block.up.out_channels
            w_up = w1[:, :n_up]
            self.register_buffer("w_sub", subpixel_weights(block.up, w_up).contiguous(memory_format=_NHWC),
                                 persistent=False)
            w_skip = w1[:, n_up:].contiguous(memory_format=_NHWC) if block.skip_channels else None
            self.register_buffer("w_skip", w_skip, persistent=False)
            # the first conv on a constant input (the convT bias) plus its own bias: constant but at the borders
            h2, w2 = out_hw
            bias_map = b1.reshape(1, -1, 1, 1).expand(1, -1, h2, w2)
            if block.up.bias is not None:
                ones = block.up.bias.reshape(1, -1, 1, 1).expand(1, -1, h2, w2).contiguous(memory_format=_NHWC)
                bias_map = bias_map + F.conv2d(ones, w_up.contiguous(memory_format=_NHWC), None, padding=1)
            self.register_buffer("bias_map", bias_map.contiguous(memory_format=_NHWC), persistent=False)
        self.second = FoldedConvBN.of(second)

    def skip_part(self, skip: torch.Tensor | None) -> torch.Tensor | None:
        """conv_skip(skip) + the bias map: what the first conv adds to the prompt-dependent half (None without skip)."""
        if self.w_skip is None or skip is None:
            return None
        return F.conv2d(skip, self.w_skip, None, padding=1).add_(self.bias_map)

    def forward(self, x: torch.Tensor, part: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        if part is None:
            part = self.bias_map
        if tuple(part.shape[-2:]) != (2 * h, 2 * w):
            raise UsamError(f"an up block built for {tuple(self.bias_map.shape[-2:])} got a {h}x{w} input")
        k = self.w_sub
        o = F.conv2d(x, k, None, padding=1).permute(0, 2, 3, 1)  # (B, h+1, w+1, 4*Cout)
        return self.second(interleave_add_relu(o.reshape(b, h + 1, w + 1, 2, 2, k.shape[0] // 4), part))


class BatchedHypernetworks(nn.Module):
    """T identical-shape MLPs (one per mask token) as one batched matrix product per layer."""

    def __init__(self, mlps: nn.ModuleList) -> None:
        super().__init__()
        layers = list(zip(*[m.layers for m in mlps]))
        self.depth = len(layers)
        with torch.no_grad():
            for i, layer in enumerate(layers):
                self.register_buffer(f"w{i}", torch.stack([lin.weight.t() for lin in layer]).contiguous(),
                                     persistent=False)  # (T, in, out)
                self.register_buffer(f"b{i}", torch.stack([lin.bias for lin in layer]).unsqueeze(1),
                                     persistent=False)  # (T, 1, out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """stack([mlp_i(tokens[:, i]) for i], dim=1): (B, T, C) -> (B, T, out)."""
        x = tokens.transpose(0, 1)  # (T, B, C)
        for i in range(self.depth):
            x = torch.baddbmm(getattr(self, f"b{i}"), x, getattr(self, f"w{i}"))
            if i < self.depth - 1:
                x = F.relu(x)
        return x.transpose(0, 1)


class FastHead(nn.Module):
    """The final head (conv 3x3, BatchNorm, ReLU, conv 1x1) with the BatchNorm folded."""

    def __init__(self, head: nn.Sequential) -> None:
        super().__init__()
        conv, bn, _, last = head
        self.conv_bn = FoldedConvBN(conv, bn)
        with torch.no_grad():
            self.register_buffer("w_out", last.weight.detach().contiguous(memory_format=_NHWC), persistent=False)
            self.register_buffer("b_out", None if last.bias is None else last.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.conv_bn(x), self.w_out, self.b_out)


# ---------------------------------------------------------------------------------------------
# the inference model


class FastUsam(nn.Module):
    """Inference-only U-SAM over a trained model in eval mode: encode (with skip parts), decode, forward.

    `model` is shared, not changed; the derived decoder weights are buffers of this module.
    """

    def __init__(self, model: Usam) -> None:
        super().__init__()
        if not isinstance(model, Usam):
            raise UsamError(f"FastUsam needs a Usam model, not {type(model).__name__}")
        if model.training:
            raise UsamError("FastUsam is built from a trained model in eval mode: call model.eval() first")
        self.model = model
        self.config = model.config
        self.backbone = folded_adapter(model.backbone)
        dec = model.sam.mask_decoder
        size = model.config.image_size
        self.ups = nn.ModuleList(FastUpBlock(block, (size >> k, size >> k)) for k, block in enumerate(dec.up_blocks()))
        self.hypernetworks = BatchedHypernetworks(dec.output_hypernetworks_mlps)
        self.head = FastHead(dec.final_output)
        self.train(False)

    def train(self, mode: bool = True) -> "FastUsam":
        """Inference only: training mode is refused (train the Usam, then build a new FastUsam)."""
        if mode:
            raise UsamError("FastUsam is for inference only: train the Usam and rebuild FastUsam from it")
        return super().train(False)

    def _check_mode(self) -> None:
        if self.model.training:
            raise UsamError("the model under this FastUsam was put in training mode: call model.eval() "
                            "(and rebuild FastUsam after training)")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """Usam.encode (NHWC, through the folded adapter), then each up block's prompt-free part of its
        skip: ImageFeatures(skip_parts=True)."""
        self._check_mode()
        feats = self.model.encode(images.contiguous(memory_format=_NHWC), backbone=self.backbone)
        parts = tuple(up.skip_part(s) for up, s in zip(self.ups, feats.skips))
        return ImageFeatures(parts, feats.embedding, skip_parts=True)

    def mask_decoder(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                     dense: torch.Tensor, parts: tuple[torch.Tensor | None, ...],
                     clicks: torch.Tensor | None = None) -> torch.Tensor:
        """UsamMaskDecoder.run with the derived parts (its call signature, for Usam.decode)."""
        return self.model.sam.mask_decoder.run(image_embeddings, image_pe, sparse, dense, parts, tuple(self.ups),
                                               self.hypernetworks, self.head, clicks)

    @torch.inference_mode()
    def decode(self, features: ImageFeatures, prompts: list[Prompts | None] | None = None,
               **inputs: Any) -> torch.Tensor:
        """Usam.decode through the derived decoder; features must come from this model's encode.

        `inputs`: Usam.decode's other per-call inputs (mask_logits: the previous logits), passed
        through unchanged (so a new decoder input is added to Usam.decode alone)."""
        self._check_mode()
        if not features.skip_parts:
            raise UsamError("these features hold raw skips: decode features encoded by this FastUsam")
        return self.model.decode(features, prompts, mask_decoder=self.mask_decoder, **inputs)

    def forward(self, images: torch.Tensor, prompts: list[Prompts | None] | None = None,
                **inputs: Any) -> torch.Tensor:
        """decode(encode(images), prompts, **inputs) (inputs: e.g. mask_logits, as Usam.decode)."""
        return self.decode(self.encode(images), prompts, **inputs)


def optimize_for_inference(model: Usam | FastUsam, device: str | torch.device | None = None) -> FastUsam:
    """Where a model is loaded: put it in eval mode on `device` (it is the caller's own) and build its FastUsam.

    A FastUsam passes through (moved to `device` if given).
    """
    if isinstance(model, FastUsam):
        return model if device is None else model.to(pick_device(device))
    if device is not None:
        model = model.to(pick_device(device))
    return FastUsam(model.eval())
