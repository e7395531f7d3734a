"""U-SAM configuration: plain data, saved inside every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from usam.errors import CheckpointError
from usam.preprocess import SIZE


@dataclass
class UsamConfig:
    """Every size of a U-SAM model; the module tree follows from it alone."""

    name: str = "vit_b"
    image_size: int = SIZE
    in_chans: int = 3
    num_classes: int = 3  # background, normal rectum, tumor
    # downsampling adapter: widths of f0..f3; f4 = vit_embed_dim (the token grid)
    adapter_channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    # SAM ViT
    vit_embed_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    vit_mlp_ratio: float = 4.0
    vit_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    vit_window_size: int = 14
    patch_size: int = 16  # only sizes the (unused) patch embedding and the 14x14 grid
    # prompt encoder / two-way transformer
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_mask_tokens: int = 32
    # U-Net up blocks: output widths of up4, up3, up2, up1 (up2's width = hypernetwork output)
    up_channels: tuple[int, int, int, int] = (128, 64, 32, 32)
    skips: int = 4  # 0..4: the n deepest skips are used (f3, then f2, f1, f0)
    lora_rank: int = 0
    freeze_image_encoder: bool | None = None  # None: frozen iff lora_rank > 0
    freeze_prompt_encoder: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep them hashable tuples
        self.adapter_channels = tuple(int(c) for c in self.adapter_channels)
        self.up_channels = tuple(int(c) for c in self.up_channels)
        self.vit_global_attn_indexes = tuple(int(i) for i in self.vit_global_attn_indexes)
        if not 0 <= self.skips <= 4:
            raise CheckpointError(f"skips must be in 0..4, got {self.skips}")
        if self.image_size % 16 or self.image_size // 16 != self.image_size // self.patch_size:
            raise CheckpointError("image_size must be a multiple of 16 and match patch_size")
        if self.vit_embed_dim % self.vit_heads or self.prompt_dim % self.decoder_heads:
            raise CheckpointError("embedding widths must be divisible by the head counts")

    @property
    def grid_size(self) -> int:
        """Side of the token grid (14 at 224)."""
        return self.image_size // 16

    @property
    def image_encoder_frozen(self) -> bool:
        """Whether the ViT (all but LoRA) is frozen."""
        if self.freeze_image_encoder is None:
            return self.lora_rank > 0
        return bool(self.freeze_image_encoder)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UsamConfig":
        """Inverse of to_dict; unknown keys are an error (a checkpoint from a newer version)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"unknown U-SAM config keys {unknown}: checkpoint from a newer version?")
        return cls(**d)


_VIT_B = UsamConfig()
CONFIGS: dict[str, UsamConfig] = {
    "vit_b": _VIT_B,
    "vit_l": replace(_VIT_B, name="vit_l", vit_embed_dim=1024, vit_depth=24, vit_heads=16,
                     vit_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": replace(_VIT_B, name="vit_h", vit_embed_dim=1280, vit_depth=32, vit_heads=16,
                     vit_global_attn_indexes=(7, 15, 23, 31)),
    # small and fast on CPU, same architecture (measured choice, see checkpoints/README.md): narrow
    # adapter and up blocks because the 224^2 and 112^2 stages dominate CPU time, 8 mask tokens,
    # ViT 128 x 4 blocks with every block global (window 14 on a 14 grid is global anyway).
    # About 0.66 GMACs per slice and 2.28 M parameters (8.7 MB fp32).
    "demo": replace(_VIT_B, name="demo", adapter_channels=(8, 16, 32, 64), vit_embed_dim=128,
                    vit_depth=4, vit_heads=4, vit_global_attn_indexes=(0, 1, 2, 3), prompt_dim=128,
                    decoder_heads=4, decoder_mlp_dim=256, num_mask_tokens=8, up_channels=(32, 16, 8, 8)),
}


def get_config(name: str, **overrides: Any) -> UsamConfig:
    """A preset by name with fields overridden, e.g. get_config('vit_b', lora_rank=4)."""
    if name not in CONFIGS:
        raise CheckpointError(f"unknown U-SAM config {name!r}; choose one of {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)
