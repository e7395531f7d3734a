"""`python -m usam train`: U-SAM training (USAM_SPEC recipe by default), single process or
DDP via `torchrun --nproc_per_node N -m usam train ...`."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from usam import data as D
from usam.errors import UsamError
from usam.losses import DiceCELoss

from usam.preprocess import MEAN as NORM_MEAN, STD as NORM_STD
CLASSES = {0: "background", 1: "normal rectum", 2: "tumor"}
STATE_FILE = "train_state.pt"

# Optimizer recipes: the public code's (default) and the paper's text.
RECIPES = {
    "code": {"optimizer": "adamw", "lr_decoder": 1e-3, "lr_vit": 1e-4, "lr_adapter": 1e-4, "weight_decay": 1e-4},
    "paper": {"optimizer": "adam", "lr_decoder": 1e-4, "lr_vit": 1e-3, "lr_adapter": 1e-3, "weight_decay": 0.0},
}


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `python -m usam train`; defaults are USAM_SPEC.md's recipe."""
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="cohort folder (manifest.json/csv) or the public code's npz root")
    g.add_argument("--format", default="auto", choices=["auto", "manifest", "npz"])
    g.add_argument("--window", nargs=2, type=float, default=list(D.DEFAULT_WINDOW), metavar=("LO", "HI"),
                   help="HU window of the model input (default %(default)s, pelvic soft tissue)")
    g.add_argument("--include-empty", action="store_true", help="train on slices without foreground too")
    g.add_argument("--label-resize", default="nearest", choices=D.LABEL_RESIZE,
                   help="how label maps are brought to 224 (default %(default)s)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="npz layout only: share of train/ used for validation")
    g = p.add_argument_group("model")
    g.add_argument("--config", default="vit_b", help="model preset: vit_b, vit_l, vit_h, demo")
    g.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="change one config field, e.g. --override vit_depth=2 (VALUE is JSON; repeatable)")
    g.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on q,v of the ViT (0 = full fine-tuning)")
    g.add_argument("--sam-weights", default=None, help="SAM checkpoint to initialise from (e.g. sam_vit_b_01ec64.pth)")
    g.add_argument("--init", default=None, help="start from this U-SAM checkpoint (safetensors)")
    g.add_argument("--weights-kind", default="trained", choices=["trained", "demo-phantom"])
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default="code", choices=sorted(RECIPES),
                   help="code: AdamW wd 1e-4, lr decoder 1e-3 / ViT 1e-4 / adapter 1e-4 (default); "
                        "paper: Adam, encoder 1e-3 / decoder 1e-4")
    g.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=None, help="overrides the recipe")
    g.add_argument("--lr-decoder", type=float, default=None, help="decoder, prompt encoder and heads")
    g.add_argument("--lr-vit", type=float, default=None, help="ViT image encoder")
    g.add_argument("--lr-adapter", type=float, default=None, help="CNN downsampling adapter")
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--poly-power", type=float, default=0.9, help="lr = base * (1 - step/total)^power, per step")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (0 = none, as the code)")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=24, help="per process (per GPU)")
    g.add_argument("--lambda-ce", type=float, default=0.4)
    g.add_argument("--lambda-dice", type=float, default=0.6)
    g.add_argument("--dice-batch", action="store_true", help="pool Dice over the batch (the public code) instead of per sample (MONAI)")
    g.add_argument("--ce-weights", type=float, nargs=3, default=None, metavar=("BG", "NORMAL", "TUMOR"))
    g.add_argument("--dice-weights", type=float, nargs=3, default=None, metavar=("BG", "NORMAL", "TUMOR"))
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--p-rot90", type=float, default=0.5, help="probability of rot90 + flip")
    g.add_argument("--p-rotate", type=float, default=0.5, help="probability of a rotation when no rot90")
    g.add_argument("--max-rotation", type=float, default=20.0, help="degrees")
    g.add_argument("--seed", type=int, default=202307)
    g = p.add_argument_group("prompts")
    g.add_argument("--prompt", default="none", choices=D.PROMPT_MODES,
                   help="training prompts; mixed samples none/points1/3/5/box/box+points per batch")
    g.add_argument("--points", type=int, default=3, help="points per class for points / box+points")
    g.add_argument("--negatives", type=int, default=0, help="negative (background) points per slice")
    g.add_argument("--box-margin", type=int, default=4, help="max random box margin in px at 224")
    g.add_argument("--box-per-class", action="store_true", help="one box per class instead of one around all foreground")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder: checkpoints, train_state.pt, log.jsonl")
    g.add_argument("--export", default=None, help="also copy the selected (best-on-val) checkpoint here")
    g.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs (0 = only at the end)")
    g.add_argument("--val-stride", type=int, default=1, help="validate on every Nth cached val slice (speed)")
    g.add_argument("--save-every", type=int, default=0, help="also save the resumable state every N steps")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: cuda when present)")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"], help="bf16 autocast (GPU only)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    g.add_argument("--rank-checksums", action="store_true", help="every rank writes a checksum of its weights")


