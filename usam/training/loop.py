"""The training run: data, model and optimiser from a TrainConfig, the step loop, validation
after each epoch, the run folder's checkpoints and the export of the selected model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from usam import data as D
from usam.errors import UsamError
from usam.losses import DiceCELoss
from usam.preprocess import MEAN as NORM_MEAN, STD as NORM_STD
from usam.training import ddp
from usam.training.augment import TrainSlices
from usam.training.config import TrainConfig
from usam.training.interaction import SimulatedUser, draw_rounds, interactive_loss
from usam.training.model_init import build_model
from usam.training.optim import make_optimizer, make_scheduler
from usam.training.outputs import (LOG_FILE, STATE_FILE, JsonlLog, export_checkpoint, load_state, save_checkpoint,
                                   save_state)
from usam.training.prompting import PromptSampling, batch_kind, batch_prompts
from usam.training.provenance import command_line, metadata, weights_checksum
from usam.training.step import batch_loss, optimizer_step
from usam.training.validation import val_modes, validate


def train(cfg: TrainConfig) -> int:
    """Train as `cfg` says; returns 0. Under torchrun every rank calls this; only rank 0 writes."""
    t_start = time.monotonic()
    dist = ddp.setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return Trainer(cfg, dist, t_start).fit()


def every_nth(slices: D.SliceSet, stride: int) -> D.SliceSet:
    """Every stride-th slice of a cached set (validation speed)."""
    if stride <= 1:
        return slices
    keep = np.arange(0, len(slices), stride)
    return D.SliceSet(slices.images[keep], slices.labels[keep], [slices.case_ids[i] for i in keep], slices.z[keep])


def load_data(cfg: TrainConfig, progress: bool) -> tuple[D.SliceSet, D.SliceSet | None, dict]:
    """Cached train and validation slices (None: the cohort has no validation split) and the
    data's provenance."""
    fmt = D.detect_format(cfg.data) if cfg.format == "auto" else cfg.format
    train_set = D.build_slice_set(cfg.data, "train", cfg.window, cfg.include_empty, cfg.label_resize, fmt,
                                  cfg.val_fraction, progress=progress)
    try:
        val_set = D.build_slice_set(cfg.data, "val", cfg.window, False, cfg.label_resize, fmt, cfg.val_fraction)
    except UsamError:
        val_set = None  # no validation split: the last step is exported, and the metadata says so
    if val_set is not None:
        val_set = every_nth(val_set, cfg.val_stride)
    data_info = D.describe_data(cfg.data, fmt, {"train": train_set, **({"val": val_set} if val_set else {})})
    return train_set, val_set, data_info


