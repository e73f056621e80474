"""What each variant does, Ray-free: train teacher / student / pruned, compute teacher logits, measure latency.

Every function works on an experiment folder through `Paths`, so a retried or resumed trial finds its own
checkpoint, and the Ray trainables stay thin wrappers.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import storage
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, config_hash, teacher_settings
from .data import Dataset, ViewSpec
from .engine import DivergedError, TrainSpec, recalibrate_bn, teacher_logits, train
from .measure import accuracy, latency, model_size
from .models import build_model
from .plan import Variant
from .pruning import apply_pruning, make_permanent, sparsity_report


@dataclass(frozen=True)
class Paths:
    """Where an experiment keeps its files: locations (strings) under `root`, a local path or a URI (s3://...)."""

    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", os.fspath(self.root))

    def artifact_dir(self, v: Variant) -> str:
        # the hash in the name: a changed upstream setting gets a fresh folder instead of a stale checkpoint
        return storage.join(self.root, "artifacts", f"{v.key}-{v.config_hash[:10]}")

    def checkpoint(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "checkpoint.pt")

    def model(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "model.pt")

    def record(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "trained.json")

    def latency(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "latency.json")

    def signals(self, run: str) -> str:
        return storage.join(self.root, "signals", f"{run}.json")

    def result(self, v: Variant) -> str:
        return storage.join(self.root, "results", f"{v.key}.parquet")

    def teacher_logits(self, cfg: Config, seed: int) -> str:
        epochs = cfg.student.epochs + cfg.prune.recovery_epochs
        h = config_hash({"teacher": config_hash(teacher_settings(cfg, seed)), "epochs": epochs})
        return storage.join(self.root, "artifacts", f"teacher_logits-s{seed}-{h[:10]}.pt")


def arch_of(cfg: Config, v: Variant) -> str:
    return cfg.teacher.arch if v.stage == "teacher" else cfg.student.arch


def read_record(path: str | Path) -> dict | None:
    """The trained record of a variant, or None if absent or unreadable (then the variant is retrained)."""
    try:
        return json.loads(storage.read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _write_record(path: str, record: dict) -> None:
    storage.write_bytes(path, json.dumps(record, indent=1).encode())


def _bump_runs(paths: Paths, v: Variant) -> int:
    """Count training starts of a variant (evidence that shared work ran once)."""
    f = storage.join(paths.artifact_dir(v), "train_runs")
    n = int(storage.read_text(f)) + 1 if storage.exists(f) else 1
    storage.write_bytes(f, str(n).encode())
    return n


def train_variant(cfg: Config, v: Variant, paths: Paths, data: Dataset, device: torch.device,
                  plan_by_key: dict[str, Variant], on_epoch: Callable[[dict], None] | None = None,
                  extra: Callable[[], dict] | None = None) -> dict:
    """Train one variant (resuming from its checkpoint), save its final weights, and write/return its trained record.

    A diverging run (non-finite loss) is recorded as `status: failed` with the reason instead of raising.
    `extra()` adds fields known only to the caller (node, GPU ids, timestamps) to the record. Warnings raised
    while training (a corrupt checkpoint set aside, a layer pruned past 90 %) go into the record's `warnings`, so
    the driver can show them: a trial's own stderr is not where users look.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = _train(cfg, v, paths, data, device, plan_by_key, on_epoch)
        except DivergedError as exc:
            record = {"status": "failed", "error": f"diverged: {exc}", "arch": arch_of(cfg, v)}
    record |= {"config_hash": v.config_hash, "warnings": list(dict.fromkeys(
        str(w.message) for w in caught if "kdsweep" in w.filename))} | (extra() if extra else {})
    _write_record(paths.record(v), record)
    return record


def _train(cfg: Config, v: Variant, paths: Paths, data: Dataset, device: torch.device,
           plan_by_key: dict[str, Variant], on_epoch: Callable[[dict], None] | None) -> dict:
    t0 = time.perf_counter()
    view = ViewSpec.from_config(cfg.data)
    runs = _bump_runs(paths, v)
    teacher_model, logits, logits_name = None, None, None
    if v.stage == "teacher":
        c = cfg.teacher
        model = build_model(c.arch, data.num_classes, c.weights, c.bn_momentum, key="teacher")
        spec = TrainSpec(c.epochs, c.lr, c.weight_decay, c.batch_size, c.schedule, v.seed)
    else:
        c = cfg.student
        kd = dict(temperature=v.temperature or 1.0, alpha=v.alpha, label_smoothing=cfg.kd.label_smoothing)
        if v.alpha > 0:
            if cfg.kd.teacher_logits == "cached":
                lp = paths.teacher_logits(cfg, v.seed)
                logits, logits_name = load_checkpoint(lp), storage.basename(lp)
            else:
                tv = plan_by_key[f"teacher-s{v.seed}"]
                teacher_model = build_model(cfg.teacher.arch, data.num_classes, str(paths.model(tv)),
                                            cfg.teacher.bn_momentum, key="teacher")
                logits_name = "online"
        if v.stage == "pruned":
            parent = plan_by_key[v.parent]
            model = build_model(c.arch, data.num_classes, str(paths.model(parent)), c.bn_momentum, key="student")
            model.to(device)
            apply_pruning(model, v.prune_amount, cfg.prune.scope)
            if cfg.prune.recalibrate_bn:
                # pruning shifts every activation; stale BN statistics alone can drop accuracy to chance
                recalibrate_bn(model, data, view, device, batch_size=c.batch_size, seed=v.seed)
            spec = TrainSpec(cfg.prune.recovery_epochs, cfg.prune.recovery_lr or c.lr, c.weight_decay, c.batch_size,
                             "constant", v.seed, epoch_offset=c.epochs, **kd)
        else:
            model = build_model(c.arch, data.num_classes, c.weights, c.bn_momentum, key="student")
            spec = TrainSpec(c.epochs, c.lr, c.weight_decay, c.batch_size, c.schedule, v.seed, **kd)
    history = train(model, data, view, spec, device, teacher=teacher_model, teacher_logits=logits,
                    checkpoint=paths.checkpoint(v), on_epoch=on_epoch, tag={"run": runs})
    make_permanent(model)
    model.cpu()
    save_checkpoint(model.state_dict(), paths.model(v))
    size = model_size(model)
    return {
        "status": "ok", "error": None,
        "test_acc": accuracy(model, data.test_x, data.test_y, view, torch.device("cpu") if device.type == "cpu" else device),
        "params": size.params, "nonzero_params": size.nonzero_params, "sparsity": size.sparsity,
        "size_mb": size.size_mb, "size_nonzero_mb": size.size_nonzero_mb, "size_compressed_mb": size.size_compressed_mb,
        "train_seconds": time.perf_counter() - t0, "epochs_run": len(history), "train_runs": runs,
        "teacher_forward_images": sum(r["teacher_forward_images"] for r in history),
        "teacher_logits": logits_name, "arch": arch_of(cfg, v),
        "conv_sparsity": sparsity_report(model).sparsity,
        "history": history,
    }


def ensure_teacher_logits(cfg: Config, seed: int, paths: Paths, data: Dataset, device: torch.device,
                          teacher: Variant) -> str:
    """Compute (once) the teacher's logits for every view the students and their recovery epochs will see."""
    out = paths.teacher_logits(cfg, seed)
    if storage.exists(out):
        return out
    model = build_model(cfg.teacher.arch, data.num_classes, str(paths.model(teacher)), cfg.teacher.bn_momentum,
                        key="teacher")
    epochs = cfg.student.epochs + cfg.prune.recovery_epochs
    save_checkpoint(teacher_logits(model, data, ViewSpec.from_config(cfg.data), seed, epochs, device), out)
    return out


def measure_latency(cfg: Config, v: Variant, paths: Paths, num_classes: int, device: torch.device) -> dict:
    """Batch-1 latency of a trained variant's saved weights on `device`."""
    model: nn.Module = build_model(arch_of(cfg, v), num_classes, str(paths.model(v)), None).to(device)
    m = cfg.measure
    lat = latency(model, cfg.data.image_size, device, m.warmup, m.iters)
    return {"latency_ms": lat.median_ms, "latency_p90_ms": lat.p90_ms, "latency_device": lat.device}