# ----------------------------------------------------------------------------- pieces


def resolve_recipe(args: argparse.Namespace) -> dict:
    """Optimizer settings: the recipe's values overridden by explicit flags."""
    r = dict(RECIPES[args.recipe])
    for key in ("optimizer", "lr_decoder", "lr_vit", "lr_adapter", "weight_decay"):
        if getattr(args, key, None) is not None:
            r[key] = getattr(args, key)
    return r


# top-level names of usam.model.Usam (the public code's key layout)
ADAPTER_PREFIXES = ("backbone.",)
VIT_PREFIXES = ("sam.image_encoder.",)


def parameter_group_of(name: str) -> str:
    """'adapter' (CNN downsampling adapter), 'vit' (image encoder) or 'decoder' (the rest:
    prompt encoder, two-way transformer, up blocks, heads)."""
    if name.startswith(ADAPTER_PREFIXES):
        return "adapter"
    if name.startswith(VIT_PREFIXES):
        return "vit"
    return "decoder"


def param_groups(model: nn.Module, lr_decoder: float, lr_vit: float, lr_adapter: float,
                 weight_decay: float) -> list[dict]:
    """Three optimizer groups with their learning rates; frozen parameters are left out."""
    lrs = {"decoder": lr_decoder, "vit": lr_vit, "adapter": lr_adapter}
    groups: dict[str, list] = {k: [] for k in lrs}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[parameter_group_of(name)].append(param)
    return [{"name": k, "params": v, "lr": lrs[k], "weight_decay": weight_decay}
            for k, v in groups.items() if v]


