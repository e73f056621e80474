"""Thin Ray Tune trainables: fetch the shared dataset, train one variant through `stages`, report per epoch.

What a trial process imports starts here: the training stack and Ray, never the analysis or matplotlib.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys

import ray
import torch
from ray import tune

from .config import Config
from .dataset import Dataset, from_arrays
from .fused_stage import train_fused
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
    # a dependency failed while this trial waited for it (latency times what trained; a fused task skips members)
    if blocked and config["task"] not in ("latency", "fused"):
        tune.report({"status": "skipped", "error": blocked[0], "final": True})
        return
    cfg, paths, plan, data = _context(shared)
    if config["task"] == "train":
        _train(cfg, paths, plan, data, Variant.from_dict(config["variant"]))
    elif config["task"] == "fused":
        _fused(cfg, paths, plan, data, config, statuses)
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
                               extra=lambda: _placement(start, gpu_ids))
    tune.report({"key": v.key, "final": True, "status": record["status"], "error": record.get("error"),
                 "test_acc": record.get("test_acc"), "trial_start": start, "trial_end": record.get("trial_end")})


def _placement(start: float, gpu_ids: str) -> dict:
    return {"node": hostname(), "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": gpu_ids, "trial_start": start,
            "trial_end": now()}


def _fused(cfg: Config, paths: Paths, plan: dict[str, Variant], data: Dataset, config: dict,
           statuses: dict[str, str]) -> None:
    """Train a fused task's members as one model; members behind a failed dependency are skipped, alone."""
    start = now()
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    members: dict[str, str] = {}
    run = []
    for d in config["variants"]:
        v = Variant.from_dict(d)
        bad = next((f"{dep} {statuses[dep].split(':')[0]}" for dep in config["member_deps"][v.key]
                    if statuses.get(dep, "ok") != "ok"), None)
        if bad:
            members[v.key] = f"skipped: {bad}"
        else:
            run.append(v)
    beats = {v.key: Heartbeat(paths.trial(v), {"pid": os.getpid(), "node": hostname(), "gpu_ids": gpu_ids,
                                               "start": start, "epochs": planned_epochs(cfg, v)}) for v in run}

    def on_epoch(v: Variant, row: dict) -> None:
        beats[v.key].epoch(row["epoch"])
        tune.report({**row, "key": v.key})

    records = {}
    if run:
        with contextlib.ExitStack() as stack:
            for beat in beats.values():
                stack.enter_context(beat)
            records = train_fused(cfg, run, paths, data, trial_device(), plan, config["group"], on_epoch,
                                  extra=lambda v: _placement(start, gpu_ids))
    for key, rec in records.items():
        members[key] = "ok" if rec["status"] == "ok" else f"{rec['status']}: {rec.get('error')}"
    accs = [r["test_acc"] for r in records.values() if r.get("status") == "ok"]
    errors = [s for s in members.values() if s != "ok"]
    tune.report({"final": True, "status": "failed" if errors else "ok", "error": errors[0] if errors else None,
                 "members": json.dumps(members), "test_acc": max(accs) if accs else None,
                 "trial_start": start, "trial_end": now()})


def _latency(cfg: Config, paths: Paths, plan: dict[str, Variant], data: Dataset, keys: list[str],
             devices: list[str] | None) -> None:
    """Batch-1 latency of every variant in `keys` that trained ok, under every runtime, interleaved on each device.

    The searcher starts this task only once every training task has finished, so nothing else uses the device.
    `devices` None (`auto`): each runtime on the best device of this trial (`stages.runtime_rows`).
    """
    ok = []
    for k in keys:
        rec = read_record(paths.record(plan[k]))
        if rec and rec.get("status") == "ok" and rec.get("config_hash") == plan[k].config_hash:
            ok.append(plan[k])
    measure_latencies(cfg, ok, paths, data, devices, torch.get_num_threads(), trial_device().type)
    tune.report({"status": "ok", "final": True, "measured": len(ok)})
