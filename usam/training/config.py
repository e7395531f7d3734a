"""TrainConfig: every setting of a training run, typed, with USAM_SPEC's defaults, validated once.

`python -m usam train` parses its flags into one (usam/train.py); Python callers build one
directly. Field names are the flags' names with '_' for '-', except `preset` (--config),
`overrides` (--override, parsed), `augment` (not --no-augment) and `progress` (not --no-progress).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import torch

from usam.data import DEFAULT_WINDOW, LABEL_RESIZE, PROMPT_MODES
from usam.errors import UsamError
from usam.training.optim import OPTIMIZERS, RECIPES, resolve_recipe

FORMATS = ("auto", "manifest", "npz")
WEIGHTS_KINDS = ("trained", "demo-phantom")
AMP_MODES = ("auto", "bf16", "off")
# fields by type (None allowed where the field's default is None): checked before their ranges
INT_FIELDS = ("lora_rank", "warmup_steps", "epochs", "steps", "batch_size", "seed", "points", "negatives",
              "box_margin", "interactive_rounds", "val_every", "val_stride", "save_every", "log_every", "threads",
              "workers", "stop_after")
FLOAT_FIELDS = ("val_fraction", "lr_decoder", "lr_vit", "lr_adapter", "weight_decay", "poly_power", "lambda_ce",
                "lambda_dice", "p_rot90", "p_rotate", "max_rotation")
BOOL_FIELDS = ("include_empty", "dice_batch", "augment", "box_per_class", "resume", "progress", "rank_checksums")


@dataclass(kw_only=True)
class TrainConfig:
    """Settings of one training run (single process or one torchrun rank)."""

    # data
    data: str  # cohort folder (manifest.json/csv) or the public code's npz root
    format: str = "auto"
    window: tuple[float, float] = DEFAULT_WINDOW  # HU window of the model input
    include_empty: bool = False  # train on slices without foreground too
    label_resize: str = "nearest"  # how label maps are brought to 224
    val_fraction: float = 0.1  # npz layout only: share of train/ used for validation
    # model
    preset: str = "vit_b"  # vit_b, vit_l, vit_h, demo
    overrides: dict = field(default_factory=dict)  # UsamConfig fields changed from the preset
    lora_rank: int = 0  # LoRA rank on q,v of the ViT (0 = full fine-tuning)
    sam_weights: str | None = None  # SAM checkpoint to initialise from
    init: str | None = None  # start from this U-SAM checkpoint (safetensors)
    weights_kind: str = "trained"
    # recipe: optimizer settings are the recipe's unless given here
    recipe: str = "code"
    optimizer: str | None = None
    lr_decoder: float | None = None  # decoder, prompt encoder and heads
    lr_vit: float | None = None  # ViT image encoder
    lr_adapter: float | None = None  # CNN downsampling adapter
    weight_decay: float | None = None
    poly_power: float = 0.9  # lr = base * (1 - step/total)^power, per step
    warmup_steps: int = 0  # linear warm-up steps (0 = none, as the code)
    epochs: int = 100
    steps: int | None = None  # total optimizer steps (overrides epochs; None or 0: epochs decide)
    batch_size: int = 24  # per process (per GPU)
    lambda_ce: float = 0.4
    lambda_dice: float = 0.6
    dice_batch: bool = False  # pool Dice over the batch (the public code) instead of per sample (MONAI)
    ce_weights: tuple[float, float, float] | None = None  # background, normal, tumour
    dice_weights: tuple[float, float, float] | None = None
    augment: bool = True
    p_rot90: float = 0.5  # probability of rot90 + flip
    p_rotate: float = 0.5  # probability of a rotation when no rot90
    max_rotation: float = 20.0  # degrees
    seed: int = 202307
    # prompts
    prompt: str = "none"  # none, points, box, box+points, mixed (per batch)
    points: int = 3  # points per class for points / box+points
    negatives: int = 0  # negative (background) points per slice
    box_margin: int = 4  # max random box margin in px at 224
    box_per_class: bool = False  # one box per class instead of one around all foreground
    interactive_rounds: int = 0  # simulated users: corrective click rounds per step, drawn in 0..N (0 = off)
    # run
    out: str  # run folder: checkpoints, train_state.pt, log.jsonl
    export: str | None = None  # also copy the selected (best-on-val) checkpoint here
    resume: bool = False  # continue from out/train_state.pt
    val_every: int = 1  # validate every N epochs (0 = only at the end)
    val_stride: int = 1  # validate on every Nth cached val slice (speed)
    save_every: int = 0  # also save the resumable state every N steps
    log_every: int = 10
    device: str | None = None  # cpu / cuda / cuda:N (None: cuda when present)
    amp: str = "auto"  # bf16 autocast (GPU only)
    threads: int | None = None  # torch CPU threads (None or 0: torch's default)
    workers: int = 0  # DataLoader workers
    progress: bool = True  # tqdm progress bar on rank 0
    stop_after: int | None = None  # tests: stop after this many steps, as a crash would
    rank_checksums: bool = False  # every rank writes a checksum of its weights
    argv: tuple[str, ...] | None = None  # the flags it was parsed from (provenance); None: sys.argv

    def __post_init__(self) -> None:
        self.data, self.out = str(self.data), str(self.out)
        self.window = _pair(self.window, "window")
        self.ce_weights = _triple(self.ce_weights, "ce_weights")
        self.dice_weights = _triple(self.dice_weights, "dice_weights")
        self.overrides = dict(self.overrides)
        if self.argv is not None:
            self.argv = tuple(str(a) for a in self.argv)
        self._validate()

    def _validate(self) -> None:
        """Every check of a run's settings, before anything is read or built."""
        for name in INT_FIELDS + FLOAT_FIELDS + BOOL_FIELDS:
            value = getattr(self, name)
            if value is None and default(name) is None:
                continue
            kind = (bool if name in BOOL_FIELDS else numbers.Integral if name in INT_FIELDS else numbers.Real)
            _need(isinstance(value, kind) and (kind is bool or not isinstance(value, bool)),
                  f"{name} must be {_KIND_WORD[kind]}, got {value!r}")
        _need(bool(self.data), "data: a cohort folder is needed")
        _need(bool(self.out), "out: a run folder is needed")
        _choice(self.format, FORMATS, "format")
        _choice(self.label_resize, LABEL_RESIZE, "label_resize")
        _choice(self.weights_kind, WEIGHTS_KINDS, "weights_kind")
        _choice(self.recipe, tuple(sorted(RECIPES)), "recipe")
        if self.optimizer is not None:
            _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.prompt, PROMPT_MODES, "prompt")
        _choice(self.amp, AMP_MODES, "amp")
        for name in ("sam_weights", "init"):  # fail before minutes of data loading, not after
            path = getattr(self, name)
            _need(path is None or Path(path).is_file(), f"{name}: no file at {path}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise UsamError(f"device must be cpu, cuda or cuda:N; got {self.device!r}") from None
        # the CLI's own wording, kept from before the config existed
        _need(self.window[0] < self.window[1], f"--window must be LO < HI, got {self.window}")
        _need(0.0 <= self.val_fraction < 1.0, f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        for name in ("lora_rank", "warmup_steps", "negatives", "box_margin", "interactive_rounds", "val_every",
                     "save_every", "workers"):
            _need(getattr(self, name) >= 0, f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "points", "val_stride", "log_every"):
            _need(getattr(self, name) >= 1, f"{name} must be 1 or more, got {getattr(self, name)}")
        for name in ("steps", "threads"):  # 0 means unset, as None (the CLI has always read it so)
            value = getattr(self, name)
            _need(value is None or value >= 0, f"{name} must be 0 or more, got {value}")
        _need(self.stop_after is None or self.stop_after >= 1, f"stop_after must be 1 or more, got {self.stop_after}")
        for name in ("lr_decoder", "lr_vit", "lr_adapter", "weight_decay", "poly_power", "lambda_ce", "lambda_dice",
                     "max_rotation"):  # a learning rate of 0 freezes its group
            value = getattr(self, name)
            _need(value is None or (math.isfinite(value) and value >= 0), f"{name} must be 0 or more, got {value}")
        _need(self.lambda_ce + self.lambda_dice > 0, "lambda_ce and lambda_dice are both 0: nothing to learn")
        for name in ("p_rot90", "p_rotate"):
            _need(0.0 <= getattr(self, name) <= 1.0, f"{name} is a probability, got {getattr(self, name)}")

    def optimizer_settings(self) -> dict:
        """optimizer, lr_decoder, lr_vit, lr_adapter, weight_decay: the recipe's, overridden."""
        return resolve_recipe(self.recipe, optimizer=self.optimizer, lr_decoder=self.lr_decoder,
                              lr_vit=self.lr_vit, lr_adapter=self.lr_adapter, weight_decay=self.weight_decay)

    @property
    def out_dir(self) -> Path:
        """The run folder."""
        return Path(self.out)


def default(name: str):
    """The default of a TrainConfig field (the CLI's flag defaults come from here)."""
    f = TrainConfig.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{name} has no default")


_KIND_WORD = {bool: "True or False", numbers.Integral: "a whole number", numbers.Real: "a number"}


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UsamError(message)


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    _need(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _floats(value, n: int, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UsamError(f"{name} needs {n} numbers, got {value!r}") from None
    _need(len(out) == n and all(math.isfinite(v) for v in out), f"{name} needs {n} finite numbers, got {value!r}")
    return out


def _pair(value, name: str) -> tuple[float, float]:
    return _floats(value, 2, name)  # type: ignore[return-value]


def _triple(value, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    out = _floats(value, 3, name)
    _need(all(v >= 0 for v in out) and sum(out) > 0, f"{name} must be 0 or more and not all 0, got {value!r}")
    return out  # type: ignore[return-value]
