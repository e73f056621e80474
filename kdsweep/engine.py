"""The one training loop every stage uses: AdamW, cosine/constant lr, KD from cached or online teacher logits,
channels_last everywhere, bf16 autocast on CUDA, per-epoch metrics, atomic per-epoch checkpoints and exact resume."""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import storage
from .checkpoint import load_checkpoint, save_checkpoint
from .data import ViewSpec, augment_params, make_views, train_batches, train_views
from .dataset import Dataset
from .errors import CheckpointError, DivergedError
from .losses import kd_loss
from .measure import accuracy

# A healthy run never climbs 1000x above its first batch loss; AdamW at an absurd lr (1e4) blows the loss up to
# ~1e15 while staying finite, so non-finite alone would not catch it.
DIVERGENCE_FACTOR = 1e3


@dataclass(frozen=True)
class TrainSpec:
    """What one training run does; KD terms are ignored when alpha is 0."""

    epochs: int
    lr: float
    weight_decay: float = 1e-4
    batch_size: int = 128
    schedule: str = "cosine"
    seed: int = 0
    temperature: float = 1.0
    alpha: float = 0.0
    label_smoothing: float = 0.0
    epoch_offset: int = 0  # index of the first epoch in the replayable view stream (recovery follows the student)


def pick_device(prefer: str = "auto") -> torch.device:
    """`cuda` when asked for or available under `auto`, else `cpu`."""
    if prefer in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _lr_at(spec: TrainSpec, step: int, total: int) -> float:
    if spec.schedule == "constant" or total <= 1:
        return spec.lr
    return spec.lr * 0.5 * (1 + math.cos(math.pi * step / total))


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last on every device: measured on 1 CPU thread, MobileNetV3-Small train steps are 1.85x faster at
    # 32 px and 1.29x at 224 px (benchmarks/RESULTS.md); on CUDA it is what the tensor-core kernels expect
    return model.to(device, memory_format=torch.channels_last)


