"""`python -m usam train`: the command line of U-SAM training (USAM_SPEC recipe by default),
single process or DDP via `torchrun --nproc_per_node N -m usam train ...`.

It only parses flags into a TrainConfig (usam/training/config.py, where the defaults and the
checks live) and calls usam.training.train.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from usam.data import LABEL_RESIZE, PROMPT_MODES
from usam.errors import UsamError
from usam.training import TrainConfig, train
from usam.training.config import AMP_MODES, FORMATS, WEIGHTS_KINDS, default
from usam.training.optim import OPTIMIZERS, RECIPES
from usam.training.outputs import STATE_FILE

__all__ = ["add_arguments", "config_from_args", "parse_config", "run", "TrainConfig", "train", "STATE_FILE"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `python -m usam train`; defaults are USAM_SPEC.md's recipe."""
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="cohort folder (manifest.json/csv) or the public code's npz root")
    g.add_argument("--format", default=default("format"), choices=FORMATS)
    g.add_argument("--window", nargs=2, type=float, default=list(default("window")), metavar=("LO", "HI"),
                   help="HU window of the model input (default %(default)s, pelvic soft tissue)")
    g.add_argument("--include-empty", action="store_true", help="train on slices without foreground too")
    g.add_argument("--label-resize", default=default("label_resize"), choices=LABEL_RESIZE,
                   help="how label maps are brought to 224 (default %(default)s)")
    g.add_argument("--val-fraction", type=float, default=default("val_fraction"), help="npz layout only: share of train/ used for validation")
    g = p.add_argument_group("model")
    g.add_argument("--config", dest="preset", metavar="CONFIG", default=default("preset"), help="model preset: vit_b, vit_l, vit_h, demo")
    g.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one config field, e.g. --override vit_depth=2 (VALUE is JSON; repeatable)")
    g.add_argument("--lora-rank", type=int, default=default("lora_rank"), help="LoRA rank on q,v of the ViT (0 = full fine-tuning)")
    g.add_argument("--sam-weights", default=None, help="SAM checkpoint to initialise from (e.g. sam_vit_b_01ec64.pth)")
    g.add_argument("--init", default=None, help="start from this U-SAM checkpoint (safetensors)")
    g.add_argument("--weights-kind", default=default("weights_kind"), choices=WEIGHTS_KINDS)
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=default("recipe"), choices=sorted(RECIPES),
                   help="code: AdamW wd 1e-4, lr decoder 1e-3 / ViT 1e-4 / adapter 1e-4 (default); "
                        "paper: Adam, encoder 1e-3 / decoder 1e-4")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="overrides the recipe")
    g.add_argument("--lr-decoder", type=float, default=None, help="decoder, prompt encoder and heads")
    g.add_argument("--lr-vit", type=float, default=None, help="ViT image encoder")
    g.add_argument("--lr-adapter", type=float, default=None, help="CNN downsampling adapter")
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--poly-power", type=float, default=default("poly_power"), help="lr = base * (1 - step/total)^power, per step")
    g.add_argument("--warmup-steps", type=int, default=default("warmup_steps"), help="linear warm-up steps (0 = none, as the code)")
    g.add_argument("--epochs", type=int, default=default("epochs"))
    g.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=default("batch_size"), help="per process (per GPU)")
    g.add_argument("--lambda-ce", type=float, default=default("lambda_ce"))
    g.add_argument("--lambda-dice", type=float, default=default("lambda_dice"))
    g.add_argument("--dice-batch", action="store_true", help="pool Dice over the batch (the public code) instead of per sample (MONAI)")
    g.add_argument("--ce-weights", type=float, nargs=3, default=None, metavar=("BG", "NORMAL", "TUMOR"))
    g.add_argument("--dice-weights", type=float, nargs=3, default=None, metavar=("BG", "NORMAL", "TUMOR"))
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--p-rot90", type=float, default=default("p_rot90"), help="probability of rot90 + flip")
    g.add_argument("--p-rotate", type=float, default=default("p_rotate"), help="probability of a rotation when no rot90")
    g.add_argument("--max-rotation", type=float, default=default("max_rotation"), help="degrees")
    g.add_argument("--seed", type=int, default=default("seed"))
    g = p.add_argument_group("prompts")
    g.add_argument("--prompt", default=default("prompt"), choices=PROMPT_MODES,
                   help="training prompts; mixed samples none/points1/3/5/box/box+points per batch")
    g.add_argument("--points", type=int, default=default("points"), help="points per class for points / box+points")
    g.add_argument("--negatives", type=int, default=default("negatives"), help="negative (background) points per slice")
    g.add_argument("--box-margin", type=int, default=default("box_margin"), help="max random box margin in px at 224")
    g.add_argument("--box-per-class", action="store_true", help="one box per class instead of one around all foreground")
    g.add_argument("--interactive-rounds", type=int, default=default("interactive_rounds"), metavar="N",
                   help="simulated users: after the start prompt, 0..N corrective clicks per slice at the centre of "
                        "the largest error, previous logits fed back (0 = off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder: checkpoints, train_state.pt, log.jsonl")
    g.add_argument("--export", default=None, help="also copy the selected (best-on-val) checkpoint here")
    g.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    g.add_argument("--val-every", type=int, default=default("val_every"), help="validate every N epochs (0 = only at the end)")
    g.add_argument("--val-stride", type=int, default=default("val_stride"), help="validate on every Nth cached val slice (speed)")
    g.add_argument("--save-every", type=int, default=default("save_every"), help="also save the resumable state every N steps")
    g.add_argument("--log-every", type=int, default=default("log_every"))
    g.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: cuda when present)")
    g.add_argument("--amp", default=default("amp"), choices=AMP_MODES, help="bf16 autocast (GPU only)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--workers", type=int, default=default("workers"), help="DataLoader workers")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    g.add_argument("--rank-checksums", action="store_true", help="every rank writes a checksum of its weights")


def parse_overrides(items: Sequence[str]) -> dict:
    """--override KEY=VALUE pairs (VALUE parsed as JSON, else kept as a string)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsamError(f"--override needs KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# flags whose config field is not the flag's dest
_INVERTED = {"no_augment": "augment", "no_progress": "progress"}
_PARSED = {"overrides": parse_overrides}


def config_from_args(args: argparse.Namespace, argv: Sequence[str] | None = None) -> TrainConfig:
    """The TrainConfig of parsed flags; argv (the flags after `train`) is kept for provenance,
    else the run records sys.argv."""
    fields = set(TrainConfig.__dataclass_fields__)
    values = {}
    for dest, value in vars(args).items():
        if dest in _INVERTED:
            values[_INVERTED[dest]] = not value
        elif dest in _PARSED:
            values[dest] = _PARSED[dest](value)
        elif dest in fields and dest != "argv":
            values[dest] = value
    return TrainConfig(**values, argv=None if argv is None else tuple(argv))


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """The TrainConfig of `python -m usam train ARGV...` (flags after `train`)."""
    parser = argparse.ArgumentParser(prog="python -m usam train")
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)), argv)


def run(args: argparse.Namespace) -> int:
    """The subcommand: parsed flags -> TrainConfig -> train; returns 0."""
    return train(config_from_args(args, getattr(args, "_argv", None)))