def make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the three parameter groups."""
    groups = param_groups(model, recipe["lr_decoder"], recipe["lr_vit"], recipe["lr_adapter"],
                          recipe["weight_decay"])
    if not groups:
        raise UsamError("no trainable parameters")
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(groups)
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def poly_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier of a step: linear warm-up, then (1 - step/total)^power."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max(1, total_steps)) ** power


def make_scheduler(opt: torch.optim.Optimizer, total_steps: int, power: float,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: poly_factor(s, total_steps, power, warmup_steps))


@dataclass
class Dist:
    """Process-group facts of this process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Only rank 0 writes files, logs and progress."""
        return self.rank == 0


def setup_distributed(device_flag: str | None) -> Dist:
    """Initialise DDP when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag:
        device = torch.device(device_flag)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def weights_checksum(model: nn.Module, params_only: bool = False) -> str:
    """sha256 over all parameters and buffers, or parameters only (DDP ranks must agree)."""
    h = hashlib.sha256()
    items = model.named_parameters() if params_only else model.state_dict().items()
    for name, t in sorted(items):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """HEAD of the repository this code runs from, '+dirty' when files differ."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) if head else None


def command_line(args: argparse.Namespace | None = None) -> str:
    """How this run was started (torchrun or python -m usam); args._argv when called from Python."""
    prefix = "torchrun --nproc_per_node {} -m usam".format(os.environ["WORLD_SIZE"]) \
        if "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ else "python -m usam"
    argv = getattr(args, "_argv", None)
    argv = ["train", *argv] if argv is not None else sys.argv[1:]
    return prefix + " " + shlex.join(argv)


class JsonlLog:
    """Append-only JSON-lines log (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, **record) -> None:
        """One event as one line."""
        if self.path is None:
            return
        record.setdefault("time", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with open(self.path, "a") as fh:
            fh.write(D.to_json(record) + "\n")


def batch_prompts(labels: torch.Tensor, kind: str, k: int, seed: int, step: int, rank: int,
                  args: argparse.Namespace) -> list | None:
    """Prompts of every sample of a batch from its (augmented) 224 labels, reproducibly."""
    if kind == "none":
        return None
    lab = labels.cpu().numpy()
    out = []
    for b in range(lab.shape[0]):
        rng = np.random.default_rng([seed, 17, step, rank, b])
        out.append(D.sample_prompts(lab[b], kind, k, rng, negatives=args.negatives,
                                    max_margin=args.box_margin, box_per_class=args.box_per_class))
    return out


# ----------------------------------------------------------------------------- validation


def val_modes(prompt: str, k: int) -> list[str]:
    """Evaluation prompt rows that select the model for a training prompt mode."""
    return {"none": ["none"], "points": [f"points{k}"], "box": ["box"],
            "box+points": [f"box+points{k}"], "mixed": ["none", "points3", "box"]}[prompt]


def prompts_for_row(label2d: np.ndarray, row: str):
    """Deterministic prompts of a validation row (box+pointsK = box merged with K points)."""
    if row.startswith("box+points"):
        k = int(row[len("box+points"):])
        return D.merge_prompts(D.eval_prompts(label2d, f"points{k}"), D.eval_prompts(label2d, "box"))
    return D.eval_prompts(label2d, row)


def predict_slices(model: nn.Module, images: torch.Tensor, prompts: list | None, device: torch.device,
                   amp: bool, batch_size: int = 16) -> np.ndarray:
    """Argmax labels at 224 of cached slices (N, 224, 224) float16, through usam.predictor's one inference path."""
    from usam.predictor import encode_images, predict_logits

    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].float()[:, None].expand(-1, 3, -1, -1).to(device)
        p = None if prompts is None else prompts[i:i + batch_size]
        logits = predict_logits(model, encode_images(model, x, amp), p, amp=amp)
        out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def dice_2class(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """Dice of classes 1 and 2 (nan when both empty)."""
    out = []
    for c in (1, 2):
        p, g = pred == c, gt == c
        s = p.sum() + g.sum()
        out.append(float("nan") if s == 0 else 2.0 * np.logical_and(p, g).sum() / s)
    return out


def validate(model: nn.Module, val: D.SliceSet, rows: list[str], device: torch.device, amp: bool) -> dict:
    """Per-case Dice at 224 on the cached validation slices for each prompt row; 'score' is
    the mean over rows of the per-class means (classes 1-2), the model-selection criterion."""
    model.eval()
    labels = val.labels.numpy()
    ids = np.asarray(val.case_ids)
    result: dict = {"rows": {}}
    for row in rows:
        prompts = None if row == "none" else [prompts_for_row(labels[i], row) for i in range(len(labels))]
        pred = predict_slices(model, val.images, prompts, device, amp)
        per_case = np.array([dice_2class(pred[ids == c], labels[ids == c]) for c in dict.fromkeys(ids)])
        with np.errstate(all="ignore"):
            per_class = np.nanmean(per_case, axis=0)
        result["rows"][row] = {"dice_normal": float(per_class[0]), "dice_tumor": float(per_class[1]),
                               "dice_mean": float(np.nanmean(per_class))}
    result["score"] = float(np.mean([r["dice_mean"] for r in result["rows"].values()]))
    model.train()
    return result


# ----------------------------------------------------------------------------- run


def build_model(args: argparse.Namespace):
    """A fresh U-SAM (seeded), optionally initialised from SAM or U-SAM weights."""
    from usam.model import build_usam, get_config

    torch.manual_seed(args.seed)
    if args.init:
        from usam.checkpoints import load_checkpoint

        model, meta = load_checkpoint(args.init)
        return model, model_config(model)
    try:
        config = get_config(args.config, lora_rank=args.lora_rank, **parse_overrides(args.override))
    except TypeError as exc:  # an unknown field name in --override
        raise UsamError(f"bad --override: {exc}") from None
    model = build_usam(config)
    if args.sam_weights:
        from usam.checkpoints import load_sam_weights

        report = load_sam_weights(model, args.sam_weights)
        print(f"SAM weights: {report}", file=sys.stderr)
    return model, config


def parse_overrides(items: list[str]) -> dict:
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


def model_config(model: nn.Module):
    """The UsamConfig a model was built from."""
    config = getattr(model, "config", None)
    if config is None:
        raise UsamError("model has no .config")
    return config


def metadata(args: argparse.Namespace, config, data_info: dict, state: dict, wall: float,
             val_result: dict | None) -> dict:
    """Checkpoint metadata with the full provenance of this run."""
    recipe = resolve_recipe(args)
    return {
        "config": config.to_dict(),
        "classes": {str(k): v for k, v in CLASSES.items()},
        "preprocessing": {"window": [float(args.window[0]), float(args.window[1])], "size": D.MODEL_SIZE,
                          "mean": NORM_MEAN, "std": NORM_STD, "label_resize": args.label_resize},
        "provenance": {"data": data_info, "commit": git_commit(),
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "command": command_line(args), "wall_time_s": round(wall, 1)},
        "weights_kind": args.weights_kind,
        "training": {"recipe": recipe, "recipe_name": args.recipe, "prompt": args.prompt, "points": args.points,
                     "negatives": args.negatives, "batch_size": args.batch_size, "world_size": state["world"],
                     "step": state["step"], "total_steps": state["total_steps"], "epoch": state["epoch"],
                     "loss": {"lambda_ce": args.lambda_ce, "lambda_dice": args.lambda_dice,
                              "dice_batch": args.dice_batch, "ce_weights": args.ce_weights,
                              "dice_weights": args.dice_weights},
                     "augment": not args.no_augment, "seed": args.seed, "poly_power": args.poly_power,
                     "selection": "best validation score" if val_result is not None else "last step",
                     "val": val_result},
    }


def save_state(path: Path, model: nn.Module, opt, sched, state: dict) -> None:
    """Everything a resume needs (atomic replace)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "state": state}, tmp)
    os.replace(tmp, path)


def _save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    from usam.checkpoints import save_checkpoint

    save_checkpoint(model, path, meta)  # atomic: writes a temporary file, then renames


def run(args: argparse.Namespace) -> int:
    """Train; returns 0. Only rank 0 writes files."""
    t_start = time.monotonic()
    dist = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "log.jsonl" if dist.main else None)
    fmt = D.detect_format(args.data) if args.format == "auto" else args.format
    window = (float(args.window[0]), float(args.window[1]))
    if not window[0] < window[1]:
        raise UsamError(f"--window must be LO < HI, got {window}")

    train_set = D.build_slice_set(args.data, "train", window, args.include_empty, args.label_resize, fmt,
                                  args.val_fraction, progress=dist.main and not args.no_progress)
    try:
        val_set = D.build_slice_set(args.data, "val", window, False, args.label_resize, fmt, args.val_fraction)
    except UsamError:
        val_set = None  # no validation split: the last step is exported, and the metadata says so
    if val_set is not None and args.val_stride > 1:
        keep = np.arange(0, len(val_set), args.val_stride)
        val_set = D.SliceSet(val_set.images[keep], val_set.labels[keep], [val_set.case_ids[i] for i in keep],
                             val_set.z[keep])
    data_info = D.describe_data(args.data, fmt, {"train": train_set, **({"val": val_set} if val_set else {})})

    model, config = build_model(args)
    model.to(dist.device).train()
    ddp_model: nn.Module = model
    if dist.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=True)  # prompt-encoder parts are unused in 'none' batches

    recipe = resolve_recipe(args)
    opt = make_optimizer(model, recipe)
    fill = (0.0 - NORM_MEAN) / NORM_STD  # the normalized value of the window's lower end
    dataset = D.TrainSlices(train_set, not args.no_augment, args.seed, args.p_rot90, args.p_rotate,
                            args.max_rotation, fill)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                                  shuffle=True, seed=args.seed, drop_last=True)
    per_rank = len(sampler)
    steps_per_epoch = per_rank // args.batch_size
    if steps_per_epoch == 0:
        raise UsamError(f"{len(dataset)} training slices are fewer than one batch of {args.batch_size} per process")
    total_steps = args.steps if args.steps else args.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    sched = make_scheduler(opt, total_steps, args.poly_power, args.warmup_steps)
    loss_fn = DiceCELoss(args.lambda_ce, args.lambda_dice, True, args.dice_batch, args.ce_weights, args.dice_weights)
    amp = dist.device.type == "cuda" and args.amp != "off"

    state = {"step": 0, "epoch": 0, "total_steps": total_steps, "best": -1.0, "best_val": None,
             "wall_before": 0.0, "world": dist.world}
    state_path = out / STATE_FILE
    if args.resume:
        if not state_path.exists():
            raise UsamError(f"--resume: no {STATE_FILE} in {out}")
        saved = torch.load(state_path, map_location=dist.device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if saved["state"]["total_steps"] != total_steps:
            raise UsamError(f"--resume: the saved run has {saved['state']['total_steps']} total steps, "
                            f"these flags give {total_steps}")
        state.update(saved["state"])
        state["world"] = dist.world
    if dist.main:
        log.write(event="start", command=command_line(args), resume=bool(args.resume), step=state["step"],
                  total_steps=total_steps, steps_per_epoch=steps_per_epoch, train_slices=len(train_set),
                  val_slices=len(val_set) if val_set else 0, world=dist.world, device=str(dist.device),
                  recipe=recipe, cached_mb=round(train_set.nbytes() / 2**20, 1))

    def wall() -> float:
        return state["wall_before"] + time.monotonic() - t_start

    def checkpoint_all(val_result: dict | None = None) -> None:
        save_state(state_path, model, opt, sched, {**state, "wall_before": wall()})
        _save_checkpoint(model, out / "last.safetensors", metadata(args, config, data_info, state, wall(), val_result))

    progress = None
    if dist.main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
    rows = val_modes(args.prompt, args.points)
    stop_after = args.stop_after
    steps_this_run = 0
    while state["step"] < total_steps:
        epoch = state["step"] // steps_per_epoch
        state["epoch"] = epoch
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(iter(sampler))
        batches = [order[i:i + args.batch_size] for i in range(0, steps_per_epoch * args.batch_size, args.batch_size)]
        skip = state["step"] - epoch * steps_per_epoch  # resumed inside an epoch
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[skip:], num_workers=args.workers)
        for images, labels in loader:
            step = state["step"]
            # the prompt kind is shared by all ranks (same step seed) so DDP graphs match
            kind, k = D.choose_batch_mode(args.prompt, args.points, np.random.default_rng([args.seed, 5, step]))
            prompts = batch_prompts(labels, kind, k, args.seed, step, dist.rank, args)
            torch.manual_seed(args.seed + step)  # any stochastic layer: reproducible across resume
            images, labels = images.to(dist.device, non_blocking=True), labels.to(dist.device, non_blocking=True)
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = ddp_model(images, prompts)
            loss = loss_fn(logits.float(), labels)
            if not torch.isfinite(loss):
                raise UsamError(f"loss became {loss.item()} at step {step}; lower the learning rates")
            lrs = {g["name"]: g["lr"] for g in opt.param_groups}  # the rates this step uses
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state["step"] = step + 1
            steps_this_run += 1
            if dist.main:
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss.item():.4f}", prompt=f"{kind}{k or ''}")
                if step % args.log_every == 0 or state["step"] == total_steps:
                    log.write(event="step", step=step, epoch=epoch, loss=round(loss.item(), 6),
                              lr=lrs, prompt=kind, k=k,
                              wall_s=round(wall(), 1))
                if args.save_every and state["step"] % args.save_every == 0:
                    checkpoint_all()
            if stop_after is not None and steps_this_run >= stop_after:
                if dist.main:
                    checkpoint_all()
                if progress is not None:
                    progress.close()
                return 0
            if state["step"] >= total_steps:
                break
        end_of_epoch = state["step"] % steps_per_epoch == 0 or state["step"] >= total_steps
        do_val = val_set is not None and end_of_epoch and (
            state["step"] >= total_steps or (args.val_every > 0 and (epoch + 1) % args.val_every == 0))
        if dist.main:
            val_result = None
            if do_val:
                val_result = validate(model, val_set, rows, dist.device, amp)
                val_result["step"] = state["step"]
                log.write(event="val", epoch=epoch, **val_result)
                if val_result["score"] > state["best"]:
                    state["best"], state["best_val"] = val_result["score"], val_result
                    _save_checkpoint(model, out / "best.safetensors",
                                     metadata(args, config, data_info, state, wall(), val_result))
            checkpoint_all(val_result)
        if dist.world > 1:
            torch.distributed.barrier()
    if progress is not None:
        progress.close()
    if dist.main:
        selected = out / ("best.safetensors" if state["best_val"] is not None else "last.safetensors")
        if args.export:
            # re-save so that the exported file's wall time covers the whole run
            from usam.checkpoints import load_checkpoint

            best_model, _ = load_checkpoint(selected)
            export = Path(args.export)
            export.parent.mkdir(parents=True, exist_ok=True)
            _save_checkpoint(best_model, export, metadata(args, config, data_info, state, wall(), state["best_val"]))
        log.write(event="end", step=state["step"], wall_s=round(wall(), 1), selected=str(selected),
                  best_val=state["best_val"], export=args.export)
        print(json.dumps({"selected": str(selected), "best_val_score": state["best"] if state["best_val"] else None,
                          "steps": state["step"], "wall_s": round(wall(), 1)}))
    if dist.world > 1:
        # BatchNorm running stats are updated locally by each rank's last forward pass; take rank
        # 0's (the saved ones) so that every rank ends with the model that was written
        for buf in model.buffers():
            torch.distributed.broadcast(buf, 0)
    if args.rank_checksums:
        (out / f"weights_rank{dist.rank}.sha256").write_text(
            weights_checksum(model, params_only=True) + "\n" + weights_checksum(model) + "\n")
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
