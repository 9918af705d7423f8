"""`chromacast train`: train the colorization network on sequences, with resumable checkpoints."""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.colour import AB_SCALE, DEFAULT_TEMPERATURE, gamut_bins
from engines.network import AB_STRIDE, MEMORY_MODULES, ColorNet
from training.data import SequenceSampler, capped_shares, image_sources, load_clips, load_images
from training.from_onnx import checkpoint_from_onnx
from training.losses import (REBALANCE_LAMBDA, ab_prior, rebalance_weights, rebalanced_ce,
                             soft_encode, temporal_loss)

log = logging.getLogger("chromacast.train")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # one folder or several; a folder of folders (train/scenes) is one source per subfolder
    images: Path | list[Path] = Path("../shared/data/train/images")
    # no source (an image folder, or the real clips) above this share of the samples
    source_cap: float = Field(1.0, gt=0, le=1)
    videos: Path = Path("../shared/data/train/videos")
    out: Path = Path("runs/default")
    image_limit: int | None = None
    cache_short_side: int = Field(160, ge=32)
    crop: int = Field(128, ge=32, multiple_of=32)
    sequence_length: int = Field(3, ge=1)
    video_fraction: float = Field(0.25, ge=0, le=1)
    batch_size: int = Field(8, ge=1)
    steps: int = Field(8000, ge=1)
    lr: float = Field(6e-4, gt=0)
    weight_decay: float = 1e-4
    temporal_weight: float = Field(0.5, ge=0)
    # class rebalancing strength λ: weights ∝ ((1-λ)p + λ/Q)^-1 (0 = none, 1 = uniform over bins)
    rebalance_lambda: float = Field(REBALANCE_LAMBDA, ge=0, le=1)
    # a Huber term on the decoded (annealed-mean) ab in units of 10 Lab: pulls what is shown,
    # not only the bin distribution, toward the ground truth
    ab_loss_weight: float = Field(0.0, ge=0)
    # colour prior for the rebalancing: re-estimated on this run's data, or the init_from model's
    prior_from: Literal["data", "init_from"] = "init_from"
    # share of hinted samples whose hints are boxes (8 px to a third of the crop) rather than
    # patches of 1-5 px: what a user drawing a box gives
    hint_box_fraction: float = Field(0.0, ge=0, le=1)
    # the previous frame's colours are already on screen: the temporal loss moves only the
    # current frame toward them, which teaches the state to carry them
    temporal_previous_fixed: bool = True
    hint_probability: float = Field(0.5, ge=0, le=1)
    state_channels: int = Field(32, ge=1)
    # a second recurrent memory feeding MemoryCorrection (engines/network.py); a stream's first
    # frame is untouched by it, so it can be added to a trained model and fine-tuned alone
    memory_channels: int = Field(0, ge=0)
    memory_at_quarter: bool = False  # the memory also corrects the 1/4 features before the head
    width: int = Field(64, ge=8)
    temperature: float = DEFAULT_TEMPERATURE
    pretrained: bool = True
    freeze_blocks: int = Field(0, ge=0)  # keep the stem and the first N encoder blocks at ImageNet values
    freeze_from: int = Field(0, ge=0)  # ...from this step on, so the stem's hint channels learn first
    encoder_activation: Literal["relu6", "swish"] = "relu6"  # relu6: as EfficientNet-Lite was pretrained
    threads: int | None = None
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    # weights (and colour prior) to start from when OUT has no checkpoint: a training checkpoint,
    # or a chromacast ONNX export made with --prior-correction (such as the shipped default)
    init_from: Path | None = None
    # train only these top-level modules (e.g. [gru, fuse16, dec8]); the rest stay as loaded and
    # every batch norm keeps its statistics, as a fine-tune of a folded ONNX export needs
    train_only: list[str] | None = None
    # weight of a loss that keeps each sequence's first frame (zero state, what a still image or
    # a stream's first frame gets) at the starting weights' colours: KL to their bin distribution.
    # Lets a fine-tune make the state steadier without changing per-frame colours.
    keep_first_frame: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _memory_at_quarter_needs_memory(self) -> "TrainConfig":
        if self.memory_at_quarter and not self.memory_channels:
            raise ValueError("memory_at_quarter needs memory_channels > 0")
        return self