def train(model: nn.Module, data: Dataset, view: ViewSpec, spec: TrainSpec, device: torch.device, *,
          teacher: nn.Module | None = None, teacher_logits: torch.Tensor | None = None,
          checkpoint: str | Path | None = None, on_epoch: Callable[[dict], None] | None = None,
          evaluate: bool = True, tag: dict | None = None) -> list[dict]:
    """Train `model` for `spec.epochs`, resuming from `checkpoint` if it exists; returns per-epoch metrics.

    With alpha > 0 the soft targets come from `teacher_logits[epoch_offset + epoch, index]` (precomputed, see
    `teacher_logits`) or, if only `teacher` is given, from an eval-mode teacher forward on the same views.
    `tag` is merged into every epoch row (e.g. which run of a retried trial trained that epoch). A corrupt
    checkpoint is reported, set aside as `<name>.corrupt`, and training starts over. With mixup/cutmix the hard
    labels are mixed per sample (`kd_loss`), and `train_acc` counts a hit against the label of the image that
    dominates the mix: the sample's own where lam >= 0.5, else its partner's.
    """
    kd = spec.alpha > 0
    if kd and teacher is None and teacher_logits is None:
        raise ValueError("alpha > 0 needs teacher_logits or a teacher")
    _prepare(model, device)
    if kd and teacher_logits is None:
        _prepare(teacher, device).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    n = len(data.train_y)
    history: list[dict] = []
    start = 0
    ckpt = os.fspath(checkpoint) if checkpoint else None
    if ckpt and storage.exists(ckpt):
        try:
            state = load_checkpoint(ckpt, map_location=device)
            saved_history, saved_epoch = list(state["history"]), int(state["epoch"])
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            history, start = saved_history, saved_epoch
        except (CheckpointError, KeyError, RuntimeError) as exc:
            warnings.warn(f"{exc}; ignoring it and training from scratch", stacklevel=2)
            storage.move(ckpt, ckpt + ".corrupt")
    steps_per_epoch = len(train_batches(n, spec.batch_size, spec.seed, 0))
    total = spec.epochs * steps_per_epoch
    amp = device.type == "cuda"
    x_all = data.train_x.to(device) if device.type == "cuda" else data.train_x  # uint8 images fit on a GPU
    y_all = data.train_y.to(device)
    first_loss: float | None = None
    for epoch in range(start, spec.epochs):
        t0 = time.perf_counter()
        e = spec.epoch_offset + epoch
        torch.manual_seed(spec.seed * 1_000_003 + e)  # dropout draws: resume replays them exactly
        aug = augment_params(spec.seed, e, n, view)
        model.train()
        loss_sum, correct, seen, teacher_images = 0.0, 0, 0, 0
        for i, idx in enumerate(train_batches(n, spec.batch_size, spec.seed, e)):
            for g in opt.param_groups:
                g["lr"] = _lr_at(spec, epoch * steps_per_epoch + i, total)
            idx_d = idx.to(device)
            v = train_views(x_all, idx, view, aug, device)
            x = v.x.contiguous(memory_format=torch.channels_last)
            y = y_all[idx_d]
            y_mix = None if v.partner is None else y_all[v.partner.to(device)]
            t_logits = None
            if kd:
                if teacher_logits is not None:
                    t_logits = teacher_logits[e, idx].to(device)
                else:
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        t_logits = teacher(x)
                    teacher_images += len(idx)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = kd_loss(logits, t_logits, y, spec.temperature, spec.alpha, spec.label_smoothing,
                           lam=v.lam, partner_targets=y_mix)
            value = loss.item()
            first_loss = value if first_loss is None else first_loss
            if not math.isfinite(value) or value > DIVERGENCE_FACTOR * max(first_loss, 1.0):
                kind = "non-finite" if not math.isfinite(value) else f"exploding (first batch {first_loss:.3g})"
                raise DivergedError(f"{kind} loss {value:.3g} at epoch {epoch + 1}, step {i + 1}; "
                                    f"lr {spec.lr:g} is likely too high")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += value * len(idx)
            hit_y = y if v.lam is None else torch.where(v.lam >= 0.5, y, y_mix)
            correct += int((logits.argmax(1) == hit_y).sum())
            seen += len(idx)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "teacher_forward_images": teacher_images, "epoch_seconds": time.perf_counter() - t0, **(tag or {})}
        if evaluate:
            row["test_acc"] = accuracy(model, data.test_x, data.test_y, view, device)
        history.append(row)
        if ckpt:
            save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                             "history": history}, ckpt)
        if on_epoch:
            on_epoch(row)
    return history


@torch.no_grad()
def teacher_logits(teacher: nn.Module, data: Dataset, view: ViewSpec, seed: int, epochs: int, device: torch.device,
                   batch_size: int = 256) -> torch.Tensor:
    """Eval-mode teacher logits (fp16) for every training view of epochs 0..epochs-1: shape (epochs, N, classes).

    The views are `train`'s (same `train_views`, same draws), mixed images included, so the cache is exact."""
    _prepare(teacher, device).eval()
    n = len(data.train_y)
    out = torch.empty(epochs, n, data.num_classes, dtype=torch.float16)
    amp = device.type == "cuda"
    x_all = data.train_x.to(device) if amp else data.train_x  # as in train: mixing gathers partners from all of it
    for e in range(epochs):
        aug = augment_params(seed, e, n, view)
        for idx in torch.arange(n).split(batch_size):
            x = train_views(x_all, idx, view, aug, device).x
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out[e, idx] = teacher(x).float().cpu().half()
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, view: ViewSpec, device: torch.device, batches: int = 20,
                   batch_size: int = 128, seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics on training images (cumulative average over `batches`)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    _prepare(model, device)
    for idx in train_batches(len(data.train_y), batch_size, seed, 0)[:batches]:
        model(make_views(data.train_x[idx].to(device), view))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