class Trainer:
    """One training run of one process: everything it holds, and the steps of the run."""

    def __init__(self, cfg: TrainConfig, dist: ddp.Dist, t_start: float) -> None:
        self.cfg, self.dist, self.t_start = cfg, dist, t_start
        self.out = cfg.out_dir
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log = JsonlLog(self.out / LOG_FILE if dist.main else None)
        self.train_set, self.val_set, self.data_info = load_data(cfg, dist.main and cfg.progress)

        self.model, self.model_config = build_model(cfg.preset, cfg.overrides, cfg.lora_rank, cfg.seed,
                                                    cfg.sam_weights, cfg.init)
        self.model.to(dist.device).train()
        # with simulated users DDP wraps the whole interaction (one forward per step), else the model
        self.ddp_model: nn.Module = ddp.wrap(SimulatedUser(self.model) if cfg.interactive_rounds else self.model, dist)
        self.recipe = cfg.optimizer_settings()
        self.opt = make_optimizer(self.model, self.recipe)

        fill = (0.0 - NORM_MEAN) / NORM_STD  # the normalized value of the window's lower end
        self.dataset = TrainSlices(self.train_set, cfg.augment, cfg.seed, cfg.p_rot90, cfg.p_rotate,
                                   cfg.max_rotation, fill)
        self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=dist.world, rank=dist.rank,
                                                           shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UsamError(f"{len(self.dataset)} training slices are fewer than one batch of "
                            f"{cfg.batch_size} per process")
        self.total_steps = cfg.steps if cfg.steps else cfg.epochs * self.steps_per_epoch
        self.sched = make_scheduler(self.opt, self.total_steps, cfg.poly_power, cfg.warmup_steps)
        self.loss_fn = DiceCELoss(cfg.lambda_ce, cfg.lambda_dice, True, cfg.dice_batch, cfg.ce_weights,
                                  cfg.dice_weights)
        self.amp = dist.device.type == "cuda" and cfg.amp != "off"
        self.sampling = PromptSampling(cfg.prompt, cfg.points, cfg.negatives, cfg.box_margin, cfg.box_per_class)
        self.state = {"step": 0, "epoch": 0, "total_steps": self.total_steps, "best": -1.0, "best_val": None,
                      "wall_before": 0.0, "world": dist.world}
        self.progress = None

    # ------------------------------------------------------------------ the run

    def fit(self) -> int:
        """Resume if asked, train to the last step, validate, save and export; returns 0."""
        cfg, dist, state = self.cfg, self.dist, self.state
        if cfg.resume:
            state.update(load_state(self.out / STATE_FILE, self.model, self.opt, self.sched, dist.device,
                                    self.total_steps))
            state["world"] = dist.world
        if dist.main:
            self.log.write(event="start", command=command_line(cfg.argv), resume=bool(cfg.resume),
                           step=state["step"], total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                           train_slices=len(self.train_set), val_slices=len(self.val_set) if self.val_set else 0,
                           world=dist.world, device=str(dist.device), recipe=self.recipe,
                           cached_mb=round(self.train_set.nbytes() / 2**20, 1))
        if dist.main and cfg.progress:
            from tqdm import tqdm

            self.progress = tqdm(total=self.total_steps, initial=state["step"], desc="train", unit="step",
                                 dynamic_ncols=True)
        steps_this_run = 0
        while state["step"] < self.total_steps:
            epoch = state["step"] // self.steps_per_epoch
            state["epoch"] = epoch
            for images, labels in self.epoch_batches(epoch):
                self.train_step(images, labels, epoch)
                steps_this_run += 1
                if cfg.stop_after is not None and steps_this_run >= cfg.stop_after:
                    return self.stop()
                if state["step"] >= self.total_steps:
                    break
            self.end_epoch(epoch)
            ddp.barrier(dist)
        if self.progress is not None:
            self.progress.close()
        self.finish()
        return 0

    def epoch_batches(self, epoch: int) -> torch.utils.data.DataLoader:
        """The batches of an epoch this rank has still to train on (all, or the rest after a resume)."""
        bs = self.cfg.batch_size
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        order = list(iter(self.sampler))
        batches = [order[i:i + bs] for i in range(0, self.steps_per_epoch * bs, bs)]
        skip = self.state["step"] - epoch * self.steps_per_epoch  # resumed inside an epoch
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches[skip:],
                                           num_workers=self.cfg.workers)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> float:
        """One optimizer step on one batch; logs it and saves the state when due. Returns the loss."""
        cfg, dist, state = self.cfg, self.dist, self.state
        step = state["step"]
        kind, k = batch_kind(self.sampling, cfg.seed, step)
        prompts = batch_prompts(labels, kind, k, cfg.seed, step, dist.rank, self.sampling)
        torch.manual_seed(cfg.seed + step)  # any stochastic layer: reproducible across resume
        images, labels = images.to(dist.device, non_blocking=True), labels.to(dist.device, non_blocking=True)
        rounds = draw_rounds(cfg.interactive_rounds, cfg.seed, step)
        if cfg.interactive_rounds:
            loss = interactive_loss(self.ddp_model, images, labels, prompts, self.loss_fn, self.amp, step, rounds)
        else:
            loss = batch_loss(self.ddp_model, images, labels, prompts, self.loss_fn, self.amp, step)
        lrs = optimizer_step(self.opt, self.sched, loss)
        state["step"] = step + 1
        value = loss.item()
        if dist.main:
            if self.progress is not None:
                self.progress.update(1)
                self.progress.set_postfix(loss=f"{value:.4f}", prompt=f"{kind}{k or ''}")
            if step % cfg.log_every == 0 or state["step"] == self.total_steps:
                self.log.write(event="step", step=step, epoch=epoch, loss=round(value, 6), lr=lrs, prompt=kind,
                               k=k, rounds=rounds, wall_s=round(self.wall(), 1))
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                self.checkpoint_all()
        return value

    def end_epoch(self, epoch: int) -> None:
        """Validate when due (keeping the best model), then save the resumable state (rank 0)."""
        cfg, state = self.cfg, self.state
        end_of_epoch = state["step"] % self.steps_per_epoch == 0 or state["step"] >= self.total_steps
        do_val = self.val_set is not None and end_of_epoch and (
            state["step"] >= self.total_steps or (cfg.val_every > 0 and (epoch + 1) % cfg.val_every == 0))
        if not self.dist.main:
            return
        val_result = None
        if do_val:
            rows = val_modes(cfg.prompt, cfg.points, cfg.interactive_rounds > 0)
            val_result = validate(self.model, self.val_set, rows, self.dist.device, self.amp)
            val_result["step"] = state["step"]
            self.log.write(event="val", epoch=epoch, **val_result)
            if val_result["score"] > state["best"]:
                state["best"], state["best_val"] = val_result["score"], val_result
                save_checkpoint(self.model, self.out / "best.safetensors", self.metadata(val_result))
        self.checkpoint_all(val_result)

    def stop(self) -> int:
        """End early as a crash would, with the state saved (tests of resume); returns 0."""
        if self.dist.main:
            self.checkpoint_all()
        if self.progress is not None:
            self.progress.close()
        return 0

    def finish(self) -> None:
        """Export the selected model, log the end and print the summary; then the ranks agree."""
        cfg, dist, state = self.cfg, self.dist, self.state
        if dist.main:
            selected = self.out / ("best.safetensors" if state["best_val"] is not None else "last.safetensors")
            if cfg.export:
                # re-saved so that the exported file's wall time covers the whole run
                export_checkpoint(selected, Path(cfg.export), self.metadata(state["best_val"]))
            self.log.write(event="end", step=state["step"], wall_s=round(self.wall(), 1), selected=str(selected),
                           best_val=state["best_val"], export=cfg.export)
            print(json.dumps({"selected": str(selected),
                              "best_val_score": state["best"] if state["best_val"] else None,
                              "steps": state["step"], "wall_s": round(self.wall(), 1)}))
        ddp.share_rank0_buffers(self.model, dist)
        if cfg.rank_checksums:
            (self.out / f"weights_rank{dist.rank}.sha256").write_text(
                weights_checksum(self.model, params_only=True) + "\n" + weights_checksum(self.model) + "\n")
        ddp.teardown(dist)

    # ------------------------------------------------------------------ helpers

    def wall(self) -> float:
        """Training wall time in seconds, across resumes."""
        return self.state["wall_before"] + time.monotonic() - self.t_start

    def metadata(self, val_result: dict | None) -> dict:
        """Checkpoint metadata of the run as it stands."""
        return metadata(self.cfg, self.model_config, self.data_info, self.state, self.wall(), val_result)

    def checkpoint_all(self, val_result: dict | None = None) -> None:
        """The resumable state and last.safetensors."""
        save_state(self.out / STATE_FILE, self.model, self.opt, self.sched, {**self.state, "wall_before": self.wall()})
        save_checkpoint(self.model, self.out / "last.safetensors", self.metadata(val_result))

