"""Thin Ray Tune trainables: fetch the shared dataset, train one variant through `stages`, report per epoch.

What a trial process imports starts here: the training stack and Ray, never the analysis or matplotlib.
"""
from __future__ import annotations

import ctypes
import os
import sys

import ray
import torch
from ray import tune

from .config import Config
from .dataset import Dataset, from_arrays
from .heartbeat import Heartbeat, hostname, now
from .paths import Paths, read_record
from .plan import Variant, planned_epochs
from .schedule import wait_for
from .stages import ensure_teacher_logits, measure_latencies, train_variant


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
    return cfg, Paths(ctx["root"]), plan, from_arrays(ray.get(ctx["data"]))


# glibc's malloc_trim, looked up once (the process's own symbols include libc's); None off glibc
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere).

    A reused Tune actor runs each trial's function in a new thread, and glibc gives each thread its own malloc
    arena: what one task freed stays resident in its arena while the next task grows another. Measured on the
    smoke sweep: ~200 MB more resident per trial process without this, with it the same peak as a fresh process.
    No gc.collect(): a task's tensors die by refcount when it returns, and a full collection of a process holding
    torch and Ray costs ~0.16 s (malloc_trim: < 1 ms).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def run_task(config: dict, shared: list) -> None:
    """Ray Tune function trainable for every task of the sweep: train a variant, teacher logits, or latency."""
    try:
        _run_task(config, shared)
    finally:
        release_memory()


def _run_task(config: dict, shared: list) -> None:
    statuses = wait_for(config["wait_for"], config["signals"])
    blocked = [f"{d} {s.split(':')[0]}" for d, s in statuses.items() if s != "ok"]
    if blocked and config["task"] != "latency":  # a dependency failed while this trial waited for it
        tune.report({"status": "skipped", "error": blocked[0], "final": True})
        return
    cfg, paths, plan, data = _context(shared)
    if config["task"] == "train":
        _train(cfg, paths, plan, data, Variant.from_dict(config["variant"]))
    elif config["task"] == "logits":
        ensure_teacher_logits(cfg, config["seed"], paths, data, trial_device(), plan[config["teacher"]],
                              plan[config["student"]])
        tune.report({"status": "ok", "final": True})
    else:
        _latency(cfg, paths, plan, data, config["keys"], config["devices"])


def _train(cfg: Config, paths: Paths, plan: dict[str, Variant], data: Dataset, v: Variant) -> None:
    start = now()
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    # who is training this variant right now and how far: for `kdsweep status`, operators and the crash tests
    beat = Heartbeat(paths.trial(v), {"pid": os.getpid(), "node": hostname(), "gpu_ids": gpu_ids, "start": start,
                                      "epochs": planned_epochs(cfg, v)})

    def on_epoch(row: dict) -> None:
        beat.epoch(row["epoch"])
        tune.report({**row, "key": v.key})

    with beat:
        record = train_variant(cfg, v, paths, data, trial_device(), plan, on_epoch=on_epoch,
                               extra=lambda: {"node": hostname(), "node_ip": ray.util.get_node_ip_address(),
                                              "node_id": ray.get_runtime_context().get_node_id(),
                                              "gpu_ids": gpu_ids, "trial_start": start, "trial_end": now()})
    tune.report({"key": v.key, "final": True, "status": record["status"], "error": record.get("error"),
                 "test_acc": record.get("test_acc"), "trial_start": start, "trial_end": record.get("trial_end")})


def _latency(cfg: Config, paths: Paths, plan: dict[str, Variant], data: Dataset, keys: list[str],
             devices: list[str] | None) -> None:
    """Batch-1 latency of every variant in `keys` that trained ok, under every runtime, interleaved on each device.

    The searcher starts this task only once every training task has finished, so nothing else uses the device.
    `devices` None (`auto`): this trial's own device.
    """
    devices = devices or [trial_device().type]
    ok = []
    for k in keys:
        rec = read_record(paths.record(plan[k]))
        if rec and rec.get("status") == "ok" and rec.get("config_hash") == plan[k].config_hash:
            ok.append(plan[k])
    measure_latencies(cfg, ok, paths, data, devices, torch.get_num_threads())
    tune.report({"status": "ok", "final": True, "measured": len(ok)})