def load_config(path: Path | None, overrides: dict | None = None) -> TrainConfig:
    raw = (yaml.safe_load(path.read_text()) if path else None) or {}  # an empty file means all defaults
    raw.update(overrides or {})
    return TrainConfig(**raw)


def simulate_hints(ab: torch.Tensor, rng: np.random.Generator, probability: float,
                   box_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A few random patches carrying their mean ground-truth ab (SIGGRAPH17-style), on some samples;
    on `box_fraction` of those, one to three boxes instead, as a user's box hints are."""
    b, _, h, w = ab.shape
    hint = torch.zeros(b, 2, h, w)
    mask = torch.zeros(b, 1, h, w)
    for i in range(b):
        if rng.random() >= probability:
            continue
        boxes = rng.random() < box_fraction
        for _ in range(int(rng.integers(1, 4)) if boxes else min(int(rng.geometric(0.2)), 10)):
            if boxes:
                bh, bw = (int(v) for v in rng.integers(8, max(9, min(h, w) // 3), 2))
            else:
                bh = bw = int(rng.integers(1, 6))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            hint[i, :, y:y + bh, x:x + bw] = ab[i, :, y:y + bh, x:x + bw].mean((1, 2), keepdim=True)
            mask[i, :, y:y + bh, x:x + bw] = 1
    return hint / AB_SCALE, mask


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: TrainConfig) -> Path:
    """Train until cfg.steps (or cfg.max_minutes); returns the path of the last checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = cfg.out / "checkpoint.pt"

    t0 = time.time()
    folders = cfg.images if isinstance(cfg.images, list) else [cfg.images]
    by_source = {name: [img for f in paths for img in load_images(f, cfg.cache_short_side, cfg.image_limit)]
                 for name, paths in image_sources(folders).items()}
    by_source = {k: v for k, v in by_source.items() if v}
    if not by_source:
        raise SystemExit(f"chromacast train: no colour images found in {', '.join(map(str, folders))}")
    clips = load_clips(cfg.videos, cfg.cache_short_side)
    video_fraction = min(cfg.video_fraction, cfg.source_cap) if clips else 0.0
    shares = capped_shares({k: len(v) for k, v in by_source.items()}, cfg.source_cap, video_fraction)
    log.info("data: %d images from %d sources, %d clips (%.0fs); share of samples: %s%s",
             sum(map(len, by_source.values())), len(by_source), len(clips), time.time() - t0,
             ", ".join(f"{k} {v:.1%}" for k, v in shares.items()),
             f", clips {video_fraction:.1%}" if clips else "")

    bins = gamut_bins()
    rng = np.random.default_rng(cfg.seed)
    sampler = SequenceSampler(by_source, clips, cfg.crop, cfg.sequence_length, video_fraction, cfg.seed,
                              source_shares=shares)
    prior_batch = sampler.batch(256)
    ab_samples = prior_batch.lab[:, :, 1:, ::4, ::4].transpose(0, 1, 3, 4, 2).reshape(-1, 2)
    prior = ab_prior(ab_samples, bins)
    weights = torch.as_tensor(rebalance_weights(prior, cfg.rebalance_lambda), device=dev)

    model = ColorNet(bins, cfg.state_channels, cfg.pretrained, cfg.temperature, cfg.width,
                     cfg.encoder_activation, cfg.memory_channels, cfg.memory_at_quarter).to(dev)
    frozen = frozen_modules(model, cfg.freeze_blocks)
    if cfg.train_only is not None:
        unknown = sorted(set(cfg.train_only) - {n for n, _ in model.named_children()})
        if unknown:
            raise SystemExit(f"chromacast train: train_only names no module {', '.join(unknown)}")
        frozen = [m for n, m in model.named_children() if n not in cfg.train_only]
    # every parameter stays in the optimizer: frozen ones get no gradient, which AdamW skips
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed_before = 0, 0.0
    resuming = ckpt_path.exists()
    start_from = ckpt_path if resuming else cfg.init_from  # this run's checkpoint, else other weights
    if start_from:
        ck = _load_weights(start_from, dev)
        try:
            added = load_weights_into(model, ck["model"], allow_new_memory=not resuming)
        except RuntimeError:
            if resuming:
                raise  # the CLI names the run folder for this case
            raise SystemExit(f"chromacast train: the weights in {start_from} do not fit this config's "
                             "network (state_channels, memory_channels, width?)") from None
        if added:
            log.info("%s start fresh (not in %s)", ", ".join(added), start_from)
        if resuming or cfg.prior_from == "init_from":
            prior = ck["prior"]
        else:
            log.info("colour prior re-estimated on this run's data")
        weights = torch.as_tensor(rebalance_weights(prior, cfg.rebalance_lambda), device=dev)
    # a model read back from an ONNX export has its batch norms folded (identity statistics):
    # batch statistics would change what it computes, so they stay as they are
    folded = cfg.init_from is not None and cfg.init_from.suffix == ".onnx" and cfg.train_only is None
    if resuming:
        try:
            opt.load_state_dict(ck["optimizer"])
        except ValueError:  # a different set of trainable parameters (freeze_blocks changed)
            log.info("optimizer state not reused: the trainable parameters changed")
        step = ck["step"]
        elapsed_before = ck.get("elapsed_s", 0.0)
        sampler.rng = np.random.default_rng(cfg.seed + step)
        rng = np.random.default_rng(cfg.seed + step + 1)
        log.info("resumed from %s at step %d", ckpt_path, step)
    elif start_from:
        log.info("starting from the weights of %s (step %d there)", start_from, ck["step"])

    teacher = None
    if cfg.keep_first_frame > 0:
        if not cfg.init_from:
            raise SystemExit("chromacast train: keep_first_frame needs init_from (the colours to keep)")
        teacher = copy.deepcopy(model)  # the init_from weights, also when this run resumes
        load_weights_into(teacher, _load_weights(cfg.init_from, dev)["model"], allow_new_memory=True)
        teacher.eval().requires_grad_(False)

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "prior": prior,
                    "elapsed_s": elapsed_before + time.time() - started,
                    "config": json.loads(cfg.model_dump_json()), "bins": bins}, tmp)
        tmp.replace(ckpt_path)

    bins_t = model.bins
    started = time.time()
    model.train()
    running, first_step = {}, step
    while step < cfg.steps:
        if step == max(cfg.freeze_from, first_step) and (frozen or cfg.train_only is not None):
            for m in frozen:
                m.requires_grad_(False)
                m.eval()  # frozen layers keep their batch-norm statistics too
            if cfg.train_only is not None:
                keep_batch_norm_statistics(model)
                log.info("training only %s from step %d", ", ".join(cfg.train_only), step)
            else:
                log.info("stem and %d encoder blocks frozen from step %d", cfg.freeze_blocks, step)
        if folded and step == first_step:
            keep_batch_norm_statistics(model)
            log.info("batch norms keep the statistics folded into %s", cfg.init_from)
        elapsed = elapsed_before + time.time() - started
        if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
            log.info("time budget reached at step %d", step)
            break
        # cosine decay over whichever budget runs out first, so a slow (shared) machine
        # still ends at a low learning rate
        progress = step / cfg.steps
        if cfg.max_minutes:
            progress = max(progress, elapsed / (cfg.max_minutes * 60))
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sampler.batch(cfg.batch_size)
        lab = torch.as_tensor(batch.lab, device=dev)
        grid = torch.as_tensor(batch.grid, device=dev)
        trust = torch.as_tensor(batch.trust, device=dev)
        b, t_len, _, s, _ = lab.shape
        state = model.zero_state(b, s, s).to(dev)
        hint, mask = simulate_hints(lab[:, 0, 1:].cpu(), rng, cfg.hint_probability, cfg.hint_box_fraction)
        hint, mask = hint.to(dev), mask.to(dev)
        ce_total, tl_total, keep_total, ab_total, prev_ab = 0.0, 0.0, 0.0, 0.0, None
        for t in range(t_len):
            L = (lab[:, t, :1] - 50) / 50
            if t > 0:
                hint, mask = torch.zeros_like(hint), torch.zeros_like(mask)
            logits, state = model.logits(L, hint, mask, state)
            if t == 0 and teacher is not None:
                with torch.no_grad():
                    kept = torch.softmax(teacher.logits(L, hint, mask, torch.zeros_like(state))[0], 1)
                kl = (kept * (kept.clamp(min=1e-8).log() - torch.log_softmax(logits, 1))).sum(1).mean()
                keep_total = cfg.keep_first_frame * kl
            gt = torch.nn.functional.avg_pool2d(lab[:, t, 1:], AB_STRIDE)
            target, nearest = soft_encode(gt, bins_t)
            ce_total = ce_total + rebalanced_ce(logits, target, nearest, weights)
            ab = model.decode(logits)
            if cfg.ab_loss_weight > 0:
                ab_total = ab_total + F.smooth_l1_loss(ab / 10.0, gt / 10.0)
            if prev_ab is not None and cfg.temporal_weight > 0:
                tl_total = tl_total + temporal_loss(ab, prev_ab, grid[:, t], trust[:, t])
            prev_ab = ab.detach() if cfg.temporal_previous_fixed else ab
        loss = (ce_total + cfg.temporal_weight * tl_total + cfg.ab_loss_weight * ab_total + keep_total) / t_len
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        terms = [("loss", loss), ("ce", ce_total / t_len), ("temporal", tl_total / t_len)]
        if cfg.ab_loss_weight > 0:
            terms.append(("ab", ab_total / t_len))
        if teacher is not None:
            terms.append(("keep", keep_total / cfg.keep_first_frame))
        for k, v in terms:
            running[k] = running.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        if step % cfg.log_every == 0:
            rate = (step - first_step) / max(time.time() - started, 1e-6)
            log.info("step %d/%d lr %.2e %s (%.2f steps/s)", step, cfg.steps, lr,
                     " ".join(f"{k} {v / cfg.log_every:.3f}" for k, v in running.items()), rate)
            running = {}
        if step % cfg.checkpoint_every == 0:
            save()
    save()
    log.info("checkpoint %s at step %d", ckpt_path, step)
    return ckpt_path


def frozen_modules(model: ColorNet, blocks: int) -> list[torch.nn.Module]:
    """The high-resolution start of the encoder, whose backward pass costs most on a CPU."""
    if blocks <= 0:
        return []
    return [model.stem, *model.blocks[:blocks]]


def load_weights_into(model: ColorNet, state_dict: dict, allow_new_memory: bool) -> list[str]:
    """Load a state dict; with allow_new_memory, weights of a model without the memory modules
    may leave those at their initial values (which keep its colours). Returns the modules left."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    added = sorted({k.split(".")[0] for k in missing})
    if unexpected or (missing and not (allow_new_memory and set(added) <= set(MEMORY_MODULES))):
        raise RuntimeError(f"weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return added


def _load_weights(path: Path, dev: torch.device) -> dict:
    if path.suffix == ".onnx":
        return checkpoint_from_onnx(path)
    return torch.load(path, map_location=dev, weights_only=False)


def keep_batch_norm_statistics(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def load_checkpoint(path: Path, device: str = "cpu") -> ColorNet:
    """Model from a training checkpoint (no ImageNet download or file needed)."""
    ck = torch.load(path, map_location=device, weights_only=False)
    c = ck["config"]
    model = ColorNet(ck["bins"], c["state_channels"], pretrained=False, temperature=c["temperature"],
                     width=c["width"], encoder_activation=c.get("encoder_activation", "swish"),
                     memory_channels=c.get("memory_channels", 0),
                     memory_at_quarter=c.get("memory_at_quarter", False))
    model.load_state_dict(ck["model"])
    return model.eval()
