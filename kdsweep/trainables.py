"""Thin Ray Tune trainables: fetch the shared dataset, train one variant through `stages`, report per epoch."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import ray
import torch
from ray import tune

from . import storage
from .config import Config
from .data import Dataset
from .plan import Variant
from .results import hostname, now
from .stages import Paths, measure_latency, train_variant


def dataset_to_arrays(ds: Dataset) -> dict:
    """Plain numpy arrays: Ray's object store shares them zero-copy with every trial on a node."""
    return {"name": ds.name, "classes": list(ds.classes), **{k: getattr(ds, k).numpy()
            for k in ("train_x", "train_y", "test_x", "test_y")}}


def dataset_from_arrays(d: dict) -> Dataset:
    """Inverse of dataset_to_arrays, without copying (the arrays are read-only; kdsweep never writes to them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array" - intended, see above
        t = {k: torch.from_numpy(np.asarray(d[k])) for k in ("train_x", "train_y", "test_x", "test_y")}
    return Dataset(d["name"], t["train_x"], t["train_y"], t["test_x"], t["test_y"], tuple(d["classes"]))


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial, else CPU (logical GPUs without CUDA train on CPU)."""
    if torch.cuda.is_available() and ray.get_gpu_ids():
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU
    return torch.device("cpu")


def _context(shared: list) -> tuple[Config, Paths, dict[str, Variant], Dataset]:
    ctx = shared[0]
    cfg = Config.model_validate(ctx["config"])
    plan = {d["key"]: Variant.from_dict(d["variant"]) for d in ctx["plan"]}
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    return cfg, Paths(ctx["root"]), plan, dataset_from_arrays(ray.get(ctx["data"]))


def train_trial(config: dict, shared: list) -> None:
    """Ray Tune function trainable: one variant of the plan."""
    cfg, paths, plan, data = _context(shared)
    v = Variant.from_dict(config["variant"])
    start = now()
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    # who is training this variant right now: for operators (and the crash tests) to find the process
    storage.write_bytes(storage.join(paths.artifact_dir(v), "trial.json"),
                       json.dumps({"pid": os.getpid(), "node": hostname(), "gpu_ids": gpu_ids, "start": start}).encode())
    record = train_variant(cfg, v, paths, data, trial_device(), plan,
                           on_epoch=lambda row: tune.report({**row, "key": v.key}),
                           extra=lambda: {"node": hostname(), "node_ip": ray.util.get_node_ip_address(),
                                          "node_id": ray.get_runtime_context().get_node_id(),
                                          "gpu_ids": gpu_ids, "trial_start": start, "trial_end": now()})
    tune.report({"key": v.key, "final": True, "status": record["status"], "test_acc": record.get("test_acc")})


@ray.remote
def measure_task(shared: list, keys: list[str], num_classes: int) -> dict[str, dict]:
    """Latency of several variants, one after another, on the device this task holds alone."""
    cfg, paths, plan, _ = _context(shared)
    device = torch.device("cpu") if cfg.measure.latency_device == "cpu" else trial_device()
    return {k: measure_latency(cfg, plan[k], paths, num_classes, device) for k in keys}


@ray.remote
def logits_task(shared: list, seed: int) -> str:
    """Compute one seed's cached teacher logits."""
    from .stages import ensure_teacher_logits

    cfg, paths, plan, data = _context(shared)
    return str(ensure_teacher_logits(cfg, seed, paths, data, trial_device(), plan[f"teacher-s{seed}"]))
