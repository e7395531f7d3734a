"""Weights: official SAM checkpoints, the public code's checkpoints, and our safetensors format."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from usam.errors import CheckpointError
from usam.model import CONFIGS, Usam, UsamConfig, build_usam, extension_keys, get_config
from usam.preprocess import default_preprocessing

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
DEMO_NAME = "usam_demo.safetensors"
METADATA_KEY = "usam"  # safetensors header __metadata__ entry holding our JSON metadata
FORMAT_VERSION = 1
CLASSES = {"0": "background", "1": "normal rectum", "2": "tumor"}
# SAM decoder parts whose role or shape changes in U-SAM: never loaded from SAM weights
SAM_NOT_LOADED = ("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps",
                  "mask_decoder.iou_prediction_head", "mask_decoder.output_upscaling")
PICKLE_MESSAGE = (
    "{path} is a Python pickle holding more than tensors (the public U-SAM code saves an argparse "
    "Namespace with the weights). Unpickling such a file can run arbitrary code on this machine, so it "
    "is refused. If you trust where the file comes from, load it with trust_pickle=True "
    "(CLI: --trust-pickle); better, convert it once to a .safetensors checkpoint.")


@dataclass
class LoadReport:
    """What happened to each key when loading foreign weights into a U-SAM model."""

    loaded: list[str] = field(default_factory=list)       # model keys copied unchanged
    resized: list[str] = field(default_factory=list)      # model keys interpolated to the new shape
    skipped: dict[str, str] = field(default_factory=dict)  # file key -> reason it was not used
    left_at_init: list[str] = field(default_factory=list)  # model keys not filled from the file

    def summary(self) -> str:
        """One line for logs and the UI."""
        return (f"{len(self.loaded)} loaded, {len(self.resized)} resized, {len(self.skipped)} skipped, "
                f"{len(self.left_at_init)} left at init")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"loaded": self.loaded, "resized": self.resized, "skipped": self.skipped,
                "left_at_init": self.left_at_init}


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, H, W, C) absolute position embedding -> (1, grid, grid, C), bilinear, align_corners False."""
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, head_dim) relative position table -> (length, head_dim), bilinear along L (as SAMed)."""
    x = rel_pos.float()[None, None]
    x = F.interpolate(x, size=(length, rel_pos.shape[1]), mode="bilinear", align_corners=False)
    return x[0, 0].to(rel_pos.dtype).contiguous()


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """torch.load with weights_only=True; a file needing full unpickling only with trust_pickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # "Unsupported global": a real pickle holding Python objects; anything else: not a checkpoint
        if "Unsupported global" not in str(exc):
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint") from None
        if not trust_pickle:
            raise CheckpointError(PICKLE_MESSAGE.format(path=path)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt or foreign file: say so, no traceback
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded .pth ({'model': sd, ...} or a plain sd); strips DDP's 'module.'."""
    sd = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_sam_weights(model: Usam, path: str | Path) -> LoadReport:
    """Load an official SAM checkpoint (sam_vit_{b,l,h}_*.pth) into a U-SAM model.

    pos_embed is resized to the 14x14 grid and rel_pos tables to 2*14-1 rows (global blocks);
    SAM's mask tokens, hypernetwork MLPs, IoU head and output upscaling are not loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint not found: {path}")
    return load_sam_state_dict(model, _state_dict_of(_torch_load(path, trust_pickle=False), path))


def load_sam_state_dict(model: Usam, sd: dict[str, torch.Tensor]) -> LoadReport:
    """load_sam_weights on an in-memory SAM state dict (keys image_encoder.*, prompt_encoder.*, mask_decoder.*)."""
    report = LoadReport()
    ours = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(SAM_NOT_LOADED):
            report.skipped[k] = "U-SAM replaces this decoder part"
            continue
        key = "sam." + k
        if key not in ours:
            report.skipped[k] = "no such key in U-SAM"
            continue
        target = ours[key]
        if v.shape == target.shape:
            new[key] = v
            report.loaded.append(key)
        elif k.endswith(".pos_embed") and v.ndim == 4 and v.shape[-1] == target.shape[-1]:
            new[key] = resize_pos_embed(v, target.shape[1])
            report.resized.append(key)
        elif ".rel_pos_" in k and v.ndim == 2 and v.shape[1] == target.shape[1]:
            new[key] = resize_rel_pos(v, target.shape[0])
            report.resized.append(key)
        else:
            report.skipped[k] = f"shape {tuple(v.shape)} does not fit {tuple(target.shape)}"
    if not new:
        raise CheckpointError("no SAM weight fits this U-SAM configuration (wrong ViT size or not a SAM file?)")
    model.load_state_dict(new, strict=False)
    report.left_at_init = [k for k in ours if k not in new]
    return report


def _count(prefix: str, sd: dict) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max(int(m.group(1)) for k in sd if (m := pat.match(k)))


def infer_config(sd: dict[str, torch.Tensor]) -> UsamConfig:
    """A UsamConfig from the shapes of a reference-layout state dict (keys sam.*, backbone.*)."""
    try:
        pe = sd["sam.image_encoder.pos_embed"]
        embed, grid = pe.shape[-1], pe.shape[1]
        depth = _count("sam.image_encoder.blocks.", sd)
        head_dim = sd["sam.image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        preset = next((c for c in CONFIGS.values() if c.vit_embed_dim == embed and c.vit_depth == depth), None)
        md = "sam.mask_decoder."
        up_in = [sd[f"{md}up{i}.up.weight"].shape[0] for i in (4, 3, 2, 1)]
        up_cat = [sd[f"{md}up{i}.nConvs.0.conv.weight"].shape[1] for i in (4, 3, 2, 1)]
        prompt_dim = sd["sam.image_encoder.neck.0.weight"].shape[0]
        lora = [v.shape[0] for k, v in sd.items() if k.endswith(".lora_a_q.weight")]
        cfg = dict(
            name=preset.name if preset else "custom",
            image_size=grid * 16,
            num_classes=sd[f"{md}final_output.3.weight"].shape[0],
            adapter_channels=(sd["backbone.inc.conv.weight"].shape[0],
                              *(sd[f"backbone.down{i}.nConvs.0.conv.weight"].shape[0] for i in (1, 2, 3))),
            vit_embed_dim=embed, vit_depth=depth, vit_heads=embed // head_dim,
            vit_mlp_ratio=sd["sam.image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed,
            vit_global_attn_indexes=preset.vit_global_attn_indexes if preset else tuple(range(depth)),
            prompt_dim=prompt_dim, decoder_depth=_count(f"{md}transformer.layers.", sd),
            decoder_heads=max(1, prompt_dim // 32),  # head count leaves no trace in shapes; SAM: 256/8
            decoder_mlp_dim=sd[f"{md}transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_mask_tokens=sd[f"{md}mask_tokens.weight"].shape[0],
            up_channels=tuple(sd[f"{md}up{i}.nConvs.0.conv.weight"].shape[0] for i in (4, 3, 2, 1)),
            skips=sum(int(c > i) for c, i in zip(up_cat, up_in)),
            lora_rank=lora[0] if lora else 0,
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"not a U-SAM state dict in the reference layout (missing {exc})") from None
    return UsamConfig(**cfg)


def load_reference_state_dict(sd: dict[str, torch.Tensor], config: UsamConfig | None = None) -> tuple[Usam, LoadReport]:
    """Build a model for a reference-layout state dict and load it; every key must be used and
    every model key filled, except our extension keys (class embeddings, LoRA)."""
    config = config or infer_config(sd)
    model = build_usam(config)
    ours = model.state_dict()
    unexpected = [k for k in sd if k not in ours]
    wrong = [k for k in sd if k in ours and tuple(sd[k].shape) != tuple(ours[k].shape)]
    missing = [k for k in ours if k not in sd and k not in extension_keys(model)]
    if unexpected or wrong or missing:
        raise CheckpointError(
            f"state dict does not fit U-SAM {config.name}: unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}, missing {missing[:5]}")
    model.load_state_dict(sd, strict=False)
    report = LoadReport(loaded=list(sd), left_at_init=[k for k in ours if k not in sd])
    return model, report


def _default_metadata(model: Usam, metadata: dict) -> dict:
    meta = dict(metadata)
    meta["config"] = model.config.to_dict()
    meta.setdefault("classes", CLASSES)
    meta.setdefault("preprocessing", default_preprocessing())
    meta.setdefault("provenance", {})
    meta.setdefault("weights_kind", "trained")
    meta["format_version"] = FORMAT_VERSION
    return meta


def save_checkpoint(model: Usam, path: str | Path, metadata: dict) -> Path:
    """Write weights + JSON metadata (config always included) as ONE safetensors file; no pickle."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = _default_metadata(model, metadata)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, default=str)})
    os.replace(tmp, path)  # never leave a half-written checkpoint under the final name
    return path


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of one of our safetensors checkpoints, without reading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without U-SAM metadata")
    return json.loads(raw)


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    trust_pickle: bool = False) -> tuple[Usam, dict]:
    """Load our safetensors checkpoint, or a .pth (official SAM -> 'sam-init'; public-code
    checkpoint -> 'reference', needs trust_pickle=True). Returns (model in eval mode, metadata)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        meta = read_metadata(path)
        model = build_usam(UsamConfig.from_dict(meta["config"]))
        sd = load_file(str(path))
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit its own config: {exc}") from None
        # a checkpoint older than an extension (e.g. the class-aware mask branch) keeps its zero init
        missing = [k for k in missing if k not in extension_keys(model)]
        if missing or unexpected:
            raise CheckpointError(f"{path} does not fit its own config: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        return model.to(device).eval(), meta
    obj = _torch_load(path, trust_pickle)
    sd = _state_dict_of(obj, path)
    provenance: dict[str, Any] = {"data": "unknown", "source_file": path.name}
    if any(k.startswith("image_encoder.") for k in sd) and not any(k.startswith("backbone.") for k in sd):
        embed = sd["image_encoder.pos_embed"].shape[-1]
        name = next((n for n, c in CONFIGS.items() if c.vit_embed_dim == embed and n != "demo"), None)
        if name is None:
            raise CheckpointError(f"{path}: SAM ViT with embed dim {embed} matches no U-SAM config")
        model = build_usam(get_config(name))
        report = load_sam_state_dict(model, sd)
        kind = "sam-init"
    else:
        model, report = load_reference_state_dict(sd)
        kind = "reference"
        if isinstance(obj, dict):
            provenance.update({"epoch": obj.get("epoch"), "args": str(obj.get("args"))})
    meta = _default_metadata(model, {"weights_kind": kind, "provenance": provenance,
                                     "load_report": report.to_dict()})
    return model.to(device).eval(), meta


def demo_checkpoint_path() -> Path:
    """checkpoints/usam_demo.safetensors (the shipped phantom-trained demo model)."""
    return CHECKPOINT_DIR / DEMO_NAME


def resolve_weights(cli_path: str | Path | None = None, env_path: str | Path | None = None,
                    search_dir: str | Path | None = None) -> Path:
    """Which weights to use: flag > $USAM_CHECKPOINT > newest other checkpoints/*.safetensors > demo.

    The caller reads the flag and the environment at its edge (CLI parser, app settings) and passes
    them in: cli_path as given by --checkpoint, env_path as $USAM_CHECKPOINT; nothing here reads the
    environment. The error for a missing file names where the path came from."""
    for given, origin in ((cli_path, "--checkpoint"), (env_path, "$USAM_CHECKPOINT")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise CheckpointError(f"{origin} points to {p}, which does not exist")
            return p
    folder = Path(search_dir) if search_dir is not None else CHECKPOINT_DIR
    demo = folder / DEMO_NAME
    others = [p for p in folder.glob("*.safetensors") if p.name != DEMO_NAME] if folder.is_dir() else []
    if others:
        return max(others, key=lambda p: (p.stat().st_mtime, p.name))
    if demo.is_file():
        return demo
    raise CheckpointError(
        f"no U-SAM weights found: pass --checkpoint, set $USAM_CHECKPOINT, or put a .safetensors file in "
        f"{folder}; the demo checkpoint {demo} is missing (train it with "
        f"`python -m usam train --config demo`).")


def now_iso() -> str:
    """UTC timestamp for provenance."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
