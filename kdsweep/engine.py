"""The one training loop every stage uses: AdamW, cosine/constant lr, KD from cached or online teacher logits,
channels_last everywhere, bf16 autocast on CUDA, per-epoch metrics, atomic per-epoch checkpoints and exact resume;
one model alone or several fused into one (`fused`), with one host sync per epoch."""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from . import storage
from .checkpoint import load_checkpoint, save_checkpoint
from .data import ViewSpec, augment_params, make_views, train_batches, train_views
from .dataset import Dataset
from .errors import CheckpointError, DivergedError
from .fused import Fused, Solo, fused_accuracy
from .losses import kd_losses
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


@dataclass
class Member:
    """One model of a training group: its own spec (temperature and alpha may differ), checkpoint and callbacks."""

    model: nn.Module
    spec: TrainSpec
    checkpoint: str | Path | None = None
    on_epoch: Callable[[dict], None] | None = None
    tag: dict | None = None  # merged into every epoch row (e.g. which run of a retried trial trained that epoch)


@dataclass
class _Resumed:
    history: list[dict]
    epoch: int
    optimizer: dict | None


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
    labels are mixed per sample (`kd_losses`), and `train_acc` counts a hit against the label of the image that
    dominates the mix: the sample's own where lam >= 0.5, else its partner's. Raises DivergedError at the end of
    the epoch in which the loss went non-finite or exploded.
    """
    out = train_group([Member(model, spec, checkpoint, on_epoch, tag)], data, view, device, teacher=teacher,
                      teacher_logits=teacher_logits, evaluate=evaluate)[0]
    if isinstance(out, DivergedError):
        raise out
    return out


def _check_group(members: list[Member]) -> None:
    shared = [replace(m.spec, temperature=0.0, alpha=0.0) for m in members]
    if any(s != shared[0] for s in shared) or len({m.spec.alpha > 0 for m in members}) > 1:
        raise ValueError("a training group's members may differ only in temperature and alpha (all KD or none)")


def _resume(m: Member, device: torch.device) -> _Resumed:
    """A member's saved history, next epoch and optimizer state; a corrupt checkpoint is set aside."""
    ckpt = os.fspath(m.checkpoint) if m.checkpoint else None
    if ckpt and storage.exists(ckpt):
        try:
            state = load_checkpoint(ckpt, map_location=device)
            history, epoch, opt = list(state["history"]), int(state["epoch"]), state["optimizer"]
            m.model.load_state_dict(state["model"])
            return _Resumed(history, epoch, opt)
        except (CheckpointError, KeyError, RuntimeError) as exc:
            warnings.warn(f"{exc}; ignoring it and training from scratch", stacklevel=3)
            storage.move(ckpt, ckpt + ".corrupt")
    return _Resumed([], 0, None)


def train_group(members: list[Member], data: Dataset, view: ViewSpec, device: torch.device, *,
                teacher: nn.Module | None = None, teacher_logits: torch.Tensor | None = None,
                evaluate: bool = True) -> list[list[dict] | DivergedError]:
    """Train several models that share data, views and schedule (`train`'s loop) as one fused model (`fused.Fused`).

    Each member resumes from its own checkpoint; members saved at different epochs (a kill between two saves) train
    as one group per epoch reached, the laggards first. A member whose loss diverges is taken out of the group at
    the end of that epoch (its result is the DivergedError, its checkpoint stays at the last good epoch); the others
    go on. Returns each member's history, or its error. A group of one is the model itself, unfused.
    """
    _check_group(members)
    if members[0].spec.alpha > 0 and teacher is None and teacher_logits is None:
        raise ValueError("alpha > 0 needs teacher_logits or a teacher")
    resumed = [_resume(m, device) for m in members]
    out: list[list[dict] | DivergedError] = [r.history for r in resumed]
    for start in sorted({r.epoch for r in resumed}):
        idx = [i for i, r in enumerate(resumed) if r.epoch == start]
        done = _run([members[i] for i in idx], [resumed[i] for i in idx], data, view, device, teacher,
                    teacher_logits, evaluate)
        for i, r in zip(idx, done):
            out[i] = r
    return out


