"""What determines each variant: the settings behind every stage's content hash (a variant's identity).

A hash covers exactly what a stage's output depends on, its parent's hash included, so a changed setting invalidates
exactly the variants that depend on it, and two sweep combinations that would train the same thing share one variant.
Every dict here is written as earlier versions wrote it (keys that did not exist then enter only where they change
the work), so older experiments keep their hashes and nothing is retrained; tests pin them.
"""
from __future__ import annotations

import hashlib
import json

from .config import Config, TrainConfig, stage_augment
from .names import STRUCTURED, UNSTRUCTURED


def config_hash(settings: dict) -> str:
    """Stable short hash of settings (canonical JSON, key order independent)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# DataConfig keys that enter a hash only where they change the work: older experiments keep their hashes
_DATA_WHERE = {"root", "download", "verify", "stored_size", "randaugment", "mixup_alpha", "cutmix_alpha"}


def _data_settings(cfg: Config, augment: list[str] | None = None) -> dict:
    """What the data and (with `augment`) a stage's views are; `root`, `download` and `verify` say where data lives,
    not what it is, so they are left out, and so is every key that does not apply (written as before it existed)."""
    d = cfg.data.model_dump(exclude=_DATA_WHERE)
    aug = d["augment"] = list(cfg.data.augment if augment is None else augment)
    if cfg.data.dataset == "imagefolder":
        d["stored_size"] = cfg.data.stored_size
    if "randaugment" in aug:
        d["randaugment"] = cfg.data.randaugment.model_dump()
    if "mixup" in aug:
        d["mixup_alpha"] = cfg.data.mixup_alpha
    if "cutmix" in aug:
        d["cutmix_alpha"] = cfg.data.cutmix_alpha
    return d


def _train_settings(c: TrainConfig) -> dict:
    return c.model_dump(exclude={"augment"})  # the stage's augmentation is part of its data settings


def teacher_settings(cfg: Config, seed: int) -> dict:
    """Everything that determines the teacher checkpoint of one seed."""
    return {"stage": "teacher", "seed": seed, "data": _data_settings(cfg, stage_augment(cfg, "teacher")),
            "teacher": _train_settings(cfg.teacher)}


def student_settings(cfg: Config, seed: int, temperature: float | None, alpha: float) -> dict:
    """Everything that determines one student checkpoint (alpha 0: the no-KD baseline, teacher-independent)."""
    s = {"stage": "student", "seed": seed, "data": _data_settings(cfg, stage_augment(cfg, "student")),
         "student": _train_settings(cfg.student), "alpha": alpha, "label_smoothing": cfg.kd.label_smoothing}
    if alpha > 0:
        s |= {"temperature": temperature, "teacher": config_hash(teacher_settings(cfg, seed))}
    return s


def logits_settings(cfg: Config, seed: int) -> dict:
    """What the cached teacher logits of one seed are: the teacher's outputs on every student view of every epoch."""
    s = {"teacher": config_hash(teacher_settings(cfg, seed)), "epochs": cfg.student.epochs + cfg.prune.recovery_epochs}
    views = _data_settings(cfg, stage_augment(cfg, "student"))
    if views != _data_settings(cfg, stage_augment(cfg, "teacher")):  # else the teacher's hash already says it
        s["views"] = views
    return s


def pruned_settings(cfg: Config, seed: int, temperature: float | None, alpha: float, amount: float,
                    method: str = UNSTRUCTURED) -> dict:
    """Everything that determines one pruned-and-recovered student."""
    # written exactly as before `method` became an axis, so unstructured variants of older experiments keep their
    # hashes (and are not retrained); round_to only matters to structured pruning
    prune = cfg.prune.model_dump(exclude={"amount", "method", "round_to"}) | {"method": method}
    if method == STRUCTURED:
        prune["round_to"] = cfg.prune.round_to
    return {"stage": "pruned", "amount": amount, "prune": prune,
            "student": config_hash(student_settings(cfg, seed, temperature, alpha))}


def quantized_settings(cfg: Config, parent_hash: str, method: str) -> dict:
    """Everything that determines one quantized model: its fp32 parent, the method and the calibration."""
    # calibration views are un-augmented; data.augment is in the dict only because it always was (hash stability)
    return {"stage": "quantized", "parent": parent_hash, "method": method, "calib_batches": cfg.quantize.calib_batches,
            "data": _data_settings(cfg)}