def _run(members: list[Member], resumed: list[_Resumed], data: Dataset, view: ViewSpec, device: torch.device,
         teacher: nn.Module | None, teacher_logits: torch.Tensor | None,
         evaluate: bool) -> list[list[dict] | DivergedError]:
    """Members that resume from the same epoch, stepped together; the host syncs once per epoch."""
    spec, start = members[0].spec, resumed[0].epoch
    kd = spec.alpha > 0
    models = [_prepare(m.model, device) for m in members]
    if kd and teacher_logits is None:
        _prepare(teacher, device).eval()
    group = Solo(models[0], spec.lr, spec.weight_decay) if len(models) == 1 else \
        Fused(models, spec.lr, spec.weight_decay)
    if resumed[0].optimizer is not None:
        group.load_optimizer([r.optimizer for r in resumed])
    histories = [r.history for r in resumed]
    out: list[list[dict] | DivergedError] = list(histories)
    alive = list(range(len(members)))  # members[alive[j]] is the group's member j
    temps = torch.tensor([m.spec.temperature for m in members], device=device)
    alphas = torch.tensor([m.spec.alpha for m in members], device=device)
    n = len(data.train_y)
    steps_per_epoch = len(train_batches(n, spec.batch_size, spec.seed, 0))
    total = spec.epochs * steps_per_epoch
    amp = device.type == "cuda"
    x_all = data.train_x.to(device) if device.type == "cuda" else data.train_x  # uint8 images fit on a GPU
    y_all = data.train_y.to(device)
    first: torch.Tensor | None = None  # each member's first batch loss of this run (the divergence yardstick)
    for epoch in range(start, spec.epochs):
        if not alive:
            break
        t0 = time.perf_counter()
        e = spec.epoch_offset + epoch
        torch.manual_seed(spec.seed * 1_000_003 + e)  # dropout draws: resume replays them exactly
        aug = augment_params(spec.seed, e, n, view)
        # the epoch's cached soft targets move to the device once, not per step
        epoch_logits = teacher_logits[e].to(device) if kd and teacher_logits is not None else None
        group.train()
        b = len(alive)
        # per-member sums stay on the device: the host reads them once, after the epoch
        loss_sum = torch.zeros(b, device=device, dtype=torch.float64)
        correct = torch.zeros(b, device=device, dtype=torch.int64)
        bad_step = torch.full((b,), -1, device=device, dtype=torch.int64)
        bad_loss = torch.zeros(b, device=device)
        seen, teacher_images = 0, 0
        for i, idx in enumerate(train_batches(n, spec.batch_size, spec.seed, e)):
            for g in group.opt.param_groups:
                g["lr"] = _lr_at(spec, epoch * steps_per_epoch + i, total)
            idx_d = idx.to(device, non_blocking=True)
            v = train_views(x_all, idx, view, aug, device)
            x = v.x.contiguous(memory_format=torch.channels_last)
            y = y_all[idx_d]
            y_mix = None if v.partner is None else y_all[v.partner.to(device, non_blocking=True)]
            t_logits = None
            if kd:
                if epoch_logits is not None:
                    t_logits = epoch_logits[idx_d]
                else:
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        t_logits = teacher(x)
                    teacher_images += len(idx)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = group.forward(x)
            losses = kd_losses(logits, t_logits, y, temps, alphas, spec.label_smoothing, lam=v.lam,
                               partner_targets=y_mix)
            value = losses.detach()
            first = value.clone() if first is None else first
            newly = (~torch.isfinite(value) | (value > DIVERGENCE_FACTOR * first.clamp(min=1.0))) & (bad_step < 0)
            bad_step = torch.where(newly, i, bad_step)
            bad_loss = torch.where(newly, value, bad_loss)
            group.opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # each member's parameters get only their own loss's gradient
            group.opt.step()
            loss_sum += value * len(idx)
            hit_y = y if v.lam is None else torch.where(v.lam >= 0.5, y, y_mix)
            correct += (logits.argmax(-1) == hit_y).sum(-1)
            seen += len(idx)
        sums, hits, bad, worst = (t.tolist() for t in (loss_sum, correct, bad_step, bad_loss.double()))  # the sync
        accs = _evaluate(group, models, alive, data, view, device) if evaluate else None
        keep = []
        for j, k in enumerate(alive):
            m = members[k]
            if bad[j] >= 0:
                kind = "non-finite" if not math.isfinite(worst[j]) else f"exploding (first batch {first[j]:.3g})"
                out[k] = DivergedError(f"{kind} loss {worst[j]:.3g} at epoch {epoch + 1}, step {bad[j] + 1}; "
                                       f"lr {spec.lr:g} is likely too high")
                continue
            keep.append(j)
            row = {"epoch": epoch + 1, "train_loss": sums[j] / seen, "train_acc": hits[j] / seen,
                   "teacher_forward_images": teacher_images, "epoch_seconds": time.perf_counter() - t0,
                   **(m.tag or {})}
            if accs is not None:
                row["test_acc"] = accs[j]
            histories[k].append(row)
            if m.checkpoint:
                save_checkpoint({"model": group.state(j), "optimizer": group.optimizer_state(j), "epoch": epoch + 1,
                                 "history": histories[k]}, m.checkpoint)
            if m.on_epoch:
                m.on_epoch(row)
        if len(keep) < len(alive):
            alive = [alive[j] for j in keep]
            if alive:
                group.keep(keep)
                first, temps, alphas = first[keep], temps[keep], alphas[keep]
    group.write_back([models[k] for k in alive])
    return out


def _evaluate(group: Solo | Fused, models: list[nn.Module], alive: list[int], data: Dataset, view: ViewSpec,
              device: torch.device) -> list[float]:
    """Test accuracy of every member: the module itself alone, one vmapped pass over the test split when fused."""
    if isinstance(group, Solo):
        return [accuracy(models[alive[0]], data.test_x, data.test_y, view, device)]
    return fused_accuracy(group, data.test_x, data.test_y, view, device)


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
